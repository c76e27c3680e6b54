"""Resume and checkpoints: a run stopped at a given step — by SIGKILL in a process of its own, or by an exception
(as a kill stops it: no checkpoint is written on the way out) — and resumed with ``--ckpt_path last`` ends with exactly the weights of
the uninterrupted run; ``last.ckpt`` is always the newest state; "best" means one thing for the checkpoint and for
EarlyStopping. The same through a real SIGKILL and several processes: ``test_fault_tolerance.py``."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Optional

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lightning_cnn.cli import CNNCLI
from tests.conftest import write_fake_mnist
from tests.test_ddp import N_TEST, N_TRAIN, N_VAL, assert_same_weights, write_experiment

STEPS_PER_EPOCH = 10  # N_TRAIN / global batch 32


class Killed(Exception):
    """Stands for a SIGKILL: raised out of the training loop, so nothing is saved on the way out."""


class KillAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


class SigkillAtStep(pl.Callback):
    """SIGKILL this process when training reaches ``step``: nothing runs on the way out, as with the OOM killer."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class ScriptedMetric(pl.Callback):
    """Logs ``scripted`` = ``values[epoch]`` at each validation: a monitored value whose course the test decides."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            pl_module.log("scripted", self.values[trainer.current_epoch])


class FinalWeights(pl.Callback):
    """The weights when training ends, before anything restores others."""

    def on_train_end(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _callback(cls: type, **init_args) -> dict:
    return {"class_path": f"tests.test_resume.{cls.__name__}", "init_args": init_args}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=N_TRAIN + N_VAL, n_test=N_TEST)


def fit(folder: Path, monkeypatch, data_dir: Path, *args: str, callbacks: Optional[list] = None,
        augmentation: Optional[dict] = None, max_epochs: int = 3, workers: int = 0) -> CNNCLI:  # fmt: skip
    """``cli.py fit`` in ``folder`` on the tiny experiment of test_ddp (LeNet with dropout, so the random
    generators' states matter)."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    config = write_experiment(folder, data_dir, max_epochs=max_epochs, dense_dropout=0.3, callbacks=callbacks)
    document = yaml.safe_load(config.read_text())
    document["test_after_fit"] = False
    document["data"]["init_args"]["num_workers"] = workers
    if augmentation:
        document["data"]["init_args"]["augmentation"] = augmentation
    config.write_text(yaml.safe_dump(document))
    return CNNCLI(args=["fit", "--config", str(config), *args])


def last_checkpoint(folder: Path, version: int = 0) -> dict:
    return torch.load(folder / "runs" / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=True)


def _fit_in_child(folder: Path, data_dir: Path, args: list[str], **kwargs) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fit(folder, monkeypatch, data_dir, *args, **kwargs)


def kill_and_resume(tmp_path, monkeypatch, data_dir, kill_at: int, *args: str, sigkill: bool = False,
                    **kwargs) -> CNNCLI:  # fmt: skip
    """Stop a run at step ``kill_at`` — by an exception, or (``sigkill``) by SIGKILL in a process of its own, loader
    workers included — then resume it here with ``--ckpt_path last``."""
    if sigkill:
        killer = [_callback(SigkillAtStep, step=kill_at)]
        # A fresh interpreter (spawn): forking this process, which has run torch and loader workers, can hang.
        child = multiprocessing.get_context("spawn").Process(
            target=_fit_in_child, args=(tmp_path, data_dir, list(args)), kwargs=dict(callbacks=killer, **kwargs)
        )
        child.start()
        child.join()
        assert child.exitcode == -signal.SIGKILL
    else:
        with pytest.raises(Killed):
            fit(tmp_path, monkeypatch, data_dir, *args, callbacks=[_callback(KillAtStep, step=kill_at)], **kwargs)
    return fit(tmp_path, monkeypatch, data_dir, *args, "--ckpt_path", "last", **kwargs)


def test_resume_with_limit_train_batches_reads_the_next_epochs_batches(tmp_path, monkeypatch, data_dir):
    # Three batches per epoch; last.ckpt is only the step checkpoint, written after the last batch of epoch 0
    # (Lightning then resumes "mid-epoch"); the kill is in epoch 1.
    args = ["--trainer.limit_train_batches", "3", "--resume_checkpoint.every_n_train_steps", "3", "--checkpoint.save_last",
            "false"]  # fmt: skip
    reference = fit(tmp_path / "full", monkeypatch, data_dir, *args)
    resumed = kill_and_resume(tmp_path / "killed", monkeypatch, data_dir, 4, *args)
    assert resumed.trainer.global_step == reference.trainer.global_step == 9
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


@pytest.mark.parametrize("mode", ["batched", "per_sample"])
def test_resume_mid_epoch_with_augmentation_is_exact(tmp_path, monkeypatch, data_dir, mode):
    augmentation = {
        "class_path": "lightning_cnn.augmentation.KerasAugmentation",
        "init_args": {"rotation_range": 20, "zoom_range": 0.15, "width_shift_range": 0.1, "mode": mode},
    }
    # Per sample: in two worker processes, kept between epochs (the default), so the workers' order differs
    # between the two runs.
    options = dict(augmentation=augmentation, max_epochs=2, workers=2 if mode == "per_sample" else 0)
    args = ["--resume_checkpoint.every_n_train_steps", "3"]
    reference = fit(tmp_path / "full", monkeypatch, data_dir, *args, **options)
    # SIGKILLed at epoch 1, batch 4 (two steps after the step-12 checkpoint).
    resumed = kill_and_resume(tmp_path / "killed", monkeypatch, data_dir, 14, *args, sigkill=True, **options)
    assert resumed.trainer.global_step == reference.trainer.global_step == 2 * STEPS_PER_EPOCH
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


def test_last_ckpt_is_the_newest_state_after_an_epoch_that_did_not_improve(tmp_path, monkeypatch, data_dir):
    # Monitoring the epoch number in min mode: only epoch 0 is ever "best". Killed as epoch 2 starts, the run's
    # last.ckpt must hold the end of epoch 1, not of epoch 0.
    with pytest.raises(Killed):
        fit(tmp_path, monkeypatch, data_dir, "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min",
            callbacks=[_callback(KillAtStep, step=2 * STEPS_PER_EPOCH)])  # fmt: skip
    folder = tmp_path / "runs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best-epoch00.ckpt", "last.ckpt"]
    assert last_checkpoint(tmp_path)["global_step"] == 2 * STEPS_PER_EPOCH


