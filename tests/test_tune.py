"""cli.py tune: search files, the trial reporter, and whole studies run by worker processes on fake MNIST."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="the [tune] extra (make setup installs it)")

import pytorch_lightning as pl  # noqa: E402

from lightning_cnn import ImageClassifier  # noqa: E402
from lightning_cnn.data import MNISTDataModule  # noqa: E402
from lightning_cnn.models import LeNet  # noqa: E402
from lightning_cnn.tune import (  # noqa: E402
    SearchFileError,
    SearchSpace,
    TrialReporter,
    engine,  # noqa: E402
)
from tests.conftest import REPO_ROOT, cli_error_line, write_fake_mnist  # noqa: E402

SEARCH = {
    "params": {
        "model.init_args.optimizer.init_args.lr": {"low": 0.01, "high": 0.1, "log": True},
        "model.init_args.net.init_args.dense_dropout": {"low": 0.0, "high": 0.5},
    }
}


def write_experiment(folder: Path, max_epochs: int = 2) -> Path:
    """A LeNet experiment on fake MNIST, a few seconds per trial on 2 CPU cores."""
    data = write_fake_mnist(folder / "mnist", n_train=240, n_test=60)
    config = {
        "seed_everything": 3,
        "model": {
            "class_path": "lightning_cnn.ImageClassifier",
            "init_args": {
                "net": {"class_path": "lightning_cnn.models.LeNet"},
                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
            },
        },
        "data": {
            "class_path": "lightning_cnn.data.MNISTDataModule",
            "init_args": {
                "data_dir": str(data),
                "batch_size": 32,
                "val_split": 0.25,
                "download": False,
                "num_workers": 0,
            },
        },
        "trainer": {"max_epochs": max_epochs, "accelerator": "cpu", "devices": 1},
        "summary": {"enabled": False},
    }
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_search(folder: Path, search: dict = SEARCH, name: str = "search.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(search))
    return path


def tune_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "cli.py"), "tune", *args]


def tune_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_tune(cwd: Path, *args: str) -> str:
    result = subprocess.run(tune_command(*args), cwd=cwd, env=tune_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def load_trials(folder: Path) -> list:
    study_dir = next((folder / "runs" / "exp").glob("tune-*"))
    storage = f"sqlite:///{study_dir / 'study.db'}"
    name = optuna.get_all_study_names(storage)[0]
    return optuna.load_study(study_name=name, storage=storage).trials


def read_table(folder: Path) -> list[dict]:
    study_dir = next((folder / "runs" / "exp").glob("tune-*"))
    with (study_dir / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


# --- the search file ----------------------------------------------------------------------------------------


def test_a_search_file_reads_kinds_and_orders_conditions_first(tmp_path):
    space = SearchSpace.from_dict(
        {
            "params": {
                "model.init_args.optimizer.init_args.momentum": {
                    "low": 0.5,
                    "high": 0.99,
                    "when": {"model.init_args.optimizer": "torch.optim.SGD"},
                },
                "model.init_args.optimizer.init_args.lr": {"low": 1e-4, "high": 1e-1, "log": True},
                "data.init_args.batch_size": {"low": 16, "high": 256, "log": True},
                "model.init_args.optimizer": {"choices": ["torch.optim.Adam", "torch.optim.SGD"]},
                "model.init_args.net.init_args.dense_units": {"choices": [[100], [300]]},
            }
        }
    )
    kinds = {p.key: p.kind for p in space.params}
    assert kinds["data.init_args.batch_size"] == "int"
    assert kinds["model.init_args.optimizer.init_args.lr"] == "float"
    assert kinds["model.init_args.net.init_args.dense_units"] == "categorical"
    order = [p.key for p in space.params]
    # The class before the keys under it and before the key that depends on it.
    assert order.index("model.init_args.optimizer") < order.index("model.init_args.optimizer.init_args.lr")
    assert order.index("model.init_args.optimizer") < order.index("model.init_args.optimizer.init_args.momentum")

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        drawn = space.draw(study.ask())
        is_sgd = drawn["model.init_args.optimizer"] == "torch.optim.SGD"
        assert ("model.init_args.optimizer.init_args.momentum" in drawn) is is_sgd
        assert drawn["model.init_args.net.init_args.dense_units"] in ([100], [300])  # lists come back as lists
        assert isinstance(drawn["data.init_args.batch_size"], int)
        seen.add(is_sgd)
    assert seen == {True, False}


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"params": {"a.b": {"low": 0.1, "high": 0.01}}},
            "params.a.b: empty range low=0.1, high=0.01; give low < high",
        ),
        ({"params": {"a.b": {"low": 1, "high": 1}}}, "params.a.b: empty range"),
        ({"params": {"a.b": {"low": "small", "high": 1}}}, "params.a.b: low 'small' is not a number"),
        ({"params": {"a.b": {"choices": []}}}, "params.a.b: choices [] is empty or not a list"),
        ({"params": {"a.b": {"low": 0, "high": 1, "log": True}}}, "params.a.b: a log range needs low > 0"),
        ({"params": {"a.b": {"low": 0, "high": 1, "type": "double"}}}, "params.a.b: type 'double'; choose one of"),
        ({"params": {"a.b": {"low": 0, "high": 1, "max": 3}}}, "params.a.b: unknown field ['max']"),
        ({"params": {"a.b": {"low": 0, "high": 1, "when": {"c": 1}}}}, "when names 'c', which is not searched"),
        ({"params": {}}, "no params"),
        ({"params": {"a.b": {"low": 0, "high": 1}}, "objective": {"direction": "up"}}, "objective.direction 'up'"),
    ],
)
def test_a_bad_search_file_gets_one_line_naming_the_key(tmp_path, search, message):
    path = write_search(tmp_path, search)
    with pytest.raises(SearchFileError) as error:
        SearchSpace.from_file(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(f"search file {path}: ")


def test_the_grid_needs_finite_values():
    space = SearchSpace.from_dict(
        {"params": {"x.lr": {"low": 0.1, "high": 0.3, "step": 0.1}, "x.n": {"choices": [1, 2]}}}
    )
    assert space.grid() == {"x.lr": [0.1, 0.2, 0.3], "x.n": [1, 2]}
    with pytest.raises(SearchFileError, match="params.x.lr: the grid sampler needs a finite set of values"):
        SearchSpace.from_dict({"params": {"x.lr": {"low": 0.1, "high": 0.3}}}).grid()


def test_a_key_the_config_does_not_take_stops_the_sweep_before_any_trial(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = write_experiment(tmp_path)
    for search, bad in (
        ({"params": {"model.init_args.net.init_args.dense_unitz": {"choices": [[100]]}}}, "dense_unitz"),
        ({"params": {"data.init_args.batch_size": {"choices": ["many"]}}}, "batch_size = 'many'"),
    ):
        line = cli_error_line(
            capsys, ["tune", "--config", str(experiment), "--search", str(write_search(tmp_path, search))]
        )
        assert line.startswith("error: search file ") and bad in line, line
    assert not (tmp_path / "runs").exists(), "nothing is written before the search file is checked"


def test_a_dry_run_checks_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from lightning_cnn.cli import main

    monkeypatch.chdir(tmp_path)
    experiment = write_experiment(tmp_path)
    main(["tune", "--config", str(experiment), "--search", str(write_search(tmp_path)), "--dry-run"])
    out = capsys.readouterr().out
    assert "tune: checked; study 'search'" in out and "20 trials of val/loss (minimize)" in out
    assert not (tmp_path / "runs").exists()


def test_tune_is_listed_and_has_its_own_help(capsys):
    from lightning_cnn.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "tune" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--search", "--trials", "--workers", "--storage", "--sampler", "--pruner", "--study"):
        assert option in out


# --- the reporter, inside a fit -----------------------------------------------------------------------------


def test_a_pruned_trial_stops_before_max_epochs(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = study.ask()
    for epoch in (1, 2, 3):
        done.report(1.01, epoch)  # a val/acc no trial can reach: the median pruner stops the next one
    study.tell(done, 1.01)
    trial = study.ask()
    monkeypatch.setattr(engine, "make_pruner", lambda name, epochs: optuna.pruners.MedianPruner(n_startup_trials=1))
    reporter = TrialReporter(
        storage=storage,
        study="s",
        trial_id=trial._trial_id,
        metric="val/acc",
        direction="maximize",
        pruner="median",
        max_epochs=3,
        result=str(tmp_path / "result.json"),
        parent=os.getppid(),
    )
    data = MNISTDataModule(
        data_dir=str(write_fake_mnist(tmp_path / "mnist")), batch_size=32, download=False, num_workers=0
    )
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[reporter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(ImageClassifier(LeNet()), datamodule=data)
    assert trainer.current_epoch == 1  # one epoch of three
    assert yaml.safe_load((tmp_path / "result.json").read_text())["pruned"] is True
    assert list(optuna.load_study(study_name="s", storage=storage).trials[1].intermediate_values) == [1]


# --- whole studies ------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_tune_processes_share_one_study_and_its_best_config_reruns(tmp_path):
    experiment, search = write_experiment(tmp_path), write_search(tmp_path)
    args = ("--config", str(experiment), "--search", str(search), "--trials", "6", "--sampler", "random")
    processes = [  # one with two worker threads, one with one: three trials at a time on one study
        subprocess.Popen(
            tune_command(*args, "--seed", str(seed), "--workers", str(workers)),
            cwd=tmp_path,
            env=tune_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for seed, workers in ((1, 2), (2, 1))
    ]
    outputs = [process.communicate()[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), "\n".join(outputs)

    trials = load_trials(tmp_path)
    assert sorted(t.number for t in trials) == list(range(6))  # six, each number once
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert {t.user_attrs["worker"] for t in trials} == {f"{os.uname().nodename}:{p.pid}" for p in processes}
    for trial in trials:  # every trial is a whole run
        run = (
            Path(trial.user_attrs["folder"])
            if Path(trial.user_attrs["folder"]).is_absolute()
            else tmp_path / trial.user_attrs["folder"]
        )
        assert (run / "version_0" / "config.yaml").is_file() and (run / "version_0" / "metrics.csv").is_file()
        assert (run / "version_0" / "checkpoints" / "last.ckpt").is_file()
    table = read_table(tmp_path)
    assert [int(row["number"]) for row in table] == list(range(6))

    # best.yaml reruns the best trial: the same objective (val/loss, the checkpoint's monitor) to float precision.
    study_dir = next((tmp_path / "runs" / "exp").glob("tune-*"))
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"trial {best.number}" in (study_dir / "best.yaml").read_text().splitlines()[0]
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "cli.py"), "fit", "--config", str(study_dir / "best.yaml")],
        cwd=tmp_path,
        env=tune_env(),
        check=True,
        capture_output=True,
    )
    with (tmp_path / "runs" / "best" / "version_0" / "metrics.csv").open() as handle:
        losses = [float(row["val/loss"]) for row in csv.DictReader(handle) if row.get("val/loss")]
    assert min(losses) == pytest.approx(best.value, rel=1e-6)
    assert {p.name for p in study_dir.glob("*.png")} == {"history.png", "importances.png", "parallel_coordinates.png"}


@pytest.mark.multiprocess
def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    experiment = write_experiment(tmp_path)
    search = write_search(tmp_path, {"params": {"model.init_args.optimizer.init_args.lr": {"choices": [1.0e6, 0.05]}}})
    output = run_tune(
        tmp_path, "--config", str(experiment), "--search", str(search), "--trials", "2", "--sampler", "grid"
    )
    rows = {row["model.init_args.optimizer.init_args.lr"]: row for row in read_table(tmp_path)}
    assert rows["1000000.0"]["state"] == "fail" and "loss became" in rows["1000000.0"]["reason"]
    assert rows["0.05"]["state"] == "complete"
    assert "failed: training stopped: the loss became" in output


@pytest.mark.multiprocess
def test_a_killed_tune_costs_its_running_trial_and_tune_again_completes_the_study(tmp_path):
    experiment, search = write_experiment(tmp_path, max_epochs=4), write_search(tmp_path)
    args = ("--config", str(experiment), "--search", str(search), "--trials", "3", "--pruner", "none")
    process = subprocess.Popen(
        tune_command(*args), cwd=tmp_path, env=tune_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log = tmp_path / "runs" / "exp" / "tune-search" / "trial_1" / "fit.log"
    waited = 0.0
    while not (log.is_file() and "epoch 1/4" in log.read_text()):  # trial 1 is in its second epoch
        assert process.poll() is None and waited < 600, "tune ended before trial 1 got going"
        time.sleep(0.5)
        waited += 0.5
    process.send_signal(signal.SIGKILL)
    process.wait()

    output = run_tune(tmp_path, *args)
    assert "trial 1 lost its worker" in output
    trials = load_trials(tmp_path)
    states = {t.number: t.state.name for t in trials}
    assert states[1] == "FAIL" and "lost" in trials[1].user_attrs
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == trials[1].params  # the same values, run again
    assert sum(state == "COMPLETE" for state in states.values()) == 3


@pytest.mark.multiprocess
def test_a_trial_whose_worker_went_silent_is_failed_and_run_again(tmp_path):
    experiment, search = write_experiment(tmp_path, max_epochs=1), write_search(tmp_path)
    # A study whose trial 0 was started by a worker on another machine that stopped stamping it long ago.
    study_dir = tmp_path / "runs" / "exp" / "tune-search"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="search", storage=f"sqlite:///{study_dir / 'study.db'}")
    distributions = {
        "model.init_args.optimizer.init_args.lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True),
        "model.init_args.net.init_args.dense_dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
    }
    lost = study.ask(distributions)
    lost.set_user_attr("worker", "gpu-node-7:4242")
    lost.set_user_attr("alive_at", time.time() - 3600)

    output = run_tune(tmp_path, "--config", str(experiment), "--search", str(search), "--trials", "1")
    assert "trial 0 lost its worker (gpu-node-7:4242)" in output
    trials = load_trials(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0


@pytest.mark.multiprocess
def test_the_sbatch_array_tasks_join_one_study_on_a_journal_file(tmp_path):
    experiment, search = write_experiment(tmp_path, max_epochs=1), write_search(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"  # runs the task here
    srun.write_text('#!/bin/sh\nexec "$@"\n')
    srun.chmod(0o755)
    activate = tmp_path / "activate"  # this test's Python first on PATH
    activate.write_text(f'export PATH="{bin_dir}:{Path(sys.executable).parent}:$PATH"\n')
    env = {**tune_env(), "LIGHTNING_CNN_DIR": str(REPO_ROOT), "ENV_ACTIVATE": str(activate), "TRIALS": "3"}
    env.update(SLURM_ARRAY_JOB_ID="77", SLURM_CPUS_PER_TASK="1")
    tasks = [
        subprocess.Popen(
            ["bash", str(REPO_ROOT / "slurm" / "tune.sbatch"), str(experiment), str(search)],
            cwd=tmp_path,
            env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for task in (0, 1)
    ]
    outputs = [task.communicate()[0] for task in tasks]
    assert all(task.returncode == 0 for task in tasks), "\n".join(outputs)
    journal = tmp_path / "runs" / "exp" / "tune-search" / "journal.log"
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    study = optuna.load_study(study_name="search", storage=optuna.storages.JournalStorage(backend))
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert (journal.parent / "trials.csv").is_file() and not (journal.parent / "study.db").exists()


@pytest.mark.multiprocess
def test_three_failed_trials_in_a_row_stop_the_sweep_with_the_reason(tmp_path):
    experiment = write_experiment(tmp_path, max_epochs=1)
    search = write_search(tmp_path, {**SEARCH, "objective": {"metric": "val/accuracy", "direction": "maximize"}})
    args = ["--config", str(experiment), "--search", str(search), "--trials", "5"]
    result = subprocess.run(tune_command(*args), cwd=tmp_path, env=tune_env(), capture_output=True, text=True)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 3 trials in a row failed, the last with: the objective 'val/accuracy' is not")
    assert "val/acc" in last and "Traceback" not in result.stderr
    assert [row["state"] for row in read_table(tmp_path)] == ["fail"] * 3


def test_the_console_script_runs_tune_as_cli_py_does(tmp_path):
    console = Path(sys.executable).parent / "lightning-cnn"
    if not console.is_file():
        pytest.skip("the package's console script is not installed in this environment (pip install -e .)")
    experiment, search = write_experiment(tmp_path), write_search(tmp_path)
    args = ["tune", "--config", str(experiment), "--search", str(search), "--dry-run"]
    result = subprocess.run([str(console), *args], cwd=tmp_path, capture_output=True, text=True, env=tune_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tune: checked; study 'search'" in result.stdout


def test_two_writers_of_one_output_file_each_replace_it_whole(tmp_path, monkeypatch):
    # Two tune processes ending together write the same plots: each writes under a name of its own, then renames.
    from lightning_cnn import paths

    target = tmp_path / "importances.png"
    pids = iter([101, 202])
    monkeypatch.setattr(paths.os, "getpid", lambda: next(pids))
    with paths.written_whole(target) as first:
        first.write_text("first")
        with paths.written_whole(target) as second:
            assert second != first
            second.write_text("second")
        assert target.read_text() == "second"
    assert target.read_text() == "first"  # the last rename wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["importances.png"]  # no partial file left
