"""Write what ``predict`` computes: ``predictions.csv`` and ``probabilities.npy`` in the run's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import BasePredictionWriter

from lightning_cnn.callbacks.plots import _class_names, _log_folder, _report
from lightning_cnn.predict import DEFAULT_TOP_K, PredictionTable

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Collects the class probabilities of every predicted image and writes, once and in input order (under DDP
    too), ``predictions.csv`` (id, true label when known, predicted class name and probability, top-k classes)
    and ``probabilities.npy`` ``(N, num_classes)``, then prints both paths.

    Ids are the datamodule's ``sample_ids`` (file paths for new images) where it has them, else the index in the
    split. Files go into the run's log folder (a new ``version_N`` per run), or ``output_dir``; an existing file
    is never replaced.

    Args:
        top_k: Most probable classes listed per image.
        output_dir: Folder for the files instead of the run's log folder.
    """

    def __init__(self, top_k: int = DEFAULT_TOP_K, output_dir: Optional[str] = None) -> None:
        super().__init__(write_interval="batch_and_epoch")
        if top_k < 1:
            raise ValueError(f"predictions.top_k={top_k}; list at least 1 class per image.")
        self.top_k = top_k
        self.output_dir = output_dir
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        #: Paths of the last files written (rank 0).
        self.written: tuple[Path, ...] = ()

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._chunks = []

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        probabilities = prediction.float().cpu().numpy()
        labels = _labels_of(batch, len(probabilities))
        if batch_indices is None:  # Lightning records them for predict loaders; count on if it did not
            start = sum(len(c[0]) for c in self._chunks)
            batch_indices = range(start, start + len(probabilities))
        self._chunks.append((np.asarray(list(batch_indices), dtype=np.int64), probabilities, labels))

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        chunks = _gather(self._chunks, trainer.world_size)
        self._chunks = []
        folder = Path(self.output_dir) if self.output_dir else _log_folder(trainer)  # collective under DDP
        if not trainer.is_global_zero or folder is None:  # folder None: a fast_dev_run writes nothing
            return
        self.written = self._write(trainer, pl_module, chunks, folder)

    def _write(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, chunks: list[tuple], folder: Path
    ) -> tuple[Path, ...]:
        index = np.concatenate([c[0] for c in chunks])
        probabilities = np.concatenate([c[1] for c in chunks])
        labels = np.concatenate([c[2] for c in chunks])
        # Input order; an index seen twice (a sampler that pads) is kept once.
        index, first = np.unique(index, return_index=True)
        probabilities, labels = probabilities[first], labels[first]
        ids = getattr(trainer.datamodule, "sample_ids", None) or []
        names = _class_names(trainer, pl_module, probabilities.shape[1])
        table = PredictionTable(
            [ids[i] if i < len(ids) else str(i) for i in index], probabilities, names,
            labels if (labels >= 0).any() else None,
        )  # fmt: skip
        paths = table.write(folder, self.top_k)
        _report(f"predictions of {len(table)} images", paths[0])
        _report("class probabilities", paths[1])
        return paths


def _labels_of(batch: Any, n: int) -> np.ndarray:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return batch[1].cpu().numpy().astype(np.int64)
    return np.full(n, -1, dtype=np.int64)


def _gather(chunks: list[tuple], world_size: int) -> list[tuple]:
    """Every rank's chunks on every rank (the distributed sampler gives each rank a part of the inputs)."""
    if world_size < 2 or not (dist.is_available() and dist.is_initialized()):
        return chunks
    everyone: list[Optional[list[tuple]]] = [None] * world_size
    dist.all_gather_object(everyone, chunks)
    return [chunk for rank_chunks in everyone for chunk in (rank_chunks or [])]