def test_best_means_one_thing_and_last_stays_the_final_state(tmp_path, monkeypatch, data_dir):
    # With min_delta 0.08, epoch 2 (0.90 < 1.0 - 0.08) is the last real improvement; epoch 3's 0.89 is not one.
    values = [1.0, 0.95, 0.90, 0.89]
    stopper = {
        "class_path": "lightning_cnn.callbacks.EarlyStopping",
        "init_args": {"monitor": "scripted", "min_delta": 0.08, "patience": 10, "restore_best_weights": True},
    }
    cli = fit(tmp_path, monkeypatch, data_dir, "--checkpoint.monitor", "scripted", max_epochs=4,
              callbacks=[_callback(ScriptedMetric, values=values), stopper, _callback(FinalWeights)])  # fmt: skip
    folder = tmp_path / "runs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best-epoch02.ckpt", "last.ckpt"]
    best = torch.load(folder / "best-epoch02.ckpt", weights_only=True)
    assert_same_weights(cli.model.state_dict(), best["state_dict"])  # restored = the best checkpoint's weights

    final = next(c for c in cli.trainer.callbacks if isinstance(c, FinalWeights)).state
    last = last_checkpoint(tmp_path)
    assert (last["epoch"], last["global_step"]) == (4, 4 * STEPS_PER_EPOCH)  # epochs completed
    assert_same_weights(last["state_dict"], final)  # the final weights, matching its optimizer and counters
    assert any(not torch.equal(final[k], best["state_dict"][k]) for k in final)
