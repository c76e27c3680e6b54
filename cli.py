"""Train, evaluate and predict from YAML: ``python cli.py fit --config configs/lenet_fashion_mnist.yaml``."""

from lightning_cnn.cli import main

if __name__ == "__main__":
    main()
