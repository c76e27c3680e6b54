"""DDP on CPU (gloo, 2 processes) through ``cli.py``: the same model as one process with the same global batch,
one set of files, metrics that agree across ranks, and a 2-"node" run over loopback with torchrun.

Every run is a subprocess with a timeout, so a hung process group fails the test instead of blocking CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lightning_cnn.data import MNISTDataModule
from lightning_cnn.data.sampling import ResumableShuffleSampler
from tests.conftest import CONFIGS, REPO_ROOT, write_fake_mnist

# Several processes each: skipped by `make test-fast`.
pytestmark = pytest.mark.multiprocess

# Tiny data: 320 training images = 10 steps of a global batch of 32; 64 validation and 64 test images, both
# multiples of the world size, so DDP's DistributedSampler pads nothing and metrics match one process exactly.
N_TRAIN, N_VAL, N_TEST, GLOBAL_BATCH = 320, 64, 64, 32
# One CLI run takes ~10-30 s on 2 idle cores, several times that on a loaded machine: the limit only catches a
# process group that hangs, so it is generous.
RUN_TIMEOUT_S = 900


class RankProbe(pl.Callback):
    """Each rank writes what it saw to ``<out_dir>/rank<r>.json``: validation set digest, weight digest, metrics."""

    def __init__(self, out_dir: str = ".") -> None:
        self.out_dir = out_dir
        self.record: dict[str, Any] = {}

    def _write(self, trainer: pl.Trainer) -> None:
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record, sort_keys=True))

    def _metrics(self, trainer: pl.Trainer, prefix: str) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        val_set = trainer.datamodule.val_set
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        self.record.update(
            world_size=trainer.world_size,
            log_version=[logger.version for logger in trainer.loggers],
            val_digest=hashlib.sha256(val_set.images.numpy().tobytes() + val_set.labels.numpy().tobytes()).hexdigest(),
            weight_digest=hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
            val=self._metrics(trainer, "val/"),
        )
        self._write(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["test"] = self._metrics(trainer, "test/")
        self.record["test_confusion"] = pl_module.confusion_matrices["test"].tolist()
        self._write(trainer)


class LearningRateProbe(pl.Callback):
    """Each rank writes the learning rate of every training batch to ``<out_dir>/lr_rank<r>.json``."""

    def __init__(self, out_dir: str = ".") -> None:
        self.out_dir = out_dir
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = Path(self.out_dir) / f"lr_rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"lrs": self.lrs, "global_step": trainer.global_step}))


def write_experiment(
    folder: Path,
    data_dir: Path,
    max_epochs: int = 2,
    dense_dropout: float = 0.0,
    callbacks: Optional[list[dict]] = None,
) -> Path:
    """An experiment YAML like configs/lenet_mnist.yaml, sized for seconds on 2 CPU cores."""
    config = {
        "seed_everything": 7,
        "test_after_fit": True,
        "model": {
            "class_path": "lightning_cnn.ImageClassifier",
            "init_args": {
                "net": {
                    "class_path": "lightning_cnn.models.LeNet",
                    "init_args": {
                        "dense_dropout": dense_dropout,
                        "regularizers": {"kernel": {"l2": 1e-4}},  # the slides' l2 (a 1-channel kernel among them)
                    },
                },
                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
            },
        },
        "data": {
            "class_path": "lightning_cnn.data.MNISTDataModule",
            "init_args": {
                "data_dir": str(data_dir),
                "global_batch_size": GLOBAL_BATCH,
                "val_split": N_VAL / (N_TRAIN + N_VAL),
                "download": False,
                "num_workers": 0,
            },
        },
        "trainer": {
            "max_epochs": max_epochs,
            "deterministic": True,
            "enable_progress_bar": False,
            "log_every_n_steps": 1,
            "callbacks": callbacks or [],
            "logger": [
                {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": ""}},
                {
                    "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": ""},
                },
            ],
        },
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def probe(out_dir: Path) -> dict:
    return {"class_path": "tests.test_ddp.RankProbe", "init_args": {"out_dir": str(out_dir)}}


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "cli.py"), *args]


def run_cli(cwd: Path, *args: str, env: Optional[dict[str, str]] = None) -> str:
    """Run ``cli.py`` in ``cwd``; fail with its output when it fails."""
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        cli_command(*args), cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert result.returncode == 0, f"cli.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


def final_weights(run_dir: Path, version: int = 0) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "runs" / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=N_TRAIN + N_VAL, n_test=N_TEST)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The reference: one process, global batch 32."""
    run_dir = tmp_path_factory.mktemp("one_process")
    config = write_experiment(run_dir, data_dir, callbacks=[probe(run_dir)])
    run_cli(run_dir, "fit", "--config", str(config), "--trainer.accelerator", "cpu", "--trainer.devices", "1")
    return run_dir


