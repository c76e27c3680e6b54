"""Predictions as a table, from Python or from ``python cli.py predict``.

``predict_images("…/last.ckpt", "my_images/")`` loads the checkpoint alone (no config, no training data, no
pretrained-weights file), prepares the images as in training, and returns a :class:`PredictionTable`: one row per
image with its id, the predicted class name and probability, and the top-k classes. ``write`` saves the same
``predictions.csv`` and ``probabilities.npy`` that the CLI writes.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from lightning_cnn.data.files import UNKNOWN_LABEL, load_inputs
from lightning_cnn.paths import free_path, written_whole

__all__ = ["DEFAULT_TOP_K", "PredictionTable", "predict_images"]

#: Classes listed per image besides the prediction, unless chosen otherwise.
DEFAULT_TOP_K = 3
# Probabilities are written with this many decimals (float32 carries about 7 significant digits).
_DECIMALS = 6


class PredictionTable:
    """Class probabilities of N images, with their ids and (when known) true labels.

    Args:
        ids: One id per image: the file path, or the index in the split or array.
        probabilities: ``(N, num_classes)``, rows in input order.
        class_names: Name of each class.
        labels: True class ids (``-1`` where unknown), or ``None``.
    """

    def __init__(
        self,
        ids: Sequence[str],
        probabilities: np.ndarray,
        class_names: Sequence[str],
        labels: Optional[np.ndarray] = None,
    ) -> None:
        if probabilities.ndim != 2 or len(ids) != len(probabilities) or probabilities.shape[1] != len(class_names):
            raise ValueError(
                f"{len(ids)} ids, probabilities {probabilities.shape} and {len(class_names)} class names disagree."
            )
        self.ids = [str(i) for i in ids]
        self.probabilities = probabilities.astype(np.float32, copy=False)
        self.class_names = list(class_names)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class id of each image (the arg-max)."""
        return self.probabilities.argmax(axis=1)

    def rows(self, top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
        """One dict per image: ``id``, ``label`` (if known), ``prediction``, ``probability``, then ``top{i}`` and
        ``top{i}_probability`` for the ``top_k`` most probable classes (fewer if there are fewer classes)."""
        k = max(1, min(top_k, len(self.class_names)))
        # Stable sort on the negated probabilities: ties keep class order, so top1 is always the arg-max.
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        rows = []
        for i, image_id in enumerate(self.ids):
            row: dict[str, Any] = {"id": image_id}
            if self.labels is not None:
                label = int(self.labels[i])
                row["label"] = self.class_names[label] if label != UNKNOWN_LABEL else ""
            best = order[i, 0]
            row["prediction"] = self.class_names[best]
            row["probability"] = round(float(self.probabilities[i, best]), _DECIMALS)
            for rank, c in enumerate(order[i], start=1):
                row[f"top{rank}"] = self.class_names[c]
                row[f"top{rank}_probability"] = round(float(self.probabilities[i, c]), _DECIMALS)
            rows.append(row)
        return rows

    def write(self, folder: Union[str, Path], top_k: int = DEFAULT_TOP_K) -> tuple[Path, Path]:
        """Write ``predictions.csv`` and ``probabilities.npy`` into ``folder`` (an existing file is never replaced:
        the next free ``_N`` name is used). Returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = self.rows(top_k)
        table, array = free_path(folder / "predictions.csv"), free_path(folder / "probabilities.npy")
        # Whole files or none, each written under a temporary name and renamed when complete.
        with written_whole(table) as partial, open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id", "prediction", "probability"])
            writer.writeheader()
            writer.writerows(rows)
        with written_whole(array) as partial, open(partial, "wb") as f:
            np.save(f, self.probabilities)
        return table, array


def predict_images(
    checkpoint: Union[str, Path],
    inputs: Union[str, Path, Sequence[Union[str, Path]]],
    batch_size: int = 256,
    device: Union[str, torch.device] = "cpu",
) -> PredictionTable:
    """Class probabilities for new images from a checkpoint alone.

    Args:
        checkpoint: A ``.ckpt`` written by ``cli.py fit`` (or any :class:`~lightning_cnn.ImageClassifier`
            checkpoint that records its preprocessing).
        inputs: A folder of images (sub-folders included), an image file, a list of image files, or an ``.npy``
            uint8 array ``(N, H, W[, C])``. Unreadable files are skipped with a warning.
        batch_size: Images per forward pass.
        device: Where to run the network.

    Returns:
        A :class:`PredictionTable` in input order (``table.rows()``, ``table.write(folder)``).

    Raises:
        lightning_cnn.checkpoints.CheckpointError: If ``checkpoint`` is missing or not a checkpoint.
        lightning_cnn.data.DataNotFoundError: If an input path does not exist or a folder holds no images.
    """
    from lightning_cnn.checkpoints import checkpoint_preprocessing
    from lightning_cnn.module import ImageClassifier

    # One clear error for a missing or foreign file, or one without preprocessing, before Lightning's own loading.
    preprocessing = checkpoint_preprocessing(checkpoint)
    loaded = load_inputs(inputs, preprocessing)
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(loaded.images), batch_size):
            x = preprocessing.to_input(loaded.images[start : start + batch_size]).to(device)
            chunks.append(model.probabilities(model(x)).float().cpu())
    return PredictionTable(loaded.ids, torch.cat(chunks).numpy(), preprocessing.class_names)
