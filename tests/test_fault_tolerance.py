"""Fault tolerance through ``cli.py``: SIGKILL mid-epoch + ``--ckpt_path last`` gives the uninterrupted run's
model and metrics; SIGUSR1 under SLURM saves a checkpoint, requeues, and the next job resumes from it; no run
overwrites another's files."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from tests.conftest import REPO_ROOT, write_fake_mnist
from tests.test_ddp import (
    N_TEST,
    N_TRAIN,
    N_VAL,
    RUN_TIMEOUT_S,
    assert_same_weights,
    cli_command,
    cli_env,
    final_weights,
    run_cli,
    write_experiment,
)

# Several processes each: skipped by `make test-fast`.
pytestmark = pytest.mark.multiprocess

STEPS_PER_EPOCH = 10  # N_TRAIN / global batch 32
KILL_AT_STEP = 14  # epoch 1, batch 4: mid-epoch, two steps after the last step checkpoint (step 12)


class SigkillAtStep(pl.Callback):
    """SIGKILL this process when training reaches ``step`` (no cleanup runs, as with the OOM killer)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAtStep(pl.Callback):
    """At the end of step ``step``, create ``ready`` and wait (up to a minute) — the moment a signal is sent."""

    def __init__(self, step: int, ready: str) -> None:
        self.step, self.ready = step, ready

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.ready).touch()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.05)


def _callback(cls: type, **init_args) -> dict:
    return {"class_path": f"tests.test_fault_tolerance.{cls.__name__}", "init_args": init_args}


