"""A new architecture in one file: a small VGG-style network, trained by examples/extending/tiny_vgg.yaml."""

from torch import Tensor, nn

from lightning_cnn.registry import ARCHITECTURES


@ARCHITECTURES.register("tiny_vgg")  # puts it under the package's architecture sweeps
class TinyVGG(nn.Module):
    """Blocks of two 3×3 convolutions and a 2×2 max-pool, then global average pooling and a Dense layer.

    Args:
        in_channels: Image channels (linked from the datamodule by the CLI).
        num_classes: Number of classes (linked from the datamodule).
        input_size: Image height and width (linked from the datamodule); at least 2 ** len(widths).
        widths: Output channels of each block.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: tuple[int, int] = (28, 28),
        widths: tuple[int, ...] = (16, 32),
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.input_size = in_channels, num_classes, tuple(input_size)
        self.num_outputs = num_classes
        blocks, channels = [], in_channels
        for width in widths:
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
            blocks += [nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.backbone = nn.Sequential(*blocks)  # what FreezeBackbone freezes
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
