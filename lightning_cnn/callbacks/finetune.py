"""Fine-tuning a pretrained backbone: freeze it, train the head, optionally unfreeze it later at a lower LR.

The slides' recipe (``base_model.trainable = False``, train the new head, optionally unfreeze and retrain with a
small learning rate) as one callback. It is Lightning's ``BackboneFinetuning`` idea with its known failure modes
designed out:

- a frozen backbone's BatchNorm layers stay in eval mode, so they neither normalise with batch statistics nor
  update their running statistics (Keras' ``trainable = False`` does the same; Lightning #13902, #14277, #20629);
- an optimizer built over *all* parameters (what LightningCLI's YAML ``optimizer:`` does) is fine: frozen
  parameters are taken out of its param groups and come back as their own group when unfrozen, so the head's
  learning rate is never touched;
- every LR scheduler is told about an added group (per-group lists such as ``base_lrs``, ``min_lrs`` and
  ``lr_lambdas`` are extended), so schedulers keep working (Lightning #8720);
- the freezing state is saved in checkpoints; a resumed run re-creates the same trainable set and param groups
  before the optimizer state is loaded;
- under DDP, parameters unfrozen after the model was wrapped are not known to DDP's gradient reducer
  (Lightning #20340); their gradients are averaged across processes here, so every rank keeps the same weights.

Hook order this relies on (Lightning 2.x ``Trainer._run``): ``setup`` → checkpoint ``load_state_dict`` →
strategy setup (DDP wrapping, ``configure_optimizers``) → ``on_fit_start`` (the summary prints here) → optimizer
and scheduler states restored. Freezing in ``setup`` makes the printed summary show the frozen layers whatever the
callbacks' order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional, Union

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from lightning_cnn.console import say
from lightning_cnn.models.backbones import load_backbone_weights

__all__ = ["FreezeBackbone"]

# Lightning's and fastai's usual choice: the pretrained layers learn 10x slower than the new head.
DEFAULT_BACKBONE_LR_RATIO = 0.1
# Scheduler attributes holding one entry per param group; the LR-valued ones are scaled for a new group.
_LR_LISTS = ("base_lrs", "_last_lr", "min_lrs", "max_lrs")
_OTHER_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")
# Param-group keys schedulers add (OneCycleLR, CyclicLR, every LRScheduler's initial_lr); LR-valued ones are scaled.
_LR_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr")


class FreezeBackbone(Callback):
    """Freeze the network's ``backbone`` for training; optionally unfreeze it at given epochs with a lower LR.

    Works with any network that follows :mod:`lightning_cnn.models`' contract (a ``backbone`` submodule, reached
    as ``pl_module.backbone`` or ``pl_module.net.backbone``).

    Args:
        unfreeze_at_epoch: ``None`` keeps the backbone frozen for the whole run. An epoch number unfreezes all of it
            when that epoch starts. A list of increasing epochs (milestones) unfreezes it gradually from the top:
            at the k-th of n milestones the last ``ceil(k / n · L)`` of the backbone's ``L`` layers are trainable.
            Each unfreeze adds one optimizer param group.
        backbone_lr: Learning rate of an unfrozen group; ``None`` uses ``backbone_lr_ratio``.
        backbone_lr_ratio: Without ``backbone_lr``, an unfrozen group's LR is this times the head's current LR.
        train_bn: Keep the backbone's BatchNorm layers trainable and in training mode while the rest is frozen
            (they then train with the head's LR). By default they are frozen and in eval mode, as in Keras.
        backbone_weights: Load the backbone from this file before training: a checkpoint of this project's
            classifier, a network's state dict, or the backbone's own state dict (loaded with
            ``weights_only=True``). A resumed run takes its weights from the resumed checkpoint instead.
        verbose: Print what is frozen and unfrozen.

    Raises:
        ValueError: On a negative or non-increasing ``unfreeze_at_epoch``, or non-positive LR settings.
    """

    def __init__(
        self,
        unfreeze_at_epoch: Union[int, list[int], None] = None,
        backbone_lr: Optional[float] = None,
        backbone_lr_ratio: float = DEFAULT_BACKBONE_LR_RATIO,
        train_bn: bool = False,
        backbone_weights: Optional[str] = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        milestones = [] if unfreeze_at_epoch is None else (
            [unfreeze_at_epoch] if isinstance(unfreeze_at_epoch, int) else list(unfreeze_at_epoch)
        )  # fmt: skip
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in milestones) or milestones != sorted(
            set(milestones)
        ):
            raise ValueError(
                f"unfreeze_at_epoch={unfreeze_at_epoch!r}; use null (stay frozen), an epoch >= 0, or a list of "
                "strictly increasing epochs."
            )
        if backbone_lr is not None and backbone_lr <= 0:
            raise ValueError(f"backbone_lr={backbone_lr}; use a positive learning rate, or null to use the ratio.")
        if backbone_lr_ratio <= 0:
            raise ValueError(f"backbone_lr_ratio={backbone_lr_ratio}; use a positive factor (e.g. 0.1).")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.milestones = milestones
        self.backbone_lr = backbone_lr
        self.backbone_lr_ratio = backbone_lr_ratio
        self.train_bn = train_bn
        self.backbone_weights = backbone_weights
        self.verbose = verbose

        #: How many milestones have been passed (0: fully frozen).
        self.stage = 0
        #: The learning rate each unfreeze gave its new param group, in order.
        self.backbone_lrs: list[float] = []
        self._backbone: Optional[nn.Module] = None
        # Parameters DDP's reducer averages (those trainable when the model was wrapped); None without DDP.
        self._ddp_registered: Optional[set[int]] = None

    # --- which parameters are frozen at a stage ---------------------------------------------------------------

    def _layers(self) -> list[nn.Module]:
        """The backbone's layers that hold parameters, in order: the units of gradual unfreezing."""
        assert self._backbone is not None  # set in setup; internal invariant, not user input
        layers = [m for m in self._backbone.children() if any(True for _ in m.parameters())]
        return layers or [self._backbone]

    def _frozen_layers(self, stage: int) -> list[nn.Module]:
        layers = self._layers()
        if stage == 0:
            return layers
        unfrozen = (
            len(layers) if stage >= len(self.milestones) else math.ceil(stage / len(self.milestones) * len(layers))
        )
        return layers[: len(layers) - unfrozen]

    def _frozen_params(self, stage: int) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        seen: set[int] = set()
        for layer in self._frozen_layers(stage):
            for module in layer.modules():
                if self.train_bn and isinstance(module, _BatchNorm):
                    continue
                for p in module.parameters(recurse=False):
                    if id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
        return params

    def _unfrozen_at(self, stage: int) -> list[nn.Parameter]:
        """The parameters that stage ``stage`` (>= 1) unfreezes: its param group."""
        still_frozen = {id(p) for p in self._frozen_params(stage)}
        return [p for p in self._frozen_params(stage - 1) if id(p) not in still_frozen]

    def trainable_after(self, pl_module: pl.LightningModule, stage: int) -> int:
        """How many of ``pl_module``'s parameters train once ``stage`` milestones are passed (0: fully frozen)."""
        assert self._backbone is not None  # set in setup; internal invariant, not user input
        backbone = {id(p) for p in self._backbone.parameters()}
        frozen = {id(p) for p in self._frozen_params(stage)}
        # A backbone parameter trains unless that stage leaves it frozen; any other keeps its own setting.
        trains = [(id(p) not in frozen) if id(p) in backbone else p.requires_grad for p in pl_module.parameters()]
        return sum(p.numel() for p, train in zip(pl_module.parameters(), trains) if train)

    def plan(self, pl_module: pl.LightningModule) -> list[str]:
        """One line per milestone: the epoch it unfreezes at and the trainable count from then on."""
        return [
            f"FreezeBackbone: at epoch {epoch} the backbone is unfrozen"
            f"{'' if stage == len(self.milestones) else ' in part'}: "
            f"{self.trainable_after(pl_module, stage):,} trainable parameters from then on."
            for stage, epoch in enumerate(self.milestones, start=1)
        ]

    def _frozen_batchnorms(self) -> list[_BatchNorm]:
        if self.train_bn:
            return []
        return [m for layer in self._frozen_layers(self.stage) for m in layer.modules() if isinstance(m, _BatchNorm)]

    # --- applying the state --------------------------------------------------------------------------------------

    def _apply_requires_grad(self) -> None:
        assert self._backbone is not None
        frozen = {id(p) for p in self._frozen_params(self.stage)}
        for p in self._backbone.parameters():
            p.requires_grad_(id(p) not in frozen)

    def _set_batchnorm_modes(self) -> None:
        """Frozen BatchNorm layers in eval mode (Lightning calls ``train()`` on the whole module every epoch)."""
        for bn in self._frozen_batchnorms():
            bn.eval()

    def _shape_optimizer(self, optimizer: Optimizer, trainer: pl.Trainer) -> None:
        """Make the param groups match the current stage: frozen and per-stage parameters out of the groups the
        optimizer was built with, then one group per passed milestone. On a resume this runs before Lightning
        loads the optimizer's saved state, which needs exactly these groups."""
        staged = [self._unfrozen_at(k) for k in range(1, self.stage + 1)]
        removed = {id(p) for p in self._frozen_params(self.stage)} | {id(p) for group in staged for p in group}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in removed]
        for p in [p for p in optimizer.state if id(p) in removed]:
            del optimizer.state[p]
        for params, lr in zip(staged, self.backbone_lrs):
            _add_param_group(optimizer, params, lr, trainer)

    def _unfreeze_next(self, trainer: pl.Trainer) -> None:
        optimizer = trainer.optimizers[0]
        self.stage += 1
        params = self._unfrozen_at(self.stage)
        head_lr = _reference_lr(optimizer.param_groups[0])
        lr = self.backbone_lr if self.backbone_lr is not None else self.backbone_lr_ratio * head_lr
        self.backbone_lrs.append(lr)
        self._apply_requires_grad()
        still_frozen = {id(bn) for bn in self._frozen_batchnorms()}
        for bn in (m for m in self._backbone.modules() if isinstance(m, _BatchNorm)):
            if id(bn) not in still_frozen:
                bn.train(trainer.lightning_module.training)
        _add_param_group(optimizer, params, lr, trainer)
        if self.verbose:
            trainable = sum(p.numel() for p in trainer.lightning_module.parameters() if p.requires_grad)
            say(
                f"FreezeBackbone: epoch {trainer.current_epoch}: unfroze {sum(p.numel() for p in params):,} backbone "
                f"parameters (milestone {self.stage}/{len(self.milestones)}), learning rate {lr:g}; "
                f"{trainable:,} trainable parameters now."
            )

    def _average_unregistered_grads(self) -> None:
        """Average across processes the gradients DDP's reducer does not know about (parameters unfrozen after
        the model was wrapped); one all-reduce over their flattened gradients."""
        assert self._backbone is not None and self._ddp_registered is not None
        grads = [
            p.grad
            for p in self._backbone.parameters()
            if p.requires_grad and p.grad is not None and id(p) not in self._ddp_registered
        ]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    # --- Lightning hooks (delegate) ----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._backbone = _find_backbone(pl_module)
        if self.backbone_weights:
            load_backbone_weights(self._backbone, self.backbone_weights)
        self._apply_requires_grad()
        if self.verbose:
            frozen = sum(p.numel() for p in self._frozen_params(self.stage))
            bn = "trainable" if self.train_bn else "frozen, in eval mode"
            source = f", weights from {self.backbone_weights}" if self.backbone_weights else ""
            say(f"FreezeBackbone: froze {frozen:,} backbone parameters (BatchNorm {bn}{source}).")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"FreezeBackbone supports one optimizer, the module configured {len(trainer.optimizers)}; "
                "return a single optimizer from configure_optimizers."
            )
        self._shape_optimizer(trainer.optimizers[0], trainer)
        if isinstance(trainer.strategy.model, DistributedDataParallel) and dist.is_initialized():
            self._ddp_registered = {id(p) for p in pl_module.parameters() if p.requires_grad}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pass_due_milestones(trainer)
        self._set_batchnorm_modes()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A run resumed from a step checkpoint restarts "mid-epoch" and skips on_train_epoch_start, also when the
        # checkpoint was written after an epoch's last batch: a milestone due now is passed here instead.
        self._pass_due_milestones(trainer)
        # Cheap, and robust to anything (validation, a user hook) having put the module back in train mode.
        self._set_batchnorm_modes()

    def _pass_due_milestones(self, trainer: pl.Trainer) -> None:
        while self.stage < len(self.milestones) and trainer.current_epoch >= self.milestones[self.stage]:
            self._unfreeze_next(trainer)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ddp_registered is not None and self.stage > 0:
            self._average_unregistered_grads()

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "backbone_lrs": list(self.backbone_lrs), "milestones": list(self.milestones)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stage = int(state_dict["stage"])
        if stage > len(self.milestones):
            raise ValueError(
                f"the checkpoint passed {stage} unfreeze milestones ({state_dict.get('milestones')}) but "
                f"unfreeze_at_epoch={self.unfreeze_at_epoch!r} has {len(self.milestones)}; resume with the same "
                "unfreeze_at_epoch."
            )
        self.stage = stage
        self.backbone_lrs = [float(lr) for lr in state_dict["backbone_lrs"]]
        # Lightning loads callback states after `setup` and before wrapping the model in DDP and building the
        # optimizer: applying the trainable set now lets both see the resumed one.
        if self._backbone is not None:
            self._apply_requires_grad()


