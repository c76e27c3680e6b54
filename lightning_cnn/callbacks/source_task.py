"""Watch catastrophic forgetting while fine-tuning: the source task's accuracy of the network being trained.

The slides end with a warning: a network fine-tuned on a new task may lose what it could do on the task it was
trained on before. :class:`SourceTaskMonitor` measures it. After each training epoch it runs the source task's
images through the *current* backbone followed by the source checkpoint's *original* head (the new task has a new
head; the old one is kept aside, unchanged) and logs the accuracy as ``source/acc``. A frozen backbone cannot
forget: the value stays at the source model's own accuracy. A backbone trained on the new task drifts, and the
old head, which was fitted to the old features, loses accuracy.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning import LightningDataModule
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from lightning_cnn.checkpoints import CheckpointError, load_checkpoint
from lightning_cnn.console import say
from lightning_cnn.module import ImageClassifier

__all__ = ["SourceTaskMonitor"]

Split = Literal["val", "test"]
# split → (the datamodule's setup stage, its dataloader method).
_SPLITS = {"val": ("validate", "val_dataloader"), "test": ("test", "test_dataloader")}


class SourceTaskMonitor(Callback):
    """Log the source task's accuracy of the network being fine-tuned, as ``source/acc`` (and ``source/loss``).

    The network being trained must follow :mod:`lightning_cnn.models`' contract (``backbone`` and ``head``
    submodules, reached as ``pl_module.net`` or the module itself), and its backbone must have the source
    checkpoint's architecture: the source head is put on top of it. Evaluation runs in eval mode under
    ``torch.no_grad()`` on the module's device and precision, without test-time flipping, and leaves every layer's
    train/eval mode as it was (a frozen backbone's BatchNorms stay in eval mode). A source head with one logit
    (a binary task) is scored as :class:`~lightning_cnn.ImageClassifier` scores it (logit > 0).

    ``before`` is the source accuracy of the starting weights (once pretrained weights are loaded, e.g. by
    :class:`~lightning_cnn.callbacks.FreezeBackbone` in its ``setup``), measured when fitting starts; ``history``
    holds ``(epoch, accuracy)`` per evaluated epoch. Both are saved in checkpoints, so a resumed run keeps them.
    An epoch's value is logged in its validation row of the logs (beside ``val/acc``) when the epoch ends with a
    validation, else in its training row.

    Under DDP every process evaluates the whole source split (no distributed sampler), so all log the same value
    (synced, for ModelCheckpoint/EarlyStopping decisions that agree); it costs each process the full pass.

    Example (a callback of a fine-tuning config; ``data`` is the source task's datamodule)::

        trainer:
          callbacks:
            - class_path: lightning_cnn.callbacks.SourceTaskMonitor
              init_args:
                checkpoint: runs/pretrain_fashion_0to4/version_0/checkpoints/last.ckpt
                data:
                  class_path: lightning_cnn.data.FashionMNISTDataModule
                  init_args: {classes: [0, 1, 2, 3, 4], batch_size: 512}
                split: test

    Args:
        checkpoint: A checkpoint of :class:`~lightning_cnn.ImageClassifier` trained on the source task (written by
            ``cli.py fit``); its head is the one evaluated.
        data: The source task's datamodule, with the classes (in the order) the checkpoint was trained on; an
            instance of its own, not the trainer's. Its ``prepare_data`` and ``setup`` are called once, in this
            callback's ``setup``.
        split: Which of its splits to evaluate on.
        every_n_epochs: Evaluate after every n-th training epoch (epochs ``n - 1``, ``2n - 1``, …, counted from 0).
        limit_batches: Evaluate on the split's first batches only, as Lightning's ``limit_test_batches``: a fraction
            (at least one batch) or a number of batches. The split is not shuffled, so every evaluation sees the same
            images.
        verbose: Print the accuracy before training and after each evaluated epoch.

    Raises:
        CheckpointError: (a ``ValueError``) If ``checkpoint`` is missing, not a checkpoint of this project's
            classifier, or its network has no ``head``; in ``setup``, if its backbone does not fit the network
            being trained, or its classes are not ``data``'s.
        ValueError: On a bad ``split``, ``every_n_epochs`` or ``limit_batches``; in ``setup``, if ``data`` has no
            such split.
    """

    def __init__(
        self,
        checkpoint: str,
        data: LightningDataModule,
        split: Split = "test",
        every_n_epochs: int = 1,
        limit_batches: Union[int, float] = 1.0,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if split not in _SPLITS:
            raise ValueError(f"split={split!r}; choose one of {list(_SPLITS)} (a split of the source datamodule).")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r}; use a whole number of epochs >= 1.")
        if isinstance(limit_batches, bool) or not (
            (isinstance(limit_batches, int) and limit_batches >= 1)
            or (isinstance(limit_batches, float) and 0.0 < limit_batches <= 1.0)
        ):
            raise ValueError(
                f"limit_batches={limit_batches!r}; use a fraction in (0, 1] of the split's batches or a number of "
                "batches >= 1, as Lightning's limit_test_batches."
            )
        self.checkpoint = checkpoint
        self.data = data
        self.split = split
        self.every_n_epochs = every_n_epochs
        self.limit_batches = limit_batches
        self.verbose = verbose
        # Loaded now, so a wrong path fails before any training starts.
        self.source = _load_source(checkpoint)

        #: Source accuracy of the starting weights, measured when fitting starts (``None`` before that).
        self.before: Optional[float] = None
        #: ``(epoch, source accuracy)`` after each evaluated training epoch.
        self.history: list[tuple[int, float]] = []
        # What a checkpoint restored, applied when fitting resumes. Testing a checkpoint after fit restores callback
        # states too; applying it then would cut the run's history back to that checkpoint's epoch.
        self._restored: Optional[dict[str, Any]] = None
        self._head: nn.Module = self.source.net.head.eval()
        self._loader: Optional[Any] = None
        self._num_batches: Optional[int] = None  # None: the whole split
        self._data_ready = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(checkpoint=self.checkpoint, split=self.split)

    # --- what is evaluated ------------------------------------------------------------------------------------

    def _prepare_data(self, trainer: pl.Trainer) -> None:
        """The source split's dataloader, over all of it on every process (the datamodule is not attached to the
        trainer, so it shards nothing)."""
        if self._data_ready:
            return
        stage, loader = _SPLITS[self.split]
        if trainer.local_rank == 0:  # as Lightning calls prepare_data: once per node, the others wait
            self.data.prepare_data()
        trainer.strategy.barrier("SourceTaskMonitor.prepare_data")
        self.data.setup(stage)
        self._loader = getattr(self.data, loader)()
        if isinstance(self._loader, (list, tuple)) and not self._loader:  # an ImageDataModule with val_split 0
            raise ValueError(
                f"SourceTaskMonitor: the source datamodule ({type(self.data).__name__}) has no {self.split} split; "
                "use split: test, or give it a val_split."
            )
        if isinstance(self.limit_batches, int):
            self._num_batches = self.limit_batches
        elif self.limit_batches < 1.0:
            self._num_batches = max(1, math.floor(len(self._loader) * self.limit_batches))
        self._data_ready = True

    def _check_fits(self, pl_module: pl.LightningModule) -> None:
        """The source head fits the network being trained: same backbone layers and shapes, same classes."""
        backbone = _network_part(pl_module, "backbone")
        ours, theirs = backbone.state_dict(), self.source.net.backbone.state_dict()
        for key in sorted(set(ours) | set(theirs)):
            if key in ours and key in theirs and ours[key].shape == theirs[key].shape:
                continue
            if key in ours and key in theirs:
                shapes = f"{tuple(theirs[key].shape)}, the trained network's {tuple(ours[key].shape)}"
                where = f"its backbone's {key} is {shapes}"
            elif key in ours:
                where = f"its backbone lacks {key}"
            else:
                where = f"its backbone has {key}, which the trained network lacks"
            raise CheckpointError(
                f"SourceTaskMonitor checkpoint={self.checkpoint} does not fit the network being trained: {where} "
                "(another architecture); give the checkpoint whose backbone this run fine-tunes."
            )
        names = getattr(self.source.preprocessing, "class_names", None)
        data_names = getattr(getattr(self.data, "preprocessing", None), "class_names", None)
        data_classes = getattr(self.data, "num_classes", self.source.num_classes)
        if data_classes != self.source.num_classes or (names and data_names and tuple(names) != tuple(data_names)):
            raise CheckpointError(
                f"SourceTaskMonitor checkpoint={self.checkpoint} was trained on {self.source.num_classes} classes "
                f"{list(names) if names else ''} but data ({type(self.data).__name__}) has {data_classes} "
                f"{list(data_names) if data_names else ''}; give data the classes, in order, the checkpoint was "
                "trained on (e.g. init_args.classes)."
            )

    @torch.no_grad()
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[float, float]:
        """Source-task accuracy and mean loss of the current backbone + the source head, in eval mode; every
        backbone layer's mode restored afterwards."""
        assert self._loader is not None  # set in setup; internal invariant
        backbone = _network_part(pl_module, "backbone")
        modes = [(m, m.training) for m in backbone.modules()]
        backbone.eval()
        precision = trainer.precision_plugin
        # Laid out as ImageClassifier.forward lays out its input (backbone and head are called directly here).
        channels_last = bool(getattr(pl_module, "_channels_last", False))
        correct, loss_sum, count = 0, 0.0, 0
        try:
            for index, batch in enumerate(self._loader):
                if self._num_batches is not None and index == self._num_batches:
                    break
                x, y = self.data.on_after_batch_transfer(
                    self.data.transfer_batch_to_device(batch, pl_module.device, 0), 0
                )
                x = precision.convert_input(x)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with precision.forward_context():
                    logits = self._head(backbone(x))
                logits = logits.float()
                correct += int((self.source.predicted_labels(logits) == y).sum())
                loss_sum += float(self.source.compute_loss(logits, y)) * y.shape[0]
                count += y.shape[0]
        finally:
            for module, training in modes:
                module.train(training)
        if count == 0:
            raise ValueError(
                f"SourceTaskMonitor: the source datamodule's {self.split} split is empty; give data that holds the "
                "source task's images."
            )
        return correct / count, loss_sum / count

    def _evaluate_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs or (self.history and self.history[-1][0] >= epoch):
            return
        accuracy, loss = self._evaluate(trainer, pl_module)
        self.history.append((epoch, accuracy))
        # sync_dist: every process computed the same value; syncing keeps it bit-identical across them.
        pl_module.log("source/acc", accuracy, on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("source/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        if self.verbose:
            change = f" ({accuracy - self.before:+.2%} since the start)" if self.before is not None else ""
            say(f"SourceTaskMonitor: epoch {epoch}: source-task {self.split} accuracy {accuracy:.2%}{change}.")

    # --- Lightning hooks (delegate) ----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        self._check_fits(pl_module)
        self._prepare_data(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The module is on its device and laid out (its setup), and pretrained weights are loaded (FreezeBackbone's
        # setup); the head follows it to the device, layout and precision.
        self._head = trainer.precision_plugin.convert_module(self._head.to(pl_module.device)).eval()
        if getattr(pl_module, "_channels_last", False):
            self._head.to(memory_format=torch.channels_last)
        self._apply_restored()
        if self.before is None:  # a resumed run keeps the value of the run's real start
            self.before, _ = self._evaluate(trainer, pl_module)
            if self.verbose:
                say(
                    f"SourceTaskMonitor: source-task {self.split} accuracy before training {self.before:.2%} "
                    f"(head of {self.checkpoint})."
                )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The validation that closes a training epoch runs before on_train_epoch_end, on the epoch's final weights.
        # Evaluating here logs source/acc into that epoch's validation row (beside val/acc) and records it before
        # ModelCheckpoint saves at validation end, so a checkpoint's history includes its own epoch. Sanity checks,
        # mid-epoch validations (val_check_interval < 1) and trainer.validate() are skipped.
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and trainer.is_last_batch:
            self._evaluate_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch without validation (no val split, check_val_every_n_epoch > 1) is evaluated here (its training
        # row), still before a ModelCheckpoint saving at train epoch end (a monitoring callback, called later).
        self._evaluate_epoch(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before, "history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def _apply_restored(self) -> None:
        """Take over a resumed run's ``before`` and ``history`` (see ``_restored``)."""
        if self._restored is None:
            return
        before = self._restored.get("before")
        self.before = None if before is None else float(before)
        self.history = [(int(epoch), float(accuracy)) for epoch, accuracy in self._restored.get("history", [])]
        self._restored = None


def _load_source(checkpoint: str) -> ImageClassifier:
    """The source classifier, on the CPU in eval mode.

    Raises:
        CheckpointError: If the file is missing, not a checkpoint of this project's classifier, or has no head.
    """
    # One clear line for a missing or foreign file (weights_only), before Lightning's own loading.
    load_checkpoint(checkpoint)
    try:
        source = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    except Exception as err:  # noqa: BLE001 — whatever rebuilding a foreign checkpoint raises, the fix is the same
        lines = str(err).strip().splitlines()
        raise CheckpointError(
            f"SourceTaskMonitor checkpoint={checkpoint} is not a checkpoint of lightning_cnn.ImageClassifier "
            f"({type(err).__name__}: {lines[0][:160] if lines else 'no message'}); give a .ckpt written by cli.py fit "
            "on the source task."
        ) from None
    if not isinstance(getattr(source.net, "head", None), nn.Module):
        raise CheckpointError(
            f"SourceTaskMonitor checkpoint={checkpoint}: its network ({type(source.net).__name__}) has no `head` "
            "submodule to evaluate; use an architecture from lightning_cnn.models."
        )
    return source.eval()


def _network_part(pl_module: pl.LightningModule, name: str) -> nn.Module:
    for owner in (getattr(pl_module, "net", None), pl_module):
        part = getattr(owner, name, None)
        if isinstance(part, nn.Module):
            return part
    raise ValueError(
        f"SourceTaskMonitor needs a `{name}` submodule on the module's `net` (or the module); "
        f"{type(pl_module).__name__} has none. Use an architecture from lightning_cnn.models."
    )
