"""LightningDataModules for the course's datasets; all share :class:`ImageDataModule`."""

from lightning_cnn.data.base import ImageDataModule
from lightning_cnn.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_cnn.data.dataset import ImageFileDataset, InMemoryImageDataset
from lightning_cnn.data.errors import CorruptDataError, DataNotFoundError
from lightning_cnn.data.files import ImageFilesDataModule
from lightning_cnn.data.folder import ImageFolderDataModule
from lightning_cnn.data.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_cnn.data.shards import ShardedDataModule, write_shards
from lightning_cnn.registry import DATAMODULES

__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CorruptDataError",
    "DataNotFoundError",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFilesDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "InMemoryImageDataset",
    "MNISTDataModule",
    "ShardedDataModule",
    "write_shards",
]
