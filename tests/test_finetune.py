"""FreezeBackbone: each of Lightning BackboneFinetuning's known failure modes, checked on a tiny BatchNorm CNN."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from lightning_cnn import ImageClassifier
from lightning_cnn.callbacks import FreezeBackbone, KerasModelSummary
from lightning_cnn.cli import CNNCLI
from lightning_cnn.data import CIFAR10DataModule
from lightning_cnn.models import ConvNet
from lightning_cnn.models.backbones import WeightsMismatchError
from tests.conftest import write_fake_cifar

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
NUM_CLASSES = 3
HEAD_LR = 0.01


class TinyData(pl.LightningDataModule):
    """64 random images; no shuffling, so an interrupted and an uninterrupted run see the same batches."""

    def __init__(self, n: int = 64, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, *SHAPE, generator=g) * 2 + 1  # not standardised: BN statistics move if allowed
        self.y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:16], self.y[:16]), batch_size=16)


def make_net() -> ConvNet:
    return ConvNet(
        1, NUM_CLASSES, SHAPE[1:], filters=(4, 8), kernel_size=3, padding="same", batch_norm=True, dense_units=(16,)
    )


class AllParamsAdam(ImageClassifier):
    """What LightningCLI's YAML ``optimizer:`` builds: one group over ``model.parameters()``, frozen ones included."""

    def __init__(self, scheduler: str = "none", **kwargs) -> None:
        super().__init__(**kwargs)
        self.scheduler = scheduler

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=HEAD_LR)
        schedulers = {
            "none": None,
            "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
            "lambda": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5**e),
            "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4),
            "exponential": lambda: torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.7),
            "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=HEAD_LR, total_steps=20),
            # A per-group min_lr list is exactly what raised on an added group (Lightning #8720).
            "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, min_lr=[0.0]),
        }
        if self.scheduler == "none":
            return optimizer
        config = {"scheduler": schedulers[self.scheduler](), "interval": "epoch", "monitor": "train/loss_epoch"}
        if self.scheduler == "onecycle":
            config["interval"] = "step"
        return {"optimizer": optimizer, "lr_scheduler": config}


def make_module(scheduler: str = "none") -> AllParamsAdam:
    torch.manual_seed(0)
    return AllParamsAdam(scheduler=scheduler, net=make_net(), num_classes=NUM_CLASSES, input_shape=SHAPE)


