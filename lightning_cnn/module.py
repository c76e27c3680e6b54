"""One LightningModule that trains any architecture in :mod:`lightning_cnn.models` (or any ``nn.Module`` that
maps images to logits).

The loss is Keras' ``compile(loss=...)`` plus every regularization penalty, in training *and* evaluation, so
``val/loss`` matches Keras' ``val_loss``. The data term and the penalty are also logged on their own as
``val/data_loss`` and ``val/reg_loss`` (and ``test/...``); training logs the epoch means ``train/{loss,data_loss,
reg_loss,acc}_epoch`` and the step loss ``train/loss_step``.

Subclass it to change behaviour; the methods meant to be overridden are:

- :meth:`compute_loss` — the data term of the loss (e.g. focal loss, label smoothing);
- :meth:`shared_step` — what one train/val/test step does with a batch, returning the loss;
- :meth:`regularization_loss` — the penalty added to the loss;
- ``configure_optimizers`` — as in any LightningModule; by default it builds the ``optimizer`` and ``lr_scheduler``
  the module was given (in YAML, ``model.init_args.optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Literal, Optional, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from lightning_cnn.hardware import lay_out, warn_if_bf16_is_emulated
from lightning_cnn.models.backbones import skip_pretrained_weights
from lightning_cnn.module_checks import built, choice, divergence_message, from_net, plain_data
from lightning_cnn.preprocessing import Preprocessing
from lightning_cnn.regularization import regularization_loss
from lightning_cnn.test_time import test_time_views

__all__ = ["ImageClassifier", "LRSchedulerCallable", "NonFiniteLossError", "OptimizerCallable", "Stage"]

Stage = Literal["train", "val", "test"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
SchedulerInterval = Literal["epoch", "step"]
# What `optimizer` / `lr_scheduler` take: a class (or function) that builds one from the parameters / the optimizer.
# jsonargparse turns a YAML `class_path` + `init_args` into such a callable (the same types as Lightning's
# OptimizerCallable / LRSchedulerCallable, which live in pytorch_lightning.cli: not imported by a model file).
OptimizerCallable = Callable[[Iterable[Tensor]], Optimizer]
LRSchedulerCallable = Callable[[Optimizer], Union[LRScheduler, ReduceLROnPlateau]]

# What a training step adds up (plus the sample count) to log epoch means: loss, data loss, penalty, accuracy.
_TRAIN_SUMS = ("loss", "data_loss", "reg_loss", "acc")

# What a ReduceLROnPlateau scheduler watches unless it names its own `monitor` (Lightning's CLI subclass does).
_PLATEAU_MONITOR = "val/loss"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops before anything non-finite is saved."""


