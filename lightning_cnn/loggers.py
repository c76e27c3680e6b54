"""Lightning's CSV logger, with its one destructive write made safe.

Lightning appends each batch of rows to ``metrics.csv``, but when a new metric name appears (``test/acc`` after
fit, for instance) it rewrites the whole file with a wider header. On a full disk that rewrite would empty the
file and lose every earlier row. Here the rewrite goes to a temporary file that replaces ``metrics.csv`` only once
complete; appending is unchanged (a full disk can lose only the rows being appended).
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from lightning_cnn.paths import written_whole

__all__ = ["CSVLogger"]


class _WholeRewriteWriter(ExperimentWriter):
    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        if self._fs.protocol not in ("file", ("file", "local")):  # remote storage: keep Lightning's own write
            return super()._rewrite_with_new_header(fieldnames)
        path = Path(self.metrics_file_path)
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        with written_whole(path) as partial, open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class CSVLogger(_LightningCSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` (same arguments and files) whose ``metrics.csv`` is never emptied
    by a failed header rewrite."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _WholeRewriteWriter(log_dir=self.log_dir)
        return self._experiment
