"""A new dataset in one file: Kuzushiji-MNIST, MNIST's format and sizes, ten cursive Japanese characters.

Trained by examples/extending/kmnist.yaml; downloads into data_dir on first use.
"""

from lightning_cnn.data import MNISTDataModule
from lightning_cnn.registry import DATAMODULES


@DATAMODULES.register("kmnist", download=False)  # puts it under the package's datamodule sweeps
class KMNISTDataModule(MNISTDataModule):
    """KMNIST: 60,000 train + 10,000 test 28×28 grayscale images, read and downloaded as MNIST's IDX files."""

    name = "KMNIST"
    mean = (0.1918,)  # train split, as published with the dataset
    std = (0.3483,)
    class_names = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    _torchvision_name = "KMNIST"  # torchvision.datasets.KMNIST: its download mirror and KMNIST/raw/ layout