def _run_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir / "runs")) for p in (run_dir / "runs").rglob("*") if p.is_file())


def test_two_process_ddp_equals_one_process_and_writes_one_set_of_files(one_process, data_dir, tmp_path):
    config = write_experiment(tmp_path, data_dir, callbacks=[probe(tmp_path)])
    ddp = str(CONFIGS / "trainer" / "ddp_cpu.yaml")
    output = run_cli(tmp_path, "fit", "--config", str(config), "--trainer", ddp, env=cli_env(PYTHONWARNINGS="default"))
    # Gradients reach DDP in their parameters' layout (no copy, no warning); the header replaces Lightning's notices.
    assert "Grad strides do not match" not in output
    assert "Initializing distributed" not in output and "distributed_backend=" not in output
    assert "device: cpu, 32-true, 2 processes; seed 7" in output

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # One run folder, written once: rank 0 decided the version and every rank agrees on it.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]
    assert ranks[0]["log_version"] == ranks[1]["log_version"] == [0, 0]
    files = _run_files(tmp_path)
    assert [f for f in files if f.endswith(".yaml") and "config" in f] == ["version_0/config.yaml"]
    checkpoints = [f for f in files if f.endswith(".ckpt")]
    assert len(checkpoints) == 2 and "version_0/checkpoints/last.ckpt" in checkpoints  # best + last, once
    assert not list(tmp_path.glob("lightning_logs")) and not list(tmp_path.glob("*.ckpt"))

    # The same validation split on every rank, equal weights on every rank, and metrics that agree across ranks
    # (sync_dist for the losses, torchmetrics' own sync for accuracy).
    assert ranks[0]["val_digest"] == ranks[1]["val_digest"]
    assert ranks[0]["weight_digest"] == ranks[1]["weight_digest"]
    assert ranks[0]["val"] == ranks[1]["val"] and ranks[0]["test"] == ranks[1]["test"]
    assert {"val/loss", "val/acc"} <= ranks[0]["val"].keys() and {"test/loss", "test/acc"} <= ranks[0]["test"].keys()

    # Same global batch and seed => same model as one process (up to float summation order), same metrics.
    assert_same_weights(final_weights(tmp_path), final_weights(one_process), atol=1e-5)
    reference = json.loads((one_process / "rank0.json").read_text())
    assert reference["val_digest"] == ranks[0]["val_digest"]
    for stage in ("val", "test"):
        for key, value in reference[stage].items():
            assert ranks[0][stage][key] == pytest.approx(value, abs=1e-4), key


def test_evaluation_counts_every_image_once_when_processes_get_unequal_shares(one_process, tmp_path):
    # 321 test images: 161 on one process, 160 on the other; padding would count one image twice.
    data = write_fake_mnist(tmp_path / "mnist", n_train=N_TRAIN + N_VAL, n_test=321)
    ckpt = one_process / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    records = {}
    for name, trainer in (
        ("one", ["--trainer.devices", "1"]),
        ("two", ["--trainer", str(CONFIGS / "trainer" / "ddp_cpu.yaml")]),
    ):
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = write_experiment(run_dir, data, callbacks=[probe(run_dir)])
        run_cli(run_dir, "test", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.accelerator", "cpu",
                *trainer)  # fmt: skip
        records[name] = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(2 if name == "two" else 1)]
    reference = records["one"][0]
    assert sum(map(sum, reference["test_confusion"])) == 321
    for rank in records["two"]:
        assert rank["test_confusion"] == reference["test_confusion"]
        assert rank["test"] == {k: pytest.approx(v, rel=1e-5) for k, v in reference["test"].items()}


