"""The CLI itself: :class:`CNNCLI` (LightningCLI with the links, defaults and checks of this package) and
:func:`main`, the entry point of ``cli.py``.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from jsonargparse import Namespace
from jsonargparse.typing import PositiveInt
from pytorch_lightning import Callback, LightningDataModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightning_cnn.callbacks import (
    ClassificationReport,
    KerasModelSummary,
    ModelCheckpoint,
    PredictionWriter,
    TrainingPlots,
)
from lightning_cnn.callbacks.progress import RunLog, prints_lines
from lightning_cnn.callbacks.rng_state import RNGStateCheckpoint
from lightning_cnn.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_state_dict_fits,
    load_checkpoint,
)
from lightning_cnn.cli.arguments import (
    _CKPT_KEYWORDS,
    _class_config,
    _experiment_name,
    _files_data,
    _has_option,
    _link_weights_to_normalization,
    _note_model_difference,
    _option_value,
)
from lightning_cnn.cli.checks import _LINKS, ConfigChecks
from lightning_cnn.cli.errors import (
    ConfigError,
    _ConciseParser,
    _innermost_value_error,
    _user_error_in_chain,
)
from lightning_cnn.cli.help import SUBCOMMAND_HELP
from lightning_cnn.cli.notices import lightning_warnings_hidden, show_notices_at
from lightning_cnn.cli.runs import (
    _DEFAULT_LOGGERS,
    RUNS_DIR,
    RunFolder,
    _latest_checkpoint,
    _RankZeroLogVersion,
    _SaveConfigWhole,
    _share_log_version,
)
from lightning_cnn.cli.tools import _TOOLS, ToolSubcommands
from lightning_cnn.hardware import auto_precision
from lightning_cnn.models.backbones import (
    skip_pretrained_weights,
)
from lightning_cnn.module import ImageClassifier

__all__ = ["CNNCLI"]

# Subcommands that evaluate or apply a trained model: with --ckpt_path they need no config.
_EVAL_SUBCOMMANDS = ("validate", "test", "predict", "export")
_DESCRIPTION = (
    "Train, evaluate and apply the course's CNNs: fit | validate | test | predict (LightningCLI), and the tools "
    "summary (Keras-style model.summary()), preview (augmentation grid), export (ONNX / pt2 / TorchScript), optimize "
    "(a dataset as LitData shards) and tune (an Optuna sweep)."
)


class CNNCLI(ToolSubcommands, ConfigChecks, LightningCLI):
    """LightningCLI with the datamodule → model links, a ``test_after_fit`` switch (on by default), runs logged into
    ``runs/<experiment>/`` and the tools ``summary``, ``preview``, ``export`` and ``optimize`` as subcommands."""

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
        with lightning_warnings_hidden():
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
        # tune has a parser of its own, to which main() hands the arguments before this CLI is built: listed here
        # so that `cli.py --help` shows it.
        parser._subcommands_action.add_subcommand("tune", self.init_parser(), help=SUBCOMMAND_HELP["tune"])
        for choice in parser._subcommands_action._choices_actions:  # one line each in `cli.py --help`
            choice.help = SUBCOMMAND_HELP.get(choice.dest, choice.help)

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
        # optimize converts data only: a default model (never trained or saved), so --data alone is a whole config.
        self._subcommand_parsers["optimize"].set_defaults(
            {
                "model": {
                    "class_path": "lightning_cnn.ImageClassifier",
                    "init_args": {"net": "lightning_cnn.models.LeNet"},
                }
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._argv: list[str] = []
        if args is None or isinstance(args, (list, tuple)):
            self._argv = list(sys.argv[1:] if args is None else args)
            self._defaults_from_checkpoint(self._argv)
            self._default_loggers(parser, self._argv)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        show_notices_at((self.config.get(subcommand) if subcommand else self.config).get("log_level") or "warning")

    def _default_loggers(self, parser: LightningArgumentParser, argv: list[str]) -> None:
        """Unless a config sets ``trainer.logger``, log CSV + TensorBoard into ``runs/<experiment>/version_N``, where
        the experiment is the name of the first ``--config`` file (else the subcommand's name, e.g. ``runs/test``):
        a config never types its own folder."""
        subcommands = getattr(self, "_subcommand_parsers", {})  # none when the CLI is built with run=False
        subcommand = next((arg for arg in argv if arg in subcommands), None)
        if subcommands and subcommand is None:
            return  # e.g. `cli.py --help`: the top-level parser has no trainer to set
        folder = f"{RUNS_DIR}/{_experiment_name(argv, default=subcommand or 'run')}"
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
        _keep_integer_batch_limits(parser)
        _accept_auto_precision(parser)
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
        parser.add_lightning_class_args(RunLog, "progress")  # before the summary: its header comes first
        parser.add_lightning_class_args(KerasModelSummary, "summary")
        parser.add_lightning_class_args(TrainingPlots, "plots")
        parser.add_lightning_class_args(ClassificationReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument(
            "--log_level",
            type=Literal["debug", "info", "warning", "error"],
            default="warning",
            help="Level of Lightning's own log messages: info also prints its notices (devices found, seed set, "
            "tips), which the run's header replaces.",
        )
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
        progress = config.get("progress")
        if progress is not None and prints_lines(progress.mode) and config.get("trainer"):
            config["trainer"]["enable_progress_bar"] = False  # one line per epoch instead (RunLog)
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

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # `trainer.enable_checkpointing: false` means no checkpoints: leave out the always-on `checkpoint:` and
        # `resume_checkpoint:` callbacks, which Lightning would otherwise refuse with a traceback.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LightningModelCheckpoint)]
        self._precision_note = None
        if config.get("precision") == "auto":  # chosen here, so the run's config.yaml keeps `auto`
            config = {**config}
            config["precision"], why = auto_precision(config.get("accelerator", "auto"))
            self._precision_note = f"precision auto: {config['precision']} ({why})"
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self._precision_note and trainer.is_global_zero:
            print(self._precision_note, flush=True)
        _share_log_version(trainer)
        # Runs resumed mid-epoch draw the same random numbers as the run they continue.
        trainer.callbacks.append(RNGStateCheckpoint())
        trainer.callbacks.append(_RankZeroLogVersion())
        if trainer.strategy._checkpoint_io is None:  # Lightning's default writer; a configured plugin stays
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self._run_folder = RunFolder.of(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        self._check_batch_splits()
        self._run_folder.check_writable()
        try:
            if subcommand in _TOOLS:  # methods of this class, not of the Trainer
                getattr(self, subcommand)(**self._prepare_subcommand_kwargs(subcommand))
            else:
                super()._run_subcommand(subcommand)
        except Exception:
            if self.trainer.is_global_zero:
                self._run_folder.remove_if_unfinished()
            raise

    def before_fit(self) -> None:
        from lightning_cnn.tune.reporter import TrialReporter  # (lightning_cnn.tune imports this module)

        reporter = TrialReporter.from_env()  # a trial of `cli.py tune`: report to its study (not in the config)
        if reporter is not None:
            self.trainer.callbacks.append(reporter)
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = _latest_checkpoint(self.trainer)
        elif config.get("ckpt_path"):
            self._check_checkpoint_fits()

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", default=True):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path: Optional[str] = checkpoint.best_model_path if checkpoint is not None else None
        if self.trainer.is_global_zero:
            tested = f"the best checkpoint, {ckpt_path}" if ckpt_path else "the final weights (no checkpoint kept)"
            print(f"Testing {tested}", flush=True)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path or None)


def _accept_auto_precision(parser: Any) -> None:
    """``trainer.precision`` also takes ``auto``: bfloat16 where the hardware has it, see
    :func:`~lightning_cnn.hardware.auto_precision` (chosen when the trainer is built)."""
    for action in parser._actions:
        if action.dest == "trainer.precision":
            action._typehint = Optional[Union[Literal["auto"], action._typehint]]


def _keep_integer_batch_limits(parser: Any) -> None:
    """``trainer.limit_*_batches`` as Lightning means them: an integer is that many batches, a float a fraction.

    Trainer annotates them ``Union[float, int, None]`` and the parser tries the union in that order, so ``1``
    became ``1.0``, every batch. The annotation is replaced by one that tries ``int`` first (``int | float | None``:
    ``typing.Union`` would hand back the cached float-first union, which compares equal).
    """
    for action in parser._actions:
        if action.dest.startswith("trainer.limit_") and action.dest.endswith("_batches"):
            action._typehint = int | float | None
