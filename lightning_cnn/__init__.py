"""lightning_cnn: the classic Keras CNN course as PyTorch Lightning modules, datamodules and a CLI."""

from lightning_cnn.module import ImageClassifier

__all__ = ["ImageClassifier", "__version__"]

__version__ = "0.1.0"
