"""Look at a config's training augmentation before a long run: a PNG grid of original vs augmented samples.

``python cli.py preview --config configs/augment_lenet_fashion_mnist.yaml [--out path.png]``

The datamodule is built exactly as ``cli.py fit`` builds it (same config files and ``--data.…`` overrides), so the
picture shows what the network will be fed: each row is one training image — first as validation/test see it,
then several augmented draws. An existing file is never replaced without ``--overwrite``; a free name is chosen
instead. The path written is printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from lightning_cnn.paths import free_path
from lightning_cnn.preprocessing import resize_uint8

__all__ = ["preview_grid", "write_preview"]

DEFAULT_DIR = Path("runs") / "preview"


def _pick(labels: Tensor, count: int) -> list[int]:
    """The first image of each class, then the next ones, up to ``count`` — a varied, repeatable choice."""
    chosen: list[int] = []
    for label in labels.unique().tolist():
        if len(chosen) < count:
            chosen.append(int((labels == label).nonzero()[0]))
    rest = [i for i in range(len(labels)) if i not in set(chosen)]
    return sorted(chosen + rest[: count - len(chosen)])


def _to_display(x: Tensor, mean: Optional[Tensor], std: Optional[Tensor]) -> Tensor:
    """Normalized float ``(N, C, H, W)`` → ``(N, H, W, C)`` in [0, 1]."""
    if mean is not None:
        x = x * std + mean
    return x.clamp(0, 1).permute(0, 2, 3, 1).cpu()


def preview_grid(datamodule, samples: int = 8, variants: int = 5) -> tuple[Tensor, Tensor, list[str]]:  # noqa: ANN001
    """Originals ``(S, H, W, C)``, augmented ``(V, S, H, W, C)`` and row titles, from a set-up datamodule.

    Raises:
        ValueError: If the datamodule has no training augmentation.
    """
    dataset = datamodule.train_set
    batch_augment = getattr(datamodule, "batch_augment", None)
    if dataset.transform is None and batch_augment is None:
        raise ValueError(
            f"{type(datamodule).__name__} has no training augmentation; set data.init_args.augmentation in the config "
            "(see configs/augment_lenet_fashion_mnist.yaml)."
        )
    index = _pick(dataset.labels, min(samples, len(dataset)))
    original = dataset.to_float(resize_uint8(dataset.images[index], dataset.size))
    augmented = []
    for variant in range(variants):
        if batch_augment is not None:
            augmented.append(batch_augment(original))
        else:
            dataset.set_epoch(variant)  # per-sample draws are keyed by epoch and samples: one "epoch" per variant
            augmented.append(dataset.__getitems__(index)[0])
    if batch_augment is None:
        dataset.set_epoch(0)
    names = datamodule.label_names
    titles = [names[int(y)] if int(y) < len(names) else str(int(y)) for y in dataset.labels[index]]
    mean, std = dataset.mean, dataset.std
    return _to_display(original, mean, std), torch.stack([_to_display(a, mean, std) for a in augmented]), titles


def _draw(original: Tensor, augmented: Tensor, titles: list[str], heading: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = original.shape[0], augmented.shape[0] + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 1.2, 1.3 * rows + 0.6), squeeze=False)
    gray = original.shape[-1] == 1
    for r in range(rows):
        for c in range(cols):
            image = original[r] if c == 0 else augmented[c - 1, r]
            ax = axes[r][c]
            ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=8)
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_preview(
    datamodule,
    path: Path,
    samples: int = 8,
    variants: int = 5,
    overwrite: bool = False,  # noqa: ANN001
) -> Path:
    """Set up ``datamodule`` for fit, draw its grid and write it to ``path`` (or the first free name beside it unless
    ``overwrite``); return the path written."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    original, augmented, titles = preview_grid(datamodule, samples, variants)
    target = path if overwrite else free_path(path)
    if target != path:
        print(f"{path} exists; writing {target} instead (pass --overwrite true to replace it).", file=sys.stderr)
    augmentation = datamodule.augmentation
    heading = f"{type(datamodule).__name__}: {type(augmentation).__name__ if augmentation else 'train_transform'}"
    if augmentation is not None and hasattr(augmentation, "mode"):
        heading += f" ({augmentation.mode})"
    _draw(original, augmented, titles, heading, target)
    return target