def _find_backbone(pl_module: pl.LightningModule) -> nn.Module:
    for owner in (pl_module, getattr(pl_module, "net", None)):
        backbone = getattr(owner, "backbone", None)
        if isinstance(backbone, nn.Module):
            return backbone
    raise ValueError(
        f"FreezeBackbone needs a `backbone` submodule on the module or its `net`; {type(pl_module).__name__} has "
        "none. Use an architecture from lightning_cnn.models or give your network a `backbone` attribute."
    )


def _add_param_group(optimizer: Optimizer, params: Iterable[nn.Parameter], lr: float, trainer: pl.Trainer) -> None:
    """Add a param group at ``lr`` and extend every scheduler's per-group state to cover it.

    The new group follows the head group's (group 0's) schedule scaled by ``lr / head lr``: LR-valued entries
    (``base_lrs``, ``initial_lr``, ``max_lr``…) are scaled, others (``lr_lambdas``, momenta) copied.
    """
    head = optimizer.param_groups[0]
    head_lr = _reference_lr(head)
    ratio = lr / head_lr if head_lr > 0 else None

    def scaled(value: Any) -> Any:
        return value * ratio if ratio is not None else lr

    optimizer.add_param_group({"params": list(params), "lr": lr})
    group = optimizer.param_groups[-1]
    for key, value in head.items():
        if key not in group:
            group[key] = scaled(value) if key in _LR_GROUP_KEYS else value
    if ratio is None:
        group["initial_lr"] = lr
    for config in trainer.lr_scheduler_configs:
        _extend_scheduler(config.scheduler, len(optimizer.param_groups), scaled)


def _reference_lr(group: dict[str, Any]) -> float:
    """The head group's current LR, or its scheduled base LR while a warm-up holds it at zero."""
    lr = float(group["lr"])
    return lr if lr > 0 else float(group.get("initial_lr", 0.0))


def _extend_scheduler(scheduler: Any, groups: int, scaled: Any) -> None:
    for inner in getattr(scheduler, "_schedulers", ()):  # SequentialLR, ChainedScheduler
        _extend_scheduler(inner, groups, scaled)
    for name in _LR_LISTS + _OTHER_LISTS:
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and len(values) == groups - 1 and values:
            values.append(scaled(values[0]) if name in _LR_LISTS else values[0])