def make_trainer(tmp_path: Path, max_epochs: int, callbacks: list, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class BatchModeProbe(pl.Callback):
    """Records, right before each training forward, whether the backbone's BatchNorm layers are in train mode."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        bns = [m for m in pl_module.net.backbone.modules() if isinstance(m, _BatchNorm)]
        self.modes += [bn.training for bn in bns]


def test_frozen_backbone_and_its_batchnorm_do_not_change(tmp_path):
    module = make_module()
    before = snapshot(module.net.backbone)
    head_before = snapshot(module.net.head)
    probe = BatchModeProbe()  # after FreezeBackbone in the list: sees the mode the forward pass will run in
    make_trainer(tmp_path, 2, [FreezeBackbone(verbose=False), probe]).fit(module, datamodule=TinyData())

    after = module.net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen weights or BN running stats changed"
    assert probe.modes and not any(probe.modes), "a frozen BatchNorm ran in training mode"
    assert any(not torch.equal(head_before[k], v) for k, v in module.net.head.state_dict().items())


def test_train_bn_keeps_batchnorm_learning(tmp_path):
    module = make_module()
    bn = module.net.backbone.bn1
    mean_before, weight_before = bn.running_mean.clone(), bn.weight.detach().clone()
    conv_before = module.net.backbone.conv1.layer.weight.detach().clone()
    probe = BatchModeProbe()
    make_trainer(tmp_path, 1, [FreezeBackbone(train_bn=True, verbose=False), probe]).fit(module, datamodule=TinyData())
    assert all(probe.modes)
    assert not torch.equal(bn.running_mean, mean_before) and not torch.equal(bn.weight.detach(), weight_before)
    assert torch.equal(module.net.backbone.conv1.layer.weight, conv_before)


def test_optimizer_over_all_params_keeps_head_lr_and_adds_backbone_group(tmp_path):
    module = make_module()
    backbone_ids = {id(p) for p in module.net.backbone.parameters()}
    before = snapshot(module.net.backbone)

    class AtEpochEnd(pl.Callback):
        def __init__(self) -> None:
            self.groups: list[list[tuple[float, set[int]]]] = []
            self.backbone_changed: list[bool] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            opt = trainer.optimizers[0]
            self.groups.append([(g["lr"], {id(p) for p in g["params"]}) for g in opt.param_groups])
            now = pl_module.net.backbone.state_dict()
            self.backbone_changed.append(any(not torch.equal(before[k], now[k]) for k in before))

    probe = AtEpochEnd()
    callback = FreezeBackbone(unfreeze_at_epoch=2, backbone_lr_ratio=0.1, verbose=False)
    make_trainer(tmp_path, 3, [callback, probe]).fit(module, datamodule=TinyData())

    # Frozen epochs: one group, the head's, without any backbone parameter; the backbone never moved.
    for groups in probe.groups[:2]:
        assert len(groups) == 1
        lr, ids = groups[0]
        assert lr == HEAD_LR and not ids & backbone_ids
    assert probe.backbone_changed[:2] == [False, False]
    # After the unfreeze: the head keeps its LR, the backbone has its own group at ratio x head LR, and trains.
    (head_lr, head_ids), (bb_lr, bb_ids) = probe.groups[2]
    assert head_lr == HEAD_LR and bb_lr == pytest.approx(0.1 * HEAD_LR)
    assert bb_ids == backbone_ids and not head_ids & backbone_ids
    assert probe.backbone_changed[2]
    assert all(p.requires_grad for p in module.net.parameters())


def test_absolute_backbone_lr_and_gradual_milestones(tmp_path):
    module = make_module()
    backbone = module.net.backbone
    callback = FreezeBackbone(unfreeze_at_epoch=[1, 2], backbone_lr=1e-4, verbose=False)
    seen = []

    class Probe(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            seen.append((backbone.conv1.layer.weight.requires_grad, backbone.conv2.layer.weight.requires_grad))

    make_trainer(tmp_path, 3, [callback, Probe()]).fit(module, datamodule=TinyData())
    # Layers with parameters: conv1, bn1, conv2, bn2; the top half first, then the rest.
    assert seen == [(False, False), (False, True), (True, True)]
    assert [g["lr"] for g in module.trainer.optimizers[0].param_groups] == [HEAD_LR, 1e-4, 1e-4]
    assert callback.backbone_lrs == [1e-4, 1e-4]


@pytest.mark.parametrize("scheduler", ["step", "lambda", "cosine", "exponential", "onecycle", "plateau"])
def test_schedulers_keep_working_after_the_backbone_group_is_added(tmp_path, scheduler):
    module = make_module(scheduler)
    make_trainer(tmp_path, 3, [FreezeBackbone(unfreeze_at_epoch=1, backbone_lr_ratio=0.1, verbose=False)]).fit(
        module, datamodule=TinyData()
    )
    optimizer = module.trainer.optimizers[0]
    head, backbone = optimizer.param_groups
    # The backbone group follows the head's schedule at a tenth of it, and was actually scheduled (it moved).
    assert backbone["lr"] == pytest.approx(0.1 * head["lr"], rel=1e-6)
    sched = module.trainer.lr_scheduler_configs[0].scheduler
    assert len(sched._last_lr) == 2
    if scheduler != "plateau":
        assert len(sched.base_lrs) == 2


def _fit_with_checkpoints(tmp_path: Path, epochs: int, ckpt_path=None, unfreeze: int = 2):
    module = make_module("step")
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    callback = FreezeBackbone(unfreeze_at_epoch=unfreeze, verbose=False)
    trainer = make_trainer(tmp_path, epochs, [callback, saver], enable_checkpointing=True)
    trainer.fit(module, datamodule=TinyData(), ckpt_path=ckpt_path)
    return module, trainer, callback


def _groups(trainer: pl.Trainer) -> list[tuple[float, list[str]]]:
    names = {id(p): n for n, p in trainer.lightning_module.named_parameters()}
    return [(g["lr"], [names[id(p)] for p in g["params"]]) for g in trainer.optimizers[0].param_groups]


@pytest.mark.parametrize("resume_after_epoch", [0, 2], ids=["before-unfreeze", "after-unfreeze"])
def test_resume_mid_finetune_continues_exactly(tmp_path, resume_after_epoch):
    full, full_trainer, _ = _fit_with_checkpoints(tmp_path / "full", 4)
    ckpt = tmp_path / "full" / "ckpt" / f"epoch={resume_after_epoch}.ckpt"
    resumed, resumed_trainer, callback = _fit_with_checkpoints(tmp_path / "resumed", 4, ckpt_path=str(ckpt))

    assert callback.stage == 1
    assert _groups(resumed_trainer) == _groups(full_trainer)
    assert [p.requires_grad for p in resumed.parameters()] == [p.requires_grad for p in full.parameters()]
    reference = full.state_dict()
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, reference[key], msg=f"{key} differs after resuming")


def test_resume_with_a_different_schedule_is_refused():
    callback = FreezeBackbone(unfreeze_at_epoch=None)
    with pytest.raises(ValueError, match="resume with the same unfreeze_at_epoch"):
        callback.load_state_dict({"stage": 1, "backbone_lrs": [0.001], "milestones": [2]})


def test_summary_printed_at_fit_start_shows_the_frozen_backbone(tmp_path, capsys):
    module = make_module()
    # The summary is listed first: freezing must already have happened when it prints.
    callbacks = [KerasModelSummary(), FreezeBackbone(verbose=False)]
    make_trainer(tmp_path, 1, callbacks, limit_train_batches=1, limit_val_batches=1).fit(module, datamodule=TinyData())
    table = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[-1]
        for line in table.splitlines()
        if line.startswith(("conv", "bn", "dense", "output"))
    }
    assert rows["conv1"] == rows["bn1"] == rows["conv2"] == rows["bn2"] == "no"
    assert rows["dense1"] == rows["output"] == "yes"
    assert "Non-trainable params: 0" not in table


def test_backbone_weights_are_loaded_from_a_checkpoint_file(tmp_path):
    donor = make_net()
    for p in donor.parameters():
        torch.nn.init.constant_(p, 0.5)
    path = tmp_path / "pretrained.pt"
    torch.save(donor.state_dict(), path)
    module = make_module()
    make_trainer(tmp_path, 1, [FreezeBackbone(backbone_weights=str(path), verbose=False)], limit_train_batches=2).fit(
        module, datamodule=TinyData()
    )
    for key, value in donor.backbone.state_dict().items():
        assert torch.equal(module.net.backbone.state_dict()[key], value)


def test_backbone_weights_of_another_architecture_are_refused(tmp_path):
    other = ConvNet(1, NUM_CLASSES, SHAPE[1:], filters=(4, 8, 16), kernel_size=3, padding="same")
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    callback = FreezeBackbone(backbone_weights=str(path), verbose=False)
    with pytest.raises(WeightsMismatchError, match=r"conv3\.layer\.weight"):
        make_trainer(tmp_path, 1, [callback]).fit(make_module(), datamodule=TinyData())


@pytest.mark.parametrize(
    "kwargs",
    [{"unfreeze_at_epoch": -1}, {"unfreeze_at_epoch": [3, 1]}, {"backbone_lr": 0.0}, {"backbone_lr_ratio": -1}],
)
def test_bad_settings_fail_with_the_value(kwargs):
    with pytest.raises(ValueError, match=str(next(iter(kwargs)))):
        FreezeBackbone(**kwargs)


def test_network_without_backbone_is_refused(tmp_path):
    module = ImageClassifier(net=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), num_classes=3)
    with pytest.raises(ValueError, match="needs a `backbone` submodule"):
        make_trainer(tmp_path, 1, [FreezeBackbone()]).fit(module, datamodule=TinyData())


DDP_SCRIPT = """
import sys, torch, pytorch_lightning as pl
sys.path.insert(0, {tests!r})
from test_finetune import TinyData, make_module
from lightning_cnn.callbacks import FreezeBackbone

out = sys.argv[1]
module = make_module()
trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    callbacks=[FreezeBackbone(unfreeze_at_epoch=1, verbose=False)],
)
trainer.fit(module, datamodule=TinyData(n=128))
torch.save({{"state": module.state_dict()}}, f"{{out}}/rank{{trainer.global_rank}}.pt")
"""


@pytest.mark.multiprocess
def test_ddp_freeze_and_unfreeze_keep_ranks_identical(tmp_path):
    script = tmp_path / "ddp_finetune.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(REPO_ROOT / "tests"))))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=900,  # generous: only a hung process group should hit it
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process DDP run did not finish within 180 s")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    initial = make_module()
    # Parameters only: BN running statistics are buffers that DDP re-broadcasts from rank 0 before every forward,
    # so after the last step each rank legitimately holds the statistics of its own last batch.
    for key, _ in initial.named_parameters():
        torch.testing.assert_close(rank1["state"][key], rank0["state"][key], rtol=0, atol=0, msg=f"{key} differs")
    # The backbone did train after the unfreeze, so the equality above is about updated weights.
    key = "net.backbone.conv1.layer.weight"
    assert not torch.equal(rank0["state"][key], initial.state_dict()[key])


# --- the shipped VGG16 fine-tune config, offline ------------------------------------------------------------------

VGG16_CONFIG = REPO_ROOT / "configs" / "vgg16_finetune_cifar10.yaml"
SMOKE = ["--trainer", str(REPO_ROOT / "configs" / "trainer" / "smoke.yaml")]


def _cifar_args(root: Path) -> list[str]:
    folder = write_fake_cifar(root / "cifar10", 10)
    # 32x32: VGG16's smallest input keeps the run to seconds; the config itself uses the weights' 224.
    return [
        "--data.init_args.data_dir",
        str(folder),
        "--data.init_args.download",
        "false",
        "--data.init_args.image_size",
        "32",
    ]


def test_vgg16_config_runs_offline_without_weights(in_tmp, capsys):
    args = ["fit", "--config", str(VGG16_CONFIG), *SMOKE, *_cifar_args(in_tmp)]
    cli = CNNCLI(args=args + ["--model.init_args.net.init_args.weights", "none"])
    assert cli.trainer.state.finished
    out = capsys.readouterr().out
    assert "Trainable params: 535,562" in out and "Non-trainable params: 14,714,688" in out
    assert "test/acc" in out  # test_after_fit: the slides' final accuracy
    # The YAML optimizer was built over all parameters; the frozen VGG16 part is not in it.
    params = cli.trainer.optimizers[0].param_groups[0]["params"]
    assert {id(p) for p in params} == {id(p) for p in cli.model.net.head.parameters()}
    # Without pretrained weights there is no weights' preprocessing to follow: CIFAR-10's own statistics apply.
    assert cli.datamodule.normalize_from_weights is None
    assert cli.datamodule.train_set.mean.flatten().tolist() == pytest.approx(list(CIFAR10DataModule.mean))


def test_vgg16_config_with_a_local_weights_file(in_tmp):
    from torchvision.models import get_model

    # A smaller architecture of the same config keeps the file small (VGG16's is 528 MB).
    torch.manual_seed(3)
    state = get_model("mobilenet_v3_small", weights=None).state_dict()
    torch.save(state, in_tmp / "mobilenet_v3_small.pth")
    net_args = ["--model.init_args.net.init_args.arch", "mobilenet_v3_small", "--model.init_args.net.init_args.weights",
                str(in_tmp / "mobilenet_v3_small.pth")]  # fmt: skip
    cli = CNNCLI(args=["fit", "--config", str(VGG16_CONFIG), *SMOKE, *_cifar_args(in_tmp), *net_args])
    backbone = cli.model.net.backbone
    # Frozen during the run: still exactly the file's weights (BatchNorm statistics included).
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key


def test_resume_from_a_step_checkpoint_at_an_epoch_boundary_still_unfreezes(tmp_path):
    # A step checkpoint written after an epoch's last batch: Lightning resumes it as a mid-epoch restart and skips
    # on_train_epoch_start of the next epoch, where the unfreeze milestone falls.
    def fit(folder: Path, ckpt_path=None):
        module = make_module("step")
        saver = pl.callbacks.ModelCheckpoint(
            dirpath=folder, every_n_train_steps=4, save_top_k=-1, filename="step{step}", auto_insert_metric_name=False
        )
        callback, probe = FreezeBackbone(unfreeze_at_epoch=2, verbose=False), BatchModeProbe()
        trainer = make_trainer(folder, 4, [callback, saver, probe], enable_checkpointing=True)
        trainer.fit(module, datamodule=TinyData(), ckpt_path=ckpt_path)
        return module, trainer, probe

    full, full_trainer, full_probe = fit(tmp_path / "full")
    resumed, resumed_trainer, probe = fit(tmp_path / "resumed", str(tmp_path / "full" / "step8.ckpt"))
    assert _groups(resumed_trainer) == _groups(full_trainer)
    assert probe.modes == full_probe.modes[-len(probe.modes) :], "BatchNorm modes after resuming differ"
    reference = full.state_dict()
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, reference[key], msg=f"{key} differs after resuming")


def test_learning_curves_follow_each_param_groups_learning_rate(tmp_path):
    from lightning_cnn.callbacks import TrainingPlots

    plots = TrainingPlots()
    trainer = make_trainer(tmp_path, 3, [FreezeBackbone(unfreeze_at_epoch=1, verbose=False), plots])
    trainer.fit(make_module(), datamodule=TinyData())
    assert plots.history["lr/group 0"] == [(0, HEAD_LR), (1, HEAD_LR), (2, HEAD_LR)]
    assert plots.history["lr/group 1"] == [(1, pytest.approx(HEAD_LR * 0.1)), (2, pytest.approx(HEAD_LR * 0.1))]


def test_fine_tuning_configs_log_every_groups_learning_rate():
    configs = [p for p in (REPO_ROOT / "configs").rglob("*.yaml") if "FreezeBackbone" in p.read_text()]
    assert len(configs) >= 2
    for path in configs:
        assert "pytorch_lightning.callbacks.LearningRateMonitor" in path.read_text(), path.name


def test_cli_summary_counts_the_frozen_backbone_as_keras_does(in_tmp, capsys):
    """The slides' VGG16 after `trainable = False`: Keras' oracle (shared notes) counts VGG16(include_top=False),
    14,714,688 parameters, as non-trainable; the summary subcommand freezes as fit does before printing."""
    from lightning_cnn.cli import main

    config = str(REPO_ROOT / "configs" / "vgg16_finetune_cifar10.yaml")
    offline = ["--model.init_args.net.init_args.weights", "none"]  # the counts do not depend on the weights
    main(["summary", "--config", config, *offline])
    out = capsys.readouterr().out
    assert "Total params: 15,250,250" in out and "Trainable params: 535,562" in out
    assert "Non-trainable params: 14,714,688" in out
    main(["summary", "--config", config, *offline, "--trainer.callbacks.init_args.unfreeze_at_epoch", "5"])
    assert "at epoch 5 the backbone is unfrozen: 15,250,250 trainable parameters" in capsys.readouterr().out