def _metrics(run_dir: Path, version: int) -> dict[str, float]:
    """The last logged value of every val/ and test/ metric in a run's metrics.csv."""
    out: dict[str, float] = {}
    with open(run_dir / "runs" / f"version_{version}" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if v and k.startswith(("val/", "test/"))})
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=N_TRAIN + N_VAL, n_test=N_TEST)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The reference: 2 epochs, dropout on (so the random generators' states matter), never interrupted."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_cli(run_dir, "fit", "--config", str(write_experiment(run_dir, data_dir, dense_dropout=0.3)))
    return run_dir


def test_sigkill_mid_epoch_then_resume_last_equals_uninterrupted_run(uninterrupted, data_dir, tmp_path):
    killed = write_experiment(
        tmp_path, data_dir, dense_dropout=0.3, callbacks=[_callback(SigkillAtStep, step=KILL_AT_STEP)]
    )
    step_ckpt = ["--resume_checkpoint.every_n_train_steps", "3"]
    result = subprocess.run(
        cli_command("fit", "--config", str(killed), *step_ckpt),
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    first_run = _snapshot(tmp_path / "runs" / "version_0")
    assert "checkpoints/last.ckpt" in first_run

    # The same command with --ckpt_path last (without the kill): a new version folder, resumed from version_0's
    # step-12 checkpoint, mid-epoch 1.
    resumed = write_experiment(tmp_path, data_dir, dense_dropout=0.3)
    output = run_cli(tmp_path, "fit", "--config", str(resumed), *step_ckpt, "--ckpt_path", "last")
    assert "version_0/checkpoints/last.ckpt" in output  # Lightning's "Restoring states from ..." line
    assert "not resumable" not in output  # Lightning's warning for loaders it cannot resume mid-epoch

    assert_same_weights(final_weights(tmp_path, version=1), final_weights(uninterrupted))  # bit for bit
    reference = _metrics(uninterrupted, 0)
    assert {"val/loss", "val/acc", "test/loss", "test/acc"} <= reference.keys()
    assert _metrics(tmp_path, 1) == {k: pytest.approx(v, rel=1e-6) for k, v in reference.items()}

    # Nothing of the first run was overwritten; the second run has its own config and checkpoints.
    assert _snapshot(tmp_path / "runs" / "version_0") == first_run
    assert (tmp_path / "runs" / "version_1" / "config.yaml").is_file()
    assert (tmp_path / "runs" / "version_1" / "checkpoints" / "last.ckpt").is_file()


def test_ckpt_path_last_without_checkpoints_starts_fresh(data_dir, tmp_path):
    config = write_experiment(tmp_path, data_dir, max_epochs=1)
    output = run_cli(
        tmp_path, "fit", "--config", str(config), "--ckpt_path", "last", "--trainer.limit_train_batches", "2"
    )
    assert "Restored all states" not in output  # a fresh start, not an error
    assert (tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def _fake_slurm(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """SLURM's environment for a 1-task job, and an `scontrol` on PATH that records its arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = cli_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="train",
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NODELIST="localhost",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
    )
    return env, log


def test_sigusr1_under_slurm_saves_requeues_and_the_next_job_resumes(uninterrupted, data_dir, tmp_path):
    env, scontrol_log = _fake_slurm(tmp_path)
    job_dir = tmp_path / "slurm-4242"  # what slurm/train.sbatch passes as default_root_dir
    ready = tmp_path / "ready"
    paused = write_experiment(
        tmp_path, data_dir, dense_dropout=0.3, callbacks=[_callback(PauseAtStep, step=7, ready=str(ready))]
    )
    args = ["--trainer.default_root_dir", str(job_dir)]
    job = subprocess.Popen(
        cli_command("fit", "--config", str(paused), *args),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not ready.exists():
            assert job.poll() is None and time.monotonic() < deadline, "the job ended or hung before step 7"
            time.sleep(0.1)
        job.send_signal(signal.SIGUSR1)  # SLURM's warning, 90 s before the time limit (--signal=USR1@90)
        while not scontrol_log.exists():
            assert job.poll() is None and time.monotonic() < deadline, "SIGUSR1 did not lead to a requeue"
            time.sleep(0.1)
    finally:
        job.kill()  # SLURM ends the job at its time limit
        output = job.communicate(timeout=120)[0]
    assert scontrol_log.read_text().split() == ["requeue", "4242"], output[-3000:]
    assert [p.name for p in job_dir.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]

    # The requeued job: same job id, same command; Lightning finds the pre-emption checkpoint by itself.
    plain = write_experiment(tmp_path, data_dir, dense_dropout=0.3)
    output = run_cli(tmp_path, "fit", "--config", str(plain), *args, env=env)
    assert "hpc_ckpt_1.ckpt" in output
    assert_same_weights(final_weights(tmp_path, version=1), final_weights(uninterrupted))


def test_the_sbatch_script_starts_fresh_then_resumes_its_own_job_after_a_requeue(data_dir, tmp_path):
    env, _ = _fake_slurm(tmp_path)
    bin_dir = tmp_path / "bin"
    srun_log = tmp_path / "srun.log"
    srun = bin_dir / "srun"  # runs the one task here, recording what each task would be given
    srun.write_text(f'#!/bin/sh\necho "cpus=$SRUN_CPUS_PER_TASK" >> {srun_log}\nexec "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    activate = tmp_path / "activate"  # the environment the script activates: this test's Python first on PATH
    activate.write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    env.update(SLURM_JOB_NUM_NODES="1", SLURM_CPUS_PER_TASK="2", SLURM_SUBMIT_DIR=str(tmp_path),
               LIGHTNING_CNN_DIR=str(REPO_ROOT), ENV_ACTIVATE=str(activate))  # fmt: skip
    config = write_experiment(tmp_path, data_dir, max_epochs=1)
    cpu = ["--trainer.accelerator", "cpu", "--trainer.sync_batchnorm", "false"]

    def sbatch(job_id: str, *extra: str) -> str:
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "slurm" / "train.sbatch"), str(config), *cpu, *extra],
            cwd=tmp_path, env={**env, "SLURM_JOB_ID": job_id}, capture_output=True, text=True,
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-6000:]
        return result.stdout + result.stderr

    first = sbatch("4242")
    assert "Restored all states" not in first  # (testing the best checkpoint after fit only loads weights)
    job_dir = tmp_path / "runs" / "experiment" / "slurm-4242"
    assert (job_dir / "checkpoints" / "last.ckpt").is_file()
    assert srun_log.read_text().split() == ["cpus=2"]

    # The same job requeued (after a crash, say) with a longer budget: it resumes from its own folder.
    requeued = sbatch("4242", "--trainer.max_epochs", "2")
    assert f"Restoring states from the checkpoint path at {job_dir / 'checkpoints' / 'last.ckpt'}" in requeued
    # Another job of the same experiment picks up neither job 4242's checkpoints nor a newer one of a run
    # outside SLURM in the experiment's log folder.
    outside = tmp_path / "runs" / "version_9" / "checkpoints"
    outside.mkdir(parents=True)
    shutil.copy(job_dir / "checkpoints" / "last.ckpt", outside / "last.ckpt")
    other = sbatch("4343")
    assert "Restored all states" not in other
