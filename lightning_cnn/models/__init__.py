"""Architectures: plain ``nn.Module``s, no Lightning inside.

Every architecture here follows one contract, which the CLI and the classifier rely on:

- constructor arguments ``in_channels``, ``num_classes`` and ``input_size`` (linked from the datamodule), stored
  under the same names (the classifier reads its number of classes and input shape from them);
- an attribute ``num_outputs`` (1 for a single-logit binary classifier, else ``num_classes``);
- registration in :data:`~lightning_cnn.registry.ARCHITECTURES`, which puts it under the test sweeps;
- submodules ``backbone`` (the feature extractor that fine-tuning freezes) and ``head`` (the classifier on
  top), with ``forward(x) == head(backbone(x))``.
"""

from lightning_cnn.models.backbones import TorchvisionNet
from lightning_cnn.models.convnet import BatchNormCNN, ConvNet, FunctionalCNN, LeNet
from lightning_cnn.registry import ARCHITECTURES

__all__ = ["ARCHITECTURES", "BatchNormCNN", "ConvNet", "FunctionalCNN", "LeNet", "TorchvisionNet"]