class ImageClassifier(pl.LightningModule):
    """Train, evaluate and predict with an image classification network.

    A network with one output (``num_outputs == 1``, e.g. the slides' functional CNN) is trained as a binary
    classifier with sigmoid + binary cross-entropy; otherwise softmax + cross-entropy over ``num_classes``.

    Args:
        net: The architecture, e.g. :class:`~lightning_cnn.models.LeNet`; in YAML, ``class_path`` + ``init_args``.
        num_classes: Number of classes; default: the net's ``num_classes`` (the architectures' contract, see
            :mod:`lightning_cnn.models`). Give it only for a net that does not carry it.
        input_shape: ``(channels, height, width)`` of one image; default: the net's ``(in_channels, *input_size)``,
            or none for a net that carries neither. Used for the
            summary's output shapes.
        penalty_in_eval_loss: Add the regularization penalty to ``val/loss`` and ``test/loss`` as Keras does.
            Turn off to monitor the pure data loss.
        preprocessing: What the images went through before the network (class names, size, channels,
            normalization), as :meth:`Preprocessing.to_dict <lightning_cnn.preprocessing.Preprocessing.to_dict>`
            writes it. Linked from the datamodule by the CLI (and taken from the attached datamodule when ``None``),
            so a checkpoint carries it and prediction on new images and export apply the same steps.
        memory_format: How the network's 4-D weights and input batches are laid out in memory: ``"channels_last"``
            (NHWC, as Keras) or ``"contiguous"`` (NCHW, torch's default). ``"auto"`` is channels_last on a CPU, where
            it made the slides' CNNs train about 1.2x faster (README, "Speed"), and contiguous on other devices.
            Results are the same up to float rounding.
        compile: Compile the network with ``torch.compile`` (inductor) when the trainer sets up. The first steps then
            take the compile time (12-22 s for the slides' CNNs on two CPU cores), and on a CPU the compiled steps
            measured slower than eager ones (README, "Speed"), hence off by default; worth trying on a GPU.
        optimizer: Builds the optimizer from the trainable parameters; default Adam with lr 1e-3, Keras'
            ``compile(optimizer="adam")``. In YAML: ``class_path`` + ``init_args`` of any ``torch.optim`` class.
        lr_scheduler: Builds a learning-rate scheduler from the optimizer, stepped per ``lr_scheduler_interval``;
            none by default.
            A ``ReduceLROnPlateau`` watches its ``monitor`` if it has one (Lightning's subclass), else ``val/loss``.
        lr_scheduler_interval: Step the scheduler every ``"epoch"`` or every optimizer ``"step"`` (what OneCycleLR
            and warm-up schedules expect).
        label_smoothing: Keras' ``label_smoothing`` of its cross-entropy losses, in training and evaluation alike:
            targets ``y (1 - s) + s / num_classes``, or ``y (1 - s) + s / 2`` for a one-logit network.
        test_time_flip: Evaluate (validation, test, predict) on the mean of the logits for each image and its
            left-right mirror, a test-time augmentation for data whose classes are mirror-symmetric (clothing,
            CIFAR's objects; not digits or text). Costs a second forward pass per evaluated image; training is
            unchanged, and an exported model holds the network alone (one pass).
        test_time_shift: With ``k > 0``, evaluation also averages the logits of four copies of each image moved ``k``
            pixels left, right, up and down (the edge pixels repeated into the gap): 5 views, or 10 with
            ``test_time_flip``, each a forward pass. It suits networks trained with shifts of that size; 0 (default)
            is off.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: Optional[int] = None,
        input_shape: Optional[tuple[int, int, int]] = None,
        penalty_in_eval_loss: bool = True,
        preprocessing: Optional[dict[str, Any]] = None,
        memory_format: MemoryFormat = "auto",
        compile: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        lr_scheduler_interval: SchedulerInterval = "epoch",
        label_smoothing: float = 0.0,
        test_time_flip: bool = False,
        test_time_shift: int = 0,
    ) -> None:
        super().__init__()
        # Under the CLI, the hyperparameters hold the net's config (class_path + init_args), from which
        # `load_from_checkpoint` rebuilds it. Built in Python, `net` is an object whose constructor arguments are
        # unknown; its weights are in the state dict, so it is left out rather than pickled.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        # Likewise an optimizer or scheduler given as a Python callable (the CLI records its class_path config).
        objects = [name for name in ("net", "optimizer", "lr_scheduler") if not plain_data(self.hparams.get(name))]
        if objects:
            self.save_hyperparameters(ignore=objects)
        self.net = net
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = choice("lr_scheduler_interval", lr_scheduler_interval, SchedulerInterval)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing}; use a value in [0, 1) (0: none, Keras' default).")
        self.label_smoothing = label_smoothing
        self.test_time_flip = test_time_flip
        if isinstance(test_time_shift, bool) or not isinstance(test_time_shift, int) or test_time_shift < 0:
            raise ValueError(
                f"test_time_shift={test_time_shift!r}; use a whole number of pixels >= 0 (0: off, 1: one-pixel shifts)."
            )
        self.test_time_shift = test_time_shift
        num_classes = from_net(net, "num_classes", num_classes, getattr(net, "num_classes", None))
        if num_classes is None:
            raise ValueError(
                f"{type(net).__name__} carries no num_classes attribute; give ImageClassifier num_classes=N, or store "
                "it on the net (self.num_classes), as the architectures in lightning_cnn.models do."
            )
        carried_shape = None
        if hasattr(net, "in_channels") and hasattr(net, "input_size"):
            carried_shape = (net.in_channels, *net.input_size)
        input_shape = from_net(net, "input_shape", input_shape, carried_shape)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.penalty_in_eval_loss = penalty_in_eval_loss
        self.binary = getattr(net, "num_outputs", num_classes) == 1
        self.preprocessing = Preprocessing.from_dict(preprocessing) if preprocessing else None
        self.example_input_array = torch.zeros(1, *self.input_shape) if self.input_shape else None
        self.memory_format = choice("memory_format", memory_format, MemoryFormat)
        self.compile_net = compile
        self._compiled = False
        self._channels_last = False  # decided in setup(), once the device is known
        self._stride_hooks: list[Any] = []

        # Evaluation metrics take predicted class ids (see predicted_labels), so a binary network's logits are never
        # mistaken for probabilities; the confusion matrices give the per-class report and the test picture.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # Evaluation losses as means over images. nan_strategy=nan keeps a NaN loss visible (the default drops it
        # with a warning; "disable" also ignores the weights, torchmetrics 1.9).
        self.eval_means = nn.ModuleDict(
            {
                f"{stage}_{name}": MeanMetric(nan_strategy=float("nan"))
                for stage in ("val", "test")
                for name in ("loss", "data_loss", "reg_loss")
            }
        )
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        #: The last finished epoch's confusion matrix per stage (rows: true class, columns: predicted).
        self.confusion_matrices: dict[str, Tensor] = {}
        # Training figures are summed here step by step and logged once per epoch (see _track_train_step).
        self.register_buffer("_train_sums", torch.zeros(len(_TRAIN_SUMS) + 1), persistent=False)
        # The first training step whose loss was not finite: (global step, loss, data loss, penalty); step -1: none.
        # Kept on the device and checked once per epoch and before every checkpoint, not with a sync per step.
        self.register_buffer("_first_nonfinite", torch.tensor([-1.0, 0.0, 0.0, 0.0]), persistent=False)

    @property
    def backbone(self) -> nn.Module:
        """The network's feature extractor (what fine-tuning freezes)."""
        return self.net.backbone

    def forward(self, x: Tensor) -> Tensor:
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # no copy when it already is
        return self.net(x)

    # --- the overridable pieces -------------------------------------------------------------------------------

    def compute_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The data term of the loss: cross-entropy, or binary cross-entropy for a one-logit network (with
        ``label_smoothing``, as Keras smooths them)."""
        if self.binary:
            smoothed = target.float() * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), smoothed)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def regularization_loss(self) -> Tensor:
        """Keras-style penalties of the network (kernel, bias, and the last forward's activity penalties)."""
        return regularization_loss(self.net)

    def evaluation_logits(self, x: Tensor) -> Tensor:
        """The logits that evaluation and prediction use: ``self(x)``, or the mean of the logits over the views that
        ``test_time_shift`` and ``test_time_flip`` add (shifted copies, then the mirror of each)."""
        views = test_time_views(x, self.test_time_shift, self.test_time_flip)
        return sum(self(view) for view in views) / len(views)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class probabilities, shape ``(N, num_classes)``; a one-logit network gives ``[1 - p, p]``."""
        if self.binary:
            p = torch.sigmoid(logits.reshape(-1, 1))
            return torch.cat([1 - p, p], dim=1)
        return logits.softmax(dim=1)

    def predicted_labels(self, logits: Tensor) -> Tensor:
        """Predicted class ids: arg-max, or logit > 0 for a one-logit network (the arg-max of its
        :meth:`probabilities`). Training accuracy, evaluation metrics, predictions and exports all use it."""
        if self.binary:
            return (logits.reshape(-1) > 0).long()
        return logits.argmax(dim=1)

    def shared_step(self, batch: Any, stage: Stage) -> Tensor:
        """One step of ``stage`` on ``(images, targets)``: loss with penalty, accuracy, logging."""
        x, y = batch
        logits = self(x) if stage == "train" else self.evaluation_logits(x)
        data_loss = self.compute_loss(logits, y)
        reg_loss = self.regularization_loss()
        include_penalty = stage == "train" or self.penalty_in_eval_loss
        loss = data_loss + reg_loss if include_penalty else data_loss

        labels = self.predicted_labels(logits.detach())
        if stage == "train":
            self._track_train_step(loss, data_loss, reg_loss, labels, y)
            return loss

        accuracy = getattr(self, f"{stage}_acc")
        accuracy(labels, y)
        getattr(self, f"{stage}_confusion").update(labels, y)
        # Means over images, synced over processes as sums and counts: exact when processes hold unequal shares.
        for name, value in (("loss", loss), ("data_loss", data_loss), ("reg_loss", reg_loss)):
            mean = self.eval_means[f"{stage}_{name}"]
            mean.update(value.detach(), weight=x.shape[0])
            self.log(f"{stage}/{name}", mean, prog_bar=name == "loss", on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    # --- Lightning hooks (delegate) ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        self._take_preprocessing_from_datamodule()
        self._apply_memory_format(self.trainer.strategy.root_device)
        self._warn_if_bf16_is_emulated()
        if self.compile_net and not self._compiled:
            self.net.compile()  # in place: the state dict keeps its keys, so checkpoints load either way
            self._compiled = True

    def on_train_epoch_end(self) -> None:
        self._log_train_epoch_figures()  # an epoch cut short (max_steps) has not logged them at its last batch

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.reset()

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_validation_epoch_end(self) -> None:
        self._store_confusion("val")

    def on_test_epoch_end(self) -> None:
        self._store_confusion("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_if_diverged()  # never write non-finite weights, and never mark them best

    def _stop_if_diverged(self) -> None:
        """Raise :class:`NonFiniteLossError` (on every process) once a training loss has been NaN or infinite."""
        record = self._first_nonfinite.tolist()
        diverged = record[0] >= 0
        if self._trainer is not None and self.trainer.world_size > 1:
            diverged = self.trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if not diverged:
            return
        epoch = self.trainer.current_epoch if self._trainer is not None else 0
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        kept = (callback.last_model_path or callback.best_model_path) if callback is not None else ""
        raise NonFiniteLossError(divergence_message(record, epoch, kept))

    def _store_confusion(self, stage: Stage) -> None:
        metric = getattr(self, f"{stage}_confusion")
        if metric.update_count:  # summed over processes under DDP
            self.confusion_matrices[stage] = metric.compute().cpu()

    def _apply_memory_format(self, device: torch.device) -> None:
        """Lay the network's weights out as ``memory_format`` says for ``device`` (before the optimizer and DDP see
        them; moving to the device keeps the layout)."""
        wanted = self.memory_format
        self._channels_last = wanted == "channels_last" or (wanted == "auto" and device.type == "cpu")
        for handle in self._stride_hooks:
            handle.remove()
        self._stride_hooks = lay_out(self.net, self._channels_last)

    def _warn_if_bf16_is_emulated(self) -> None:
        warn_if_bf16_is_emulated(str(self.trainer.precision), self.trainer.strategy.root_device)

    def _take_preprocessing_from_datamodule(self) -> None:
        """Built in Python without ``preprocessing``: record the attached datamodule's, so checkpoints carry it."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if self.preprocessing is None and isinstance(getattr(datamodule, "preprocessing", None), Preprocessing):
            self.preprocessing = datamodule.preprocessing
            self.hparams["preprocessing"] = self.preprocessing.to_dict()

    # --- training-time logging, kept cheap ----------------------------------------------------------------------
    # On a small network a CPU step takes ~5 ms, and each `self.log` call or torchmetrics update costs ~0.1-0.3 ms
    # of bookkeeping (benchmarks/throughput.py). So a training step adds its figures to one tensor of sums,
    # logs the step loss only on the steps the logger writes, and the epoch means are logged once per epoch.

    def _track_train_step(self, loss: Tensor, data_loss: Tensor, reg_loss: Tensor, labels: Tensor, y: Tensor) -> None:
        n = y.shape[0]
        correct = (labels == y).sum()
        step = torch.stack([loss.detach() * n, data_loss.detach() * n, reg_loss.detach() * n, correct.float()])
        self._train_sums[:-1] += step
        self._train_sums[-1] += n
        parts = torch.stack(
            [loss.new_tensor(float(self.global_step)), loss.detach(), data_loss.detach(), reg_loss.detach()]
        )
        first = ~torch.isfinite(loss.detach()) & (self._first_nonfinite[0] < 0)
        self._first_nonfinite.copy_(torch.where(first, parts.to(self._first_nonfinite.dtype), self._first_nonfinite))
        if self._trainer is None:
            return
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        if self.trainer.is_last_batch:
            self._log_train_epoch_figures()  # here, so every callback's on_train_epoch_end sees them

    def _log_train_epoch_figures(self) -> None:
        count = self._train_sums[-1]
        if count == 0:  # already logged this epoch, or no training batches
            return
        self._stop_if_diverged()  # before validation and the epoch's checkpoints
        means = self._train_sums[:-1] / count
        for name, value in zip(_TRAIN_SUMS, means):
            # sync_dist: every rank logs the mean over all ranks (equal sample counts per rank under DDP).
            self.log(
                f"train/{name}_epoch", value, prog_bar=name == "loss", on_step=False, on_epoch=True, sync_dist=True
            )
        self._train_sums.zero_()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.probabilities(self.evaluation_logits(x))

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Union[str, Path, IO], *args: Any, **kwargs: Any
    ) -> ImageClassifier:
        """Lightning's ``load_from_checkpoint``, rebuilding the network from the checkpoint alone: pretrained
        backbones are built without fetching their original weights (no file, cache or network needed), since the
        checkpoint's state dict replaces them anyway."""
        with skip_pretrained_weights():
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def configure_optimizers(self) -> Any:
        """The ``optimizer`` over the trainable parameters (Adam, lr 1e-3 by default), and the ``lr_scheduler`` if
        one was given."""
        optimizer = built("optimizer", self.optimizer_factory, [p for p in self.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = built("lr_scheduler", self.lr_scheduler_factory, optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = getattr(scheduler, "monitor", _PLATEAU_MONITOR)
        return {"optimizer": optimizer, "lr_scheduler": config}
