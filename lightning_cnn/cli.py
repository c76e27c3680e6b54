"""The command line: LightningCLI over :class:`ImageClassifier` and the datamodules.

``python cli.py {fit,validate,test,predict} --config configs/<name>.yaml`` (and ``--print_config``), and the
package's tools as subcommands of the same CLI: ``summary`` and ``preview`` (same config, no training) and
``export --ckpt_path … --format onnx|torchscript``. The datamodule's number of classes, image shape
and preprocessing are linked into the model and its network, so they are never typed twice; a pretrained network's
weights decide the datamodule's normalization; ``test_after_fit`` (on by default) evaluates the best checkpoint on
the test split when ``fit`` ends. Runs log into ``runs/<name of the first --config file>/version_N``.

``validate``/``test``/``predict``/``export`` with ``--ckpt_path`` need no config: the model, and the data it was trained on,
are rebuilt from the checkpoint (``--inputs`` predicts on new images with the checkpoint's preprocessing instead).
"""

from __future__ import annotations

import errno
import importlib
import re
import shutil
import sys
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NoReturn, Optional, TextIO

import torch
import yaml
from jsonargparse import Namespace
from jsonargparse.typing import PositiveInt
from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_warn

from lightning_cnn.callbacks import (
    ClassificationReport,
    KerasModelSummary,
    ModelCheckpoint,
    PredictionWriter,
    TrainingPlots,
)
from lightning_cnn.callbacks.rng_state import RNGStateCheckpoint
from lightning_cnn.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_state_dict_fits,
    checkpoint_preprocessing,
    load_checkpoint,
)
from lightning_cnn.data import CorruptDataError, DataNotFoundError
from lightning_cnn.export import ExportError
from lightning_cnn.export import export as export_checkpoint
from lightning_cnn.models.backbones import (
    TorchvisionNet,
    WeightsMismatchError,
    WeightsUnavailableError,
    skip_pretrained_weights,
    weights_name_for,
)
from lightning_cnn.module import ImageClassifier, NonFiniteLossError
from lightning_cnn.paths import written_whole
from lightning_cnn.preview import DEFAULT_DIR as PREVIEW_DIR
from lightning_cnn.preview import write_preview

__all__ = ["CNNCLI", "ConfigError", "main"]

# Lightning notices that appear on every run of this CLI and that a user cannot act on; silenced while the CLI runs
# (see CNNCLI.__init__), never for the rest of the process.
_LIGHTNING_NOTICES = (
    # Raised inside Lightning itself (its pytree helper) on every predict.
    r".*isinstance\(treespec, LeafSpec\).*",
    # Every run logs into a new version folder, so a checkpoint restored by `--ckpt_path` always comes from another
    # folder than the run's: Lightning's notice about it would appear on every test, predict and resume.
    r".*The dirpath has changed from.*",
)
# Subcommands that evaluate or apply a trained model: with --ckpt_path they need no config.
_EVAL_SUBCOMMANDS = ("validate", "test", "predict", "export")
# The package's tools, run by the same CLI as Trainer's fit/validate/test/predict: methods of CNNCLI below, given
# the model and datamodule the config describes.
_TOOLS = ("summary", "preview", "export")
# --ckpt_path values Lightning resolves itself rather than a file path.
_CKPT_KEYWORDS = ("last", "best", "hpc")
# What the CLI fills in from the datamodule, so it is never typed twice (and a typed value must agree with it). The
# classifier would read num_classes and the input shape from a net of this package; linking them also serves a
# net from elsewhere that does not carry them (any nn.Module class).
_LINKS: dict[str, Any] = {
    "model.init_args.num_classes": lambda dm: dm.num_classes,
    "model.init_args.input_shape": lambda dm: dm.dims,
    "model.init_args.net.init_args.num_classes": lambda dm: dm.num_classes,
    "model.init_args.net.init_args.in_channels": lambda dm: dm.dims[0],
    "model.init_args.net.init_args.input_size": lambda dm: dm.dims[1:],
    "model.init_args.preprocessing": lambda dm: dm.preprocessing.to_dict(),
}
# Keys the CLI fills from the datamodule: a checkpoint and a config that differ only there describe one model.
_LINKED_NET_KEYS = ("in_channels", "num_classes", "input_size")
_NET_CONTRACT = (
    "model.init_args.net takes an nn.Module class, not a builder function such as torchvision.models.resnet18; "
    "the CLI passes it num_classes, in_channels and input_size where its __init__ takes them. For a torchvision "
    "model use lightning_cnn.models.TorchvisionNet with init_args: {arch: resnet18}."
)
_FILES_DATAMODULE = "lightning_cnn.data.ImageFilesDataModule"
#: Where runs log: ``runs/<experiment>/version_N`` (see CNNCLI._default_loggers).
RUNS_DIR = "runs"
# What every run logs to unless its config says otherwise: metrics.csv (whole-file safe) and TensorBoard events.
_DEFAULT_LOGGERS = ("lightning_cnn.loggers.CSVLogger", "pytorch_lightning.loggers.TensorBoardLogger")
_DESCRIPTION = (
    "Train, evaluate and apply the course's CNNs: fit | validate | test | predict (LightningCLI), and the tools "
    "summary (Keras-style model.summary()), preview (augmentation grid) and export (ONNX / TorchScript)."
)


