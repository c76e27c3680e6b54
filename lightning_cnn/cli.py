"""The command line: LightningCLI over :class:`ImageClassifier` and the datamodules.

``python cli.py {fit,validate,test,predict} --config configs/<name>.yaml`` (and ``--print_config``). The
datamodule's number of classes and image shape are linked into the model and its network, so they are never
typed twice; ``test_after_fit: true`` evaluates the best checkpoint on the test split when ``fit`` ends.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from lightning_cnn.callbacks import KerasModelSummary
from lightning_cnn.data.base import ImageDataModule
from lightning_cnn.module import ImageClassifier

__all__ = ["CNNCLI", "main"]

# A YAML `optimizer:` replaces ImageClassifier.configure_optimizers, which is only the Python-API default;
# Lightning warns about that replacement on every run although it is the intended behaviour here.
warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by.*")


class CNNCLI(LightningCLI):
    """LightningCLI with the datamodule → model links and a ``test_after_fit`` switch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # Never overwrite a run's saved config; every run gets its own version folder.
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        super().__init__(ImageClassifier, ImageDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Always-on callbacks, configured under their own top-level keys (`checkpoint:`), so an experiment's
        # `trainer.callbacks` list only holds what it adds (EarlyStopping, fine-tuning...).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": True,  # best + last
                "checkpoint.filename": "best-epoch{epoch:02d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(KerasModelSummary, "summary")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the best checkpoint (or the final weights if none was saved) on the test split.",
        )
        links = {
            "model.init_args.num_classes": lambda dm: dm.num_classes,
            "model.init_args.input_shape": lambda dm: dm.dims,
            "model.init_args.net.init_args.num_classes": lambda dm: dm.num_classes,
            "model.init_args.net.init_args.in_channels": lambda dm: dm.dims[0],
            "model.init_args.net.init_args.input_size": lambda dm: dm.dims[1:],
        }
        for target, compute in links.items():
            parser.link_arguments("data", target, compute_fn=compute, apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        _share_log_version(trainer)
        return trainer

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", default=False):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path: Optional[str] = "best" if checkpoint is not None and checkpoint.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def _share_log_version(trainer: Trainer) -> None:
    """Make every logger write into the first logger's version folder.

    CSVLogger and TensorBoardLogger each pick "the next free version_N" on their own; given the same save_dir,
    the second one sees the folder the first just made and takes N+1, splitting one run over two folders.
    """
    loggers = [lg for lg in trainer.loggers if hasattr(lg, "_version")]
    if len(loggers) < 2:
        return
    version = loggers[0].version
    for logger in loggers[1:]:
        if logger._version is None:
            logger._version = version


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``cli.py`` and the ``lightning-cnn`` console script."""
    CNNCLI(args=args)


if __name__ == "__main__":
    main()
