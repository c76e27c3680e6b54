"""The package's tools as subcommands of the CLI: ``summary``, ``preview``, ``export`` and ``optimize`` run with the same
(model, data, trainer) as ``fit``, plus each tool's own options (its method's signature, read as Lightning reads
``Trainer.fit``'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jsonargparse.typing import PositiveInt
from pytorch_lightning import LightningDataModule, LightningModule

from lightning_cnn.callbacks import (
    FreezeBackbone,
    KerasModelSummary,
)
from lightning_cnn.cli.arguments import _experiment_name
from lightning_cnn.cli.errors import _OUTPUT_ERRNOS, ConfigError
from lightning_cnn.data import ImageDataModule, ShardedDataModule, write_shards
from lightning_cnn.data.shard_format import read_meta
from lightning_cnn.export import export as export_checkpoint
from lightning_cnn.preview import DEFAULT_DIR as PREVIEW_DIR
from lightning_cnn.preview import write_preview

__all__ = ["ToolSubcommands"]

# The package's tools, run by the same CLI as Trainer's fit/validate/test/predict: methods of CNNCLI below, given
# the model and datamodule the config describes.
_TOOLS = ("summary", "preview", "export", "optimize")


class ToolSubcommands:
    """The tools, mixed into :class:`~lightning_cnn.cli.command.CNNCLI`: each method is one subcommand."""

    def summary(self, model: LightningModule, datamodule: Optional[LightningDataModule] = None) -> None:
        """Print the model's Keras-style summary (model.summary()) without training; options under summary:.

        A ``FreezeBackbone`` among the config's callbacks freezes the backbone first, as ``fit`` does before its
        table: the frozen parameters count as non-trainable, as in Keras after ``trainable = False``; a line per
        later unfreezing gives the trainable count from then on.
        """
        freezers = [c for c in self.trainer.callbacks if isinstance(c, FreezeBackbone)]
        for freezer in freezers:
            freezer.setup(self.trainer, model, "fit")
        self._summary_callback().print_summary(model)
        for freezer in freezers:
            for line in freezer.plan(model):
                print(line, flush=True)

    def preview(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        out: Optional[str] = None,
        samples: PositiveInt = 8,
        variants: PositiveInt = 5,
        overwrite: bool = False,
    ) -> None:
        """Write a PNG grid of training images before and after the config's augmentation, without training.

        Args:
            out: PNG path; default ``runs/preview/<first config's name>.png``. An existing file is kept and a free
                name beside it is used, unless ``overwrite``.
            samples: Training images, one per row.
            variants: Augmented draws of each image.
            overwrite: Replace ``out`` if it exists.
        """
        name = _experiment_name(self._argv, default="preview")  # as the run folder is named
        path = write_preview(
            datamodule, Path(out) if out else PREVIEW_DIR / f"{name}.png", samples, variants, overwrite
        )
        print(path)

    def export(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        format: str = "onnx",
        out: Optional[str] = None,
    ) -> None:
        """Export a trained checkpoint (--ckpt_path) as ONNX, pt2 (torch.export) or TorchScript, normalization included.

        Float pixels in [0, 1] ``(N, C, H, W)`` in, class probabilities out; class names and input size in the
        file's metadata.

        Args:
            ckpt_path: The checkpoint to export (written by ``cli.py fit``); no config is needed beside it.
            format: ``onnx``; ``pt2``, a ``torch.export`` program (load it with ``torch.export.load``); or
                ``torchscript``, the legacy format (``torch.jit`` is deprecated upstream).
            out: Output file; default beside the checkpoint, never replacing a file.
        """
        if not ckpt_path:
            raise ConfigError("export needs --ckpt_path: the checkpoint written by cli.py fit to export.")
        export_checkpoint(ckpt_path, format, out)

    def optimize(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        output_dir: Optional[str] = None,
        chunk_bytes: str = "64MB",
        num_workers: Optional[PositiveInt] = None,
        overwrite: bool = False,
    ) -> None:
        """Write the config's dataset (its train/val/test splits) as LitData shards for ShardedDataModule.

        Args:
            output_dir: An empty or new folder for the shards (one sub-folder per split, plus lightning_cnn.json).
            chunk_bytes: Size of each chunk file, e.g. ``64MB``.
            num_workers: Processes that write; default: the CPU count, at most 4.
            overwrite: Replace an ``output_dir`` that already holds files.
        """
        if not output_dir:
            raise ConfigError("optimize needs --output_dir: the folder to write the shards into.")
        if not isinstance(datamodule, ImageDataModule) or isinstance(datamodule, ShardedDataModule):
            raise ConfigError(
                f"optimize converts the package's datasets; data is {type(datamodule).__name__}. Give --data "
                "configs/data/<dataset>.yaml or an ImageFolderDataModule config."
            )
        try:
            path = write_shards(datamodule, output_dir, chunk_bytes, num_workers, overwrite)
        except (FileExistsError, ImportError) as err:
            raise ConfigError(str(err)) from None
        except OSError as err:
            if err.errno not in _OUTPUT_ERRNOS:
                raise
            raise ConfigError(
                f"cannot write the shards in {err.filename or Path(output_dir).parent}: {err.strerror}; free space or "
                "choose another --output_dir (nothing was left there)."
            ) from None
        counts = ", ".join(f"{split} {n}" for split, n in read_meta(str(path))["splits"].items())
        print(f"{path}: {counts} samples; train from it with data.class_path lightning_cnn.data.ShardedDataModule")

    def _summary_callback(self) -> KerasModelSummary:
        found = [cb for cb in self.trainer.callbacks if isinstance(cb, KerasModelSummary)]
        return found[0] if found else KerasModelSummary()