class _ConciseParser(LightningArgumentParser):
    """On a bad option or YAML key, print a one-line usage instead of the hundred-line option list, so the error
    naming the bad key is what a user sees (``--help`` still lists every option)."""

    def print_usage(self, file: Optional[TextIO] = None) -> None:
        print(f"usage: {self.prog} --config CONFIG [--section.key VALUE ...]", file=file or sys.stderr)

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        # jsonargparse cannot link the data's sizes into a net given as a builder function (it fails with an
        # internal TypeError); say what `net:` takes instead.
        if ("linked_targets" in message and 'Parser key "net"' in message) or _NET_CONTRACT in message:
            message = _NET_CONTRACT
        elif self.exit_on_error:  # the report printed to the user (nested parsers raise theirs to it)
            message = _condensed_union_report(message)
        super().error(message, ex)


class _SaveConfigWhole(SaveConfigCallback):
    """Lightning's config saver, writing ``config.yaml`` under a temporary name and renaming it once complete, as
    every other file of a run is written: a full disk never leaves a truncated config beside the checkpoints."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        parser_save = self.parser.save

        def save_whole(config: Namespace, path: str, **kwargs: Any) -> None:
            with written_whole(Path(path)) as partial:
                parser_save(config, str(partial), **kwargs)

        self.parser.save = save_whole
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.parser.save = parser_save


class CNNCLI(LightningCLI):
    """LightningCLI with the datamodule → model links, a ``test_after_fit`` switch (on by default), runs logged into
    ``runs/<experiment>/`` and the tools ``summary``, ``preview`` and ``export`` as subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", _ConciseParser)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # Never overwrite a run's saved config; every run gets its own version folder.
        kwargs.setdefault("save_config_callback", _SaveConfigWhole)
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        kwargs.setdefault("parser_kwargs", {"description": _DESCRIPTION})
        # The optimizer and scheduler are the model's own arguments (model.init_args.optimizer), injected as
        # callables, rather than LightningCLI's top-level keys that replace configure_optimizers.
        kwargs.setdefault("auto_configure_optimizers", False)
        # Runs are reproducible unless a config says otherwise (seed_everything: true draws a seed).
        kwargs.setdefault("seed_everything_default", 42)
        # Any LightningDataModule that offers what the links read (num_classes, dims, preprocessing): the image
        # datamodules, ImageFilesDataModule for new images, or a project's own.
        with warnings.catch_warnings():
            for notice in _LIGHTNING_NOTICES:
                warnings.filterwarnings("ignore", message=notice)
            super().__init__(ImageClassifier, LightningDataModule, *args, **kwargs)

    # --- parsing -----------------------------------------------------------------------------------------------

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # The tools, each with the whole config (model, data, trainer…) plus its own options, read from its method's
        # signature as Lightning reads fit's from Trainer.fit.
        for tool in _TOOLS:
            method = getattr(type(self), tool)
            description = (method.__doc__ or "").strip().splitlines()[0]
            tool_parser = self.init_parser(description=description, **kwargs.get(tool, {}))
            self._add_arguments(tool_parser)
            self._subcommand_method_arguments[tool] = tool_parser.add_method_arguments(
                type(self), tool, as_group=False, skip={"model", "datamodule"}
            )
            self._subcommand_parsers[tool] = tool_parser
            parser._subcommands_action.add_subcommand(tool, tool_parser, help=description)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if not add_subcommands:
            return
        predict = self._subcommand_parsers["predict"]
        predict.add_argument(
            "--inputs",
            type=Optional[str],
            default=None,
            help="Predict on new images instead of the test split: a folder (sub-folders too), an image file or an "
            ".npy uint8 array (N, H, W[, C]); prepared with the checkpoint's preprocessing.",
        )
        # The writer saves every prediction; keeping them all in memory as well would double the cost.
        predict.set_defaults({"return_predictions": False})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._argv: list[str] = []
        if args is None or isinstance(args, (list, tuple)):
            self._argv = list(sys.argv[1:] if args is None else args)
            self._defaults_from_checkpoint(self._argv)
            self._default_loggers(parser, self._argv)
        super().parse_arguments(parser, args)

    def _default_loggers(self, parser: LightningArgumentParser, argv: list[str]) -> None:
        """Unless a config sets ``trainer.logger``, log CSV + TensorBoard into ``runs/<experiment>/version_N``, where
        the experiment is the name of the first ``--config`` file (else the subcommand's name, e.g. ``runs/test``):
        a config never types its own folder."""
        subcommands = getattr(self, "_subcommand_parsers", {})  # none when the CLI is built with run=False
        subcommand = next((arg for arg in argv if arg in subcommands), None)
        configs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]
        folder = f"{RUNS_DIR}/{Path(configs[0]).stem if configs else subcommand or 'run'}"
        loggers = [{"class_path": cls, "init_args": {"save_dir": folder, "name": ""}} for cls in _DEFAULT_LOGGERS]
        (subcommands[subcommand] if subcommand else parser).set_defaults({"trainer.logger": loggers})

    def _defaults_from_checkpoint(self, argv: list[str]) -> None:
        """``validate``/``test``/``predict --ckpt_path X`` without a config: the model (and the data it was trained
        on, or ``--inputs``) default to what the checkpoint records, and logs go to ``runs/<subcommand>/``."""
        subcommand = argv[0] if argv and argv[0] in _EVAL_SUBCOMMANDS else None
        ckpt_path = _option_value(argv, "--ckpt_path")
        if subcommand is None or not ckpt_path or ckpt_path in _CKPT_KEYWORDS:
            return
        inputs = _option_value(argv, "--inputs") if subcommand == "predict" else None
        has_config = _has_option(argv, "--config")
        defaults: dict[str, Any] = {}
        checkpoint = self._checkpoint(ckpt_path)
        if not (has_config or _has_option(argv, "--model")):
            defaults["model"] = _class_config(checkpoint.get("hyper_parameters"), ckpt_path, "model")
        if inputs:  # satisfies the parser; before_instantiate_classes sets it whatever the config says
            defaults["data"] = _files_data(inputs, checkpoint)
        elif not (has_config or _has_option(argv, "--data")):
            defaults["data"] = _class_config(checkpoint.get("datamodule_hyper_parameters"), ckpt_path, "data")
        self._subcommand_parsers[subcommand].set_defaults(defaults)

    def _parse_ckpt_path(self) -> None:
        # Lightning merges the checkpoint's model over the configured one: check the file first (one clear line),
        # and say so when that replaces a model the config describes otherwise.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in _CKPT_KEYWORDS:
            checkpoint = self._checkpoint(ckpt_path)
            _note_model_difference(self.config[subcommand].get("model"), checkpoint.get("hyper_parameters"), ckpt_path)
        super()._parse_ckpt_path()

    def _checkpoint(self, path: str) -> dict[str, Any]:
        """The checkpoint at ``path``, read once (a fine-tuned VGG16's is half a gigabyte) for the checks above
        and below; released once the model has been checked against it."""
        cached = getattr(self, "_cached_checkpoint", None)
        if cached is None or cached[0] != path:
            self._cached_checkpoint = (path, load_checkpoint(path))
        return self._cached_checkpoint[1]

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
                # Both checkpoint callbacks write `last.ckpt` (the newest state); no `last-v1.ckpt` copies.
                "checkpoint.enable_version_counter": False,
            }
        )
        # Fault tolerance: a second checkpoint that only keeps `last.ckpt`, written every N training steps and/or
        # every interval of time, so a killed or pre-empted run loses little (`--ckpt_path last` resumes it).
        # Off by default; `checkpoint:` keeps choosing the best model at validation time.
        parser.add_lightning_class_args(ModelCheckpoint, "resume_checkpoint")
        parser.set_defaults(
            {
                "resume_checkpoint.save_top_k": 0,
                "resume_checkpoint.save_last": True,
                "resume_checkpoint.every_n_train_steps": 0,
                "resume_checkpoint.every_n_epochs": 0,
                "resume_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(KerasModelSummary, "summary")
        parser.add_lightning_class_args(TrainingPlots, "plots")
        parser.add_lightning_class_args(ClassificationReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint (or the final weights if none was saved) on the test split.",
        )
        parser.add_argument(
            "--cpu_threads",
            type=Optional[PositiveInt],
            default=None,
            help="Threads torch uses for one operation on the CPU (torch.set_num_threads); default: torch's, one per "
            "core.",
        )
        for target, compute in _LINKS.items():
            parser.link_arguments("data", target, compute_fn=compute, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        if config.get("cpu_threads"):
            torch.set_num_threads(config["cpu_threads"])
        if config.get("inputs"):  # new images: prepared with the checkpoint's preprocessing, not the config's data
            files = _files_data(config["inputs"], self._checkpoint(config["ckpt_path"]))
            config["data"] = Namespace(class_path=files["class_path"], init_args=Namespace(**files["init_args"]))
        _link_weights_to_normalization(config)

    def instantiate_classes(self) -> None:
        ckpt_path = self._subcommand_config().get("ckpt_path")
        # Weights coming from a checkpoint: a pretrained backbone need not fetch its original weights first.
        from_checkpoint = bool(ckpt_path) and ckpt_path not in _CKPT_KEYWORDS and Path(ckpt_path).is_file()
        try:
            with skip_pretrained_weights() if from_checkpoint else nullcontext():
                super().instantiate_classes()
        except ValueError as err:  # a constructor rejected a config value: keep its message, drop the wrapping
            if isinstance(err, CheckpointError):
                raise
            cause = _user_error_in_chain(err)
            if cause is not None:  # e.g. weights that cannot be fetched: its own message is the whole story
                raise cause from None
            raise ConfigError(_innermost_value_error(err)) from err

    def _subcommand_config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _check_checkpoint_fits(self) -> None:
        ckpt_path = self._subcommand_config().get("ckpt_path")
        if ckpt_path and ckpt_path not in _CKPT_KEYWORDS:
            check_state_dict_fits(self.model, self._checkpoint(ckpt_path)["state_dict"], f"--ckpt_path {ckpt_path}")
        self._cached_checkpoint = None  # Lightning reads the file itself to restore it

    def before_validate(self) -> None:
        self._check_checkpoint_fits()

    def before_test(self) -> None:
        self._check_checkpoint_fits()

    def before_predict(self) -> None:
        self._check_checkpoint_fits()

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self._check_typed_links()
        self._check_net_takes_data()

    def _check_typed_links(self) -> None:
        """A value typed for a linked key (``--model.init_args.net.init_args.in_channels 1``, or the same key in a
        YAML) that disagrees with the data would be silently replaced: refuse it, naming both."""
        datamodule = self.datamodule
        if datamodule is None or not hasattr(datamodule, "dims"):
            return
        typed = _typed_values(self._argv, list(_LINKS))
        for key, value in typed.items():
            actual = _LINKS[key](datamodule)
            if _plain(value) != _plain(actual):
                raise ConfigError(
                    f"{key}={value!r} disagrees with the data ({type(datamodule).__name__} gives {_plain(actual)!r}); "
                    "leave it out: the CLI links it from the datamodule."
                )

    def _check_net_takes_data(self) -> None:
        """A net from outside the package (any nn.Module class) is not checked when it is built: run it once on
        an input of the data's size, so a net that cannot take the images, or gives the wrong number of outputs,
        fails here with one line rather than as a traceback in the first step."""
        net, datamodule = getattr(self.model, "net", None), self.datamodule
        if net is None or type(net).__module__.startswith("lightning_cnn.") or not hasattr(datamodule, "dims"):
            return
        name, shape = type(net).__name__, "×".join(map(str, datamodule.dims))
        was_training = net.training
        try:
            with torch.no_grad():
                out = net.eval()(torch.zeros(2, *datamodule.dims))
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"model.init_args.net ({name}) cannot take the data's {shape} images ({first_line}); choose a net "
                "for this size and channel count, or change data.init_args.image_size."
            ) from None
        finally:
            net.train(was_training)
        if not isinstance(out, torch.Tensor) or out.shape != (2, datamodule.num_classes):
            got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"model.init_args.net ({name}) gives outputs of shape {got} per image, but the data has "
                f"{datamodule.num_classes} classes; the net must return one logit per class (its num_classes)."
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        _share_log_version(trainer)
        # Runs resumed mid-epoch draw the same random numbers as the run they continue.
        trainer.callbacks.append(RNGStateCheckpoint())
        trainer.callbacks.append(_RankZeroLogVersion())
        if trainer.strategy._checkpoint_io is None:  # Lightning's default writer; a configured plugin stays
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # The run's own folder, known before anything is written: checked for writing, removed if the run fails
        # before saving a checkpoint.
        log_dir = trainer.log_dir
        self._run_dir: Optional[Path] = Path(log_dir) if log_dir else None
        self._run_dir_existed = self._run_dir is not None and self._run_dir.exists()
        self._run_dir_anchor = _nearest_existing(self._run_dir) if self._run_dir is not None else None
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        self._check_batch_splits()
        self._check_run_dir_writable()
        try:
            if subcommand in _TOOLS:  # methods of this class, not of the Trainer
                getattr(self, subcommand)(**self._prepare_subcommand_kwargs(subcommand))
            else:
                super()._run_subcommand(subcommand)
        except Exception:
            self._remove_failed_run_dir()
            raise

    def _check_batch_splits(self) -> None:
        """A global batch that does not split over the processes fails now, before any process starts or any file
        is written (the datamodule would only find out when its first loader is built)."""
        split = getattr(self.datamodule, "per_process_batch_size", None)
        if split is None:
            return
        processes = self.trainer.num_nodes * self.trainer.num_devices
        try:
            split(processes)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def _check_run_dir_writable(self) -> None:
        if self._run_dir is None:
            return
        folder = _nearest_existing(self._run_dir)
        try:
            if not folder.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(folder))
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ConfigError(
                f"cannot write the run's folder {self._run_dir}: {folder} is not writable ({err.strerror}); choose "
                "another folder (the logger's save_dir, or trainer.default_root_dir)."
            ) from None

    def _remove_failed_run_dir(self) -> None:
        """A run that failed before writing a checkpoint leaves no half-filled ``version_N`` folder behind."""
        folder = self._run_dir
        if folder is None or self._run_dir_existed or not folder.is_dir() or not self.trainer.is_global_zero:
            return
        if any(folder.rglob("*.ckpt")):
            return
        shutil.rmtree(folder, ignore_errors=True)
        parent = folder.parent  # and the empty experiment folders this run created above it
        while parent != self._run_dir_anchor and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = _latest_checkpoint(self.trainer)
        elif config.get("ckpt_path"):
            self._check_checkpoint_fits()

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", default=True):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path: Optional[str] = "best" if checkpoint is not None and checkpoint.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)

    # --- the tools (python cli.py summary | preview | export) ----------------------------------------------------

    def summary(self, model: LightningModule, datamodule: Optional[LightningDataModule] = None) -> None:
        """Print the model's Keras-style summary (model.summary()) without training; options under summary:."""
        self._summary_callback().print_summary(model)

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
        configs = [self._argv[i + 1] for i, arg in enumerate(self._argv[:-1]) if arg in ("--config", "-c")]
        name = Path(configs[0]).stem if configs else "preview"  # the experiment, as the run folder is named
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
        """Export a trained checkpoint (--ckpt_path) as ONNX or TorchScript, normalization included.

        Float pixels in [0, 1] ``(N, C, H, W)`` in, class probabilities out; class names and input size in the
        file's metadata.

        Args:
            ckpt_path: The checkpoint to export (written by ``cli.py fit``); no config is needed beside it.
            format: ``onnx`` or ``torchscript``.
            out: Output file; default beside the checkpoint, never replacing a file.
        """
        if not ckpt_path:
            raise ConfigError("export needs --ckpt_path: the checkpoint written by cli.py fit to export.")
        export_checkpoint(ckpt_path, format, out)

    def _summary_callback(self) -> KerasModelSummary:
        found = [cb for cb in self.trainer.callbacks if isinstance(cb, KerasModelSummary)]
        return found[0] if found else KerasModelSummary()


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


class _RankZeroLogVersion(Callback):
    """Under DDP, give every rank's loggers rank 0's version number.

    Each process picks "the next free version_N" on its own when the CLI builds the trainer, before the processes
    know of each other; a rank that looks after rank 0 has created ``version_N`` picks ``N+1``. Rank 0 alone writes
    logs, checkpoints and the config, and the checkpoint folder is broadcast from it, but nothing else may depend
    on the other ranks' guess: they get rank 0's number as soon as the process group exists.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.world_size < 2:
            return
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "_version")]
        if loggers:
            version = trainer.strategy.broadcast(loggers[0].version, src=0)
            for logger in loggers:
                logger._version = version


def _latest_checkpoint(trainer: Trainer) -> Optional[str]:
    """The newest resumable checkpoint of this experiment, for ``--ckpt_path last``.

    Every run logs into its own ``version_N`` folder, so Lightning's own ``last`` (which looks only in the new
    run's empty folder) would silently start from scratch. Candidates: SLURM pre-emption checkpoints
    (``hpc_ckpt_*.ckpt``) and ``last*.ckpt`` in ``trainer.default_root_dir``, and ``last*.ckpt`` either in the
    checkpoint callbacks' explicit ``dirpath``s — when one is given, those folders are the run's own (a SLURM job's
    folder, say) and no other run's checkpoints are considered — or else in every version folder of the first
    logger. The most recently written wins. ``None`` (start from scratch, with a warning) when there is none, so
    the same command starts and resumes a pre-emptible job.
    """
    folders: list[Path] = [Path(trainer.default_root_dir)]
    patterns = ["hpc_ckpt_*.ckpt", "last*.ckpt"]
    explicit = [Path(c.dirpath) for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
    found = [path for folder in folders + explicit for pattern in patterns for path in folder.glob(pattern)]
    if not explicit and trainer.loggers and getattr(trainer.loggers[0], "root_dir", None):
        root = Path(trainer.loggers[0].root_dir)
        folders.append(root)
        found += root.glob("version_*/checkpoints/last*.ckpt")
    if not found:
        rank_zero_warn(
            f"--ckpt_path last: no last*.ckpt or hpc_ckpt_*.ckpt under {', '.join(map(str, folders + explicit))}; "
            "training starts from scratch."
        )
        return None
    return str(max(found, key=lambda path: path.stat().st_mtime_ns))


def _option_value(argv: list[str], option: str) -> Optional[str]:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in ``argv`` (the last one given), else ``None``."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def _typed_values(argv: list[str], keys: list[str]) -> dict[str, Any]:
    """Values given for ``keys`` (dotted) on the command line or in the ``--config`` YAML files of ``argv``."""
    typed: dict[str, Any] = {}
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv) and Path(argv[i + 1]).is_file():
            try:
                document = yaml.safe_load(Path(argv[i + 1]).read_text()) or {}
            except yaml.YAMLError:
                continue  # the parser has already reported a broken file
            for key in keys:
                found = _lookup(document, key.split("."))
                if found is not _MISSING:
                    typed[key] = found
    for key in keys:
        value = _option_value(argv, f"--{key}")
        if value is not None:
            typed[key] = yaml.safe_load(value)
    return typed


_MISSING = object()


def _lookup(document: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(document, dict) or part not in document:
            return _MISSING
        document = document[part]
    return document


def _has_option(argv: list[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in argv)


def _files_data(inputs: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The datamodule of new images to predict on, with the checkpoint's preprocessing."""
    preprocessing = checkpoint_preprocessing(checkpoint).to_dict()
    return {"class_path": _FILES_DATAMODULE, "init_args": {"inputs": inputs, "preprocessing": preprocessing}}


def _class_config(hparams: Optional[dict], ckpt_path: str, what: str) -> dict[str, Any]:
    """``{class_path, init_args}`` from a checkpoint's saved (CLI) hyperparameters."""
    hparams = dict(hparams or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if class_path is None:
        raise CheckpointError(
            f"{ckpt_path} does not record its {what}'s class (not written by cli.py); give --config with the "
            f"{what} it was trained with."
        )
    return {"class_path": class_path, "init_args": hparams}


def _net_description(model: Any) -> dict[str, Any]:
    """The configured network as comparable plain values: class path and init args, linked keys left out."""
    if model is None:
        return {}
    model = model.as_dict() if isinstance(model, Namespace) else dict(model)
    init = model.get("init_args", model)
    net = init.get("net") or {}
    net = net.as_dict() if isinstance(net, Namespace) else dict(net)
    args = {k: v for k, v in (net.get("init_args") or {}).items() if k not in _LINKED_NET_KEYS}
    return {"model": model.get("class_path", model.get("_class_path")), "net": net.get("class_path"), **args}


def _note_model_difference(config_model: Any, ckpt_hparams: Optional[dict], ckpt_path: str) -> None:
    """One line when the checkpoint's model (which is what runs) differs from the configured one."""
    configured, saved = _net_description(config_model), _net_description(ckpt_hparams)
    if not configured.get("net") or not saved.get("net"):
        return
    differing = [k for k in saved if k in configured and _plain(configured[k]) != _plain(saved[k])]
    if differing:
        detail = "; ".join(
            f"{k}: {saved[k]!r} in the checkpoint, {configured[k]!r} in the config" for k in differing[:3]
        )
        print(
            f"note: the model comes from --ckpt_path {ckpt_path}, not from the config ({detail}); the run's "
            "config.yaml records the checkpoint's model.",
            file=sys.stderr,
        )


def _plain(value: Any) -> Any:
    """Tuples as lists and Namespaces as dicts, so a config value and its checkpoint copy compare equal."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _link_weights_to_normalization(config: Namespace) -> None:
    """A pretrained ``TorchvisionNet``'s weights decide the datamodule's ``normalize_from_weights``: one key sets
    both, so changing ``arch`` or ``weights`` changes the preprocessing too.

    Raises:
        ConfigError: If ``normalize_from_weights`` is set to other weights than the network's.
    """
    model, data = config.get("model"), config.get("data")
    net = model.get("init_args", Namespace()).get("net") if isinstance(model, Namespace) else None
    data_args = data.get("init_args") if isinstance(data, Namespace) else None
    if not isinstance(net, Namespace) or not isinstance(data_args, Namespace):
        return
    if "normalize_from_weights" not in data_args or not _is_subclass(net.get("class_path"), TorchvisionNet):
        return
    net_args = net.get("init_args") or Namespace()
    arch = net_args.get("arch", "vgg16")
    name = weights_name_for(arch, net_args.get("weights"))
    given = data_args.get("normalize_from_weights")
    if name is None:  # random init or a local file: the datamodule's own setting stands
        return
    if given and not _same_weights(given, name):
        raise ConfigError(
            f"data.normalize_from_weights={given!r} disagrees with the network's weights {name!r} "
            f"(arch {arch}); leave normalize_from_weights out: it follows the network's weights."
        )
    data_args["normalize_from_weights"] = name


def _is_subclass(class_path: Optional[str], base: type) -> bool:
    if not class_path:
        return False
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, base)


def _same_weights(a: str, b: str) -> bool:
    from torchvision.models import get_weight

    try:
        return get_weight(a) == get_weight(b)
    except (ValueError, KeyError, AttributeError):
        return False


# Structure lines of jsonargparse's report on a nested class value that failed ("Does not validate against any of
# the Union subtypes"), around the one line that says what is wrong.
_REPORT_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "Given value")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")


def _condensed_union_report(message: str) -> str:
    """jsonargparse's multi-line report on a bad nested value as one line: the key (``model.init_args.net``), the
    class and the innermost reason (``Option 'filterz' is not accepted``). Other messages are returned as they are."""
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    keys, owner, reason, depth = [], None, None, -1
    for line in message.splitlines():
        text = line.strip()
        key, cls = _PARSER_KEY.search(text), _CLASS_PATH.search(text)
        if key:
            keys.append(key.group(1))
        elif cls:
            owner = cls.group(1)
        elif text and not text.startswith(_REPORT_NOISE):
            indent = len(line) - len(line.lstrip())
            if indent > depth:  # the deepest reason is the one about the innermost value
                reason, depth = text.lstrip("- "), indent
    if not keys or reason is None:
        return message
    where = ".init_args.".join(keys) + (f" ({owner})" if owner else "")
    return f"{where}: {reason}; see the accepted options with --help."


class ConfigError(ValueError):
    """A config value that a model, datamodule or callback constructor rejected."""


# Errors whose message already names the bad value and the fix: the command line prints just that line.
_USER_ERRORS = (
    ConfigError,
    NonFiniteLossError,
    ExportError,
    CheckpointError,
    DataNotFoundError,
    CorruptDataError,
    WeightsMismatchError,
    WeightsUnavailableError,
)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# Writing failures that are about the output folder, not a bug: read-only, no permission, disk or quota full.
_OUTPUT_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


def _user_error_in_chain(err: BaseException) -> Optional[BaseException]:
    """The first error in ``err``'s chain whose message already names the problem and the fix (jsonargparse wraps
    such errors, raised by a constructor, in a report of every Union subtype it tried)."""
    current, seen = err.__cause__ or err.__context__, 0
    while current is not None and seen < 32:
        if isinstance(current, _USER_ERRORS) and not isinstance(current, ConfigError):
            return current
        current, seen = current.__cause__ or current.__context__, seen + 1
    return None


def _innermost_value_error(err: BaseException) -> str:
    """The message of the deepest ValueError in ``err``'s chain: jsonargparse wraps the constructor's own error
    (which names the value and the fix) in a "does not validate against any of the Union subtypes" report."""
    message, current = str(err), err
    while current is not None:
        if isinstance(current, ValueError):
            message = str(current)
        current = current.__cause__ or current.__context__
    return message


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``cli.py`` and the ``lightning-cnn`` console script.

    A bad config value, missing or corrupt data, or unusable weights end the run with one ``error: …`` line
    (exit status 2) instead of a traceback; their messages say what to change.
    """
    try:
        CNNCLI(args=args)
    except _USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in _OUTPUT_ERRNOS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(
            f"error: cannot write{where}: {err.strerror}; free space or choose another output folder (the logger's "
            "save_dir, or trainer.default_root_dir). Files written before stay as they are.",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