def test_two_node_torchrun_on_loopback_runs_the_same_fit(one_process, data_dir, tmp_path):
    config = write_experiment(tmp_path, data_dir, callbacks=[probe(tmp_path)])
    port = free_port()
    fit_args = [
        "fit",
        "--config",
        str(config),
        "--trainer",
        str(CONFIGS / "trainer" / "ddp_cpu.yaml"),
        "--trainer.devices",
        "1",
        "--trainer.num_nodes",
        "2",
    ]
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node_rank}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            str(REPO_ROOT / "cli.py"),
            *fit_args,
        ]
        nodes.append(
            subprocess.Popen(
                command,
                cwd=tmp_path,
                env=cli_env(GLOO_SOCKET_IFNAME="lo"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [node.communicate(timeout=RUN_TIMEOUT_S)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-6000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]
    assert ranks[0]["val"] == ranks[1]["val"]
    assert_same_weights(final_weights(tmp_path), final_weights(one_process), atol=1e-5)


# --- batch-size semantics and the sampler, without processes ---------------------------------------------------


def test_global_batch_is_split_over_processes_or_fails_clearly():
    dm = MNISTDataModule(batch_size=64, global_batch_size=96)
    assert [dm.per_process_batch_size(w) for w in (1, 2, 3, 4)] == [96, 48, 32, 24]
    with pytest.raises(ValueError, match=r"global_batch_size=96 does not split over 5 processes.*multiple of 5"):
        dm.per_process_batch_size(5)
    assert MNISTDataModule(batch_size=64).per_process_batch_size(4) == 64  # per process when no global size
    with pytest.raises(ValueError, match="global_batch_size=0"):
        MNISTDataModule(global_batch_size=0)


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_batches_together_are_the_single_process_batches(world_size):
    dataset, per_process = list(range(96)), 8
    single = ResumableShuffleSampler(dataset, seed=3)
    shards = [ResumableShuffleSampler(dataset, num_replicas=world_size, rank=r, seed=3) for r in range(world_size)]
    for epoch in (0, 1):
        for sampler in [single, *shards]:
            sampler.set_epoch(epoch)
        order = list(single)
        shard_orders = [list(s) for s in shards]
        for k in range(len(dataset) // (per_process * world_size)):
            together = {i for o in shard_orders for i in o[k * per_process : (k + 1) * per_process]}
            assert together == set(order[k * per_process * world_size : (k + 1) * per_process * world_size])
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first  # a new order every epoch


def _rng_rank_worker(rank: int, port: int, out_dir: str) -> None:
    """One of two gloo processes: different random streams per rank, saved together, each restored by its rank."""
    import torch.distributed as dist

    from lightning_cnn.callbacks.rng_state import RNGStateCheckpoint

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # as a rank's own draws (e.g. its GPU's dropout) leave it
        state = RNGStateCheckpoint().state_dict()  # collective: every rank takes part, as in Lightning
        expected = torch.rand(4)
        torch.manual_seed(999)  # the restarted process starts elsewhere
        RNGStateCheckpoint.restore(state, rank, 2)
        torch.save({"expected": expected, "resumed": torch.rand(4)}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_each_rank_resumes_its_own_random_states(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rng_rank_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    draws = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank, draw in enumerate(draws):
        torch.testing.assert_close(draw["resumed"], draw["expected"], rtol=0, atol=0, msg=f"rank {rank}")
    assert not torch.equal(draws[0]["expected"], draws[1]["expected"])


def test_a_time_budget_gives_every_rank_the_same_rates_and_the_same_stop(data_dir, tmp_path):
    # Two seconds of training with no epoch limit: however far each rank's own clock has run, rank 0's decides
    # every rate and the stop, so both ranks train the same batches at the same rates and the run ends (a rank
    # that stopped alone would leave the other waiting in a collective until the subprocess timeout).
    budget = {"class_path": "lightning_cnn.callbacks.TimeBudget", "init_args": {"duration": 2}}
    lr_probe = {"class_path": "tests.test_ddp.LearningRateProbe", "init_args": {"out_dir": str(tmp_path)}}
    config = write_experiment(tmp_path, data_dir, max_epochs=-1, callbacks=[budget, lr_probe])
    run_cli(tmp_path, "fit", "--config", str(config), "--trainer", str(CONFIGS / "trainer" / "ddp_cpu.yaml"))

    ranks = [json.loads((tmp_path / f"lr_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    lrs = ranks[0]["lrs"]
    assert ranks[0]["global_step"] == len(lrs) >= 1
    # Below the optimizer's 0.05 from the first batch on (the clock runs from the start of training), never rising.
    assert 0 <= lrs[-1] <= lrs[0] <= 0.05 and lrs == sorted(lrs, reverse=True)


def test_an_error_in_one_process_ends_every_process_with_one_line(tmp_path):
    # Rank 0 finds no data while rank 1 waits in a barrier: rank 1 must not add a traceback about the closed
    # connection once rank 0 has printed why the run stopped.
    (tmp_path / "empty").mkdir()
    args = ["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--trainer", str(CONFIGS / "trainer" / "ddp_cpu.yaml"),
            "--data.init_args.data_dir", str(tmp_path / "empty"), "--data.init_args.download", "false"]  # fmt: skip
    env = {k: v for k, v in cli_env().items() if k != "PYTHONWARNINGS"}  # Python's own warning filters, as a user's
    result = subprocess.run(cli_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)  # fmt: skip
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error: MNIST not found"), "\n".join(lines)
