"""``cli.py tune``: a sweep over a config's keys on Optuna, run by worker threads that each start one ordinary
``fit`` process per trial.

A worker asks the study for a trial, runs ``fit`` with the trial's values as command-line overrides (into
``runs/<experiment>/tune-<study>/trial_<n>/``), and tells the study what came of it: the best value of the
objective, pruned, or failed with a one-line reason. Any number of ``tune`` processes (``--workers`` here, SLURM
array tasks elsewhere) share one study through its storage: a SQLite file in the study folder by default, or any
Optuna storage URL.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning_cnn.callbacks.progress import _duration
from lightning_cnn.cli.arguments import _experiment_name
from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.cli.runs import _DEFAULT_LOGGERS, RUNS_DIR
from lightning_cnn.tune.checks import check_params, cli_value, objective_of, resolved_fit_config
from lightning_cnn.tune.engine import PRUNERS, SAMPLERS, make_pruner, make_sampler, open_storage
from lightning_cnn.tune.reporter import TRIAL_ENV
from lightning_cnn.tune.space import SearchSpace

__all__ = ["Sweep", "main"]

#: How often a worker stamps its running trial as alive (the trial's ``alive_at``), and after how long without a
#: stamp another worker takes the trial for lost (its worker killed or its machine gone), fails it and runs its
#: values again. Any storage carries the stamp, a journal file on a shared filesystem as well as a database.
HEARTBEAT_S, GRACE_S = 60, 300
#: A sweep stops after this many failed trials in a row (KerasTuner's max_consecutive_failed_trials): the cause is
#: then the config or the machine, not the sampled values.
MAX_FAILED_IN_A_ROW = 3


# --- the command ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cli.py tune",
        description="Search a config's keys with Optuna: each trial is a fit run with sampled values.",
        epilog="Other --KEY VALUE arguments go to every trial's fit (e.g. --trainer.max_epochs 5).",
    )
    parser.add_argument("-c", "--config", action="append", required=True, help="the experiment's config(s)")
    parser.add_argument("--search", required=True, help="the search file: keys, ranges, objective")
    parser.add_argument("--trials", type=int, default=20, help="trials the study runs in all (default 20)")
    parser.add_argument("--workers", type=int, default=1, help="trials run at once by this process (default 1)")
    parser.add_argument("--study", help="the study's name (default: the search file's name); same name resumes")
    parser.add_argument("--storage", help="an Optuna storage URL shared by every worker (default: a SQLite file)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="how trials are drawn (default tpe)")
    parser.add_argument("--pruner", choices=PRUNERS, default="hyperband", help="early stop (default hyperband)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the config and the search file, say what would run"
    )
    return parser


def main(argv: list[str]) -> None:
    """``cli.py tune``: check the config and the search file, then run (or resume) the study."""
    args, fit_args = _parser().parse_known_args(argv)
    for name in ("trials", "workers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)}; give a whole number >= 1.")
    space = SearchSpace.from_file(args.search)
    fit_args = [arg for config in args.config for arg in ("--config", config)] + fit_args
    base = resolved_fit_config(fit_args)
    objective = objective_of(space, base)
    check_params(space, fit_args)
    study_name = args.study or Path(args.search).stem
    folder = Path(RUNS_DIR) / _experiment_name(["--config", args.config[0]], "tune") / f"tune-{study_name}"
    if args.dry_run:
        keys = ", ".join(p.key + (" (conditional)" if p.when else "") for p in space.params)
        print(f"tune: checked; study {study_name!r} in {folder}, {args.trials} trials of {objective[0]} "
              f"({objective[1]}) over {keys}")  # fmt: skip
        return
    folder.mkdir(parents=True, exist_ok=True)
    Sweep(args, space, fit_args, base, objective, study_name, folder).run()


class Sweep:
    """One ``tune`` process: its workers, the study they share, and what it writes."""

    def __init__(
        self,
        args: argparse.Namespace,
        space: SearchSpace,
        fit_args: list[str],
        base: Any,
        objective: tuple[str, str],
        study_name: str,
        folder: Path,
    ) -> None:
        import optuna

        self.args, self.space, self.fit_args, self.base = args, space, fit_args, base
        self.metric, self.direction = objective
        self.folder = folder
        epochs = base.trainer.max_epochs
        self.max_epochs = epochs if epochs and epochs > 0 else 1000  # Lightning's default without a limit
        self.url = args.storage or f"sqlite:///{folder / 'study.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's constant_liar
        try:
            # One process at a time creates the storage and the study: two tune processes starting together would
            # otherwise both create the database's tables (SQLite: "UNIQUE constraint failed: alembic_version").
            with _locked(folder / ".ask.lock"):
                self.storage = open_storage(self.url)
        except Exception as err:  # SQLAlchemy's or the journal's own error types
            raise ConfigError(
                f"--storage {self.url}: {str(err).splitlines()[0]}; give sqlite:///PATH, postgresql://USER@HOST/DB, "
                "mysql://USER@HOST/DB or journal:PATH."
            ) from None
        self.trials = args.trials
        if args.sampler == "grid":
            size = 1
            for values in space.grid().values():
                size *= len(values)
            if size < self.trials:
                print(f"tune: the grid has {size} points; running {size} trials, not {self.trials}")
                self.trials = size
        try:
            with _locked(folder / ".ask.lock"):
                self.study = optuna.create_study(
                    study_name=study_name,
                    storage=self.storage,
                    sampler=make_sampler(args.sampler, space, args.seed),
                    pruner=make_pruner(args.pruner, self.max_epochs),
                    direction=self.direction,
                    load_if_exists=True,
                )
        except ValueError as err:  # an existing study with another direction
            raise ConfigError(f"study {study_name!r} in {self.url}: {err}; give another --study name.") from None
        self._lock = threading.Lock()
        self._print_lock = threading.Lock()
        self._finished_here: list[float] = []
        self._errors: list[Exception] = []
        self._failed_in_a_row = 0
        self._stop = threading.Event()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def run(self) -> None:
        from lightning_cnn.tune.outputs import write_outputs

        self._recover_lost_trials()
        done = self._counted()
        print(
            f"tune: study {self.study.study_name!r}, {self.metric} ({self.direction}), {self.args.sampler} sampler, "
            f"{self.args.pruner} pruning; {done}/{self.trials} trials done; {self.args.workers} worker(s); "
            f"folder {self.folder}; storage {self.url}",
            flush=True,
        )
        workers = [threading.Thread(target=self._work, args=(slot,), daemon=True) for slot in range(self.args.workers)]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except KeyboardInterrupt:
            self._stop.set()
            print("tune: interrupted; its running trials are failed and run again when the study resumes", flush=True)
            raise SystemExit(130) from None
        write_outputs(self)
        if self._errors:
            raise self._errors[0]

    # --- a worker ----------------------------------------------------------------------------------------

    def _work(self, slot: int) -> None:
        try:
            while not self._stop.is_set():
                trial = self._next_trial()
                if trial is None:
                    return
                self._run_trial(trial, slot)
        except Exception as err:  # raised again by run() once every worker has stopped and the outputs are written
            self._errors.append(err)
            self._stop.set()

    def _next_trial(self) -> Any:
        """A new (or retried) trial, or ``None`` once the study has as many trials as asked, counting those
        running; one process at a time decides (a lock file in the study folder)."""
        import optuna

        with self._lock, _locked(self.folder / ".ask.lock"):
            self._recover_lost_trials()
            trials = self.study.get_trials(deepcopy=False)
            running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
            if self._counted(trials) + running >= self.trials:
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", self.worker_id)
            trial.set_user_attr("alive_at", time.time())
            return trial

    def _run_trial(self, trial: Any, slot: int) -> None:
        import optuna

        start = time.monotonic()
        values = self.space.draw(trial)
        run_dir = self.folder / f"trial_{trial.number}"
        run_dir.mkdir(parents=True, exist_ok=True)
        result_file = run_dir / "result.json"
        result_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "lightning_cnn.cli.main", "fit", *self.fit_args]
        command += [f"--{key}={cli_value(value)}" for key, value in values.items()]
        command += [f"--trainer.logger={json.dumps(self._loggers(run_dir))}", "--test_after_fit=false"]
        env = self._trial_env(trial, slot, result_file)
        if self.args.workers > 1:
            command.append(f"--cpu_threads={max(1, (os.cpu_count() or 1) // self.args.workers)}")
        with open(run_dir / "fit.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            self._wait_beating(process, trial)
        wall = time.monotonic() - start
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        trial.set_user_attr("wall_s", round(wall, 1))
        trial.set_user_attr("epochs", result.get("epochs", 0))
        trial.set_user_attr("folder", str(run_dir))
        if process.returncode != 0 or not result:
            reason = _failure_reason(run_dir / "fit.log", process.returncode)
            trial.set_user_attr("reason", reason)
            state, value = optuna.trial.TrialState.FAIL, None
        elif result["pruned"]:
            state, value = optuna.trial.TrialState.PRUNED, None
        elif result["value"] is None:
            trial.set_user_attr("reason", f"{self.metric} was never finite")
            state, value = optuna.trial.TrialState.FAIL, None
        else:
            state, value = optuna.trial.TrialState.COMPLETE, result["value"]
        with self._lock:
            try:
                self.study.tell(trial, value, state=state)
            except RuntimeError as err:
                # The grid sampler signals a finished grid with Study.stop(), which only optimize() accepts; the
                # trial is stored before that, and the worker loop stops at the trial count by itself.
                if "Study.stop" not in str(err):
                    raise
            self._finished_here.append(wall)
            self._print_progress(trial.number, state, value, result.get("epochs", 0), wall)
            self._failed_in_a_row = self._failed_in_a_row + 1 if state == optuna.trial.TrialState.FAIL else 0
            if self._failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                raise ConfigError(
                    f"{self._failed_in_a_row} trials in a row failed, the last with: {trial.user_attrs['reason']}; "
                    f"fix that and run tune again (the study resumes); each trial's output is in its fit.log."
                )

    def _wait_beating(self, process: subprocess.Popen, trial: Any) -> None:
        """Wait for the trial's process, stamping the trial as alive every HEARTBEAT_S."""
        while True:
            try:
                process.wait(timeout=HEARTBEAT_S)
                return
            except subprocess.TimeoutExpired:
                trial.set_user_attr("alive_at", time.time())

    def _trial_env(self, trial: Any, slot: int, result_file: Path) -> dict[str, str]:
        env = dict(os.environ)
        env[TRIAL_ENV] = json.dumps(
            {
                "storage": self.url,
                "study": self.study.study_name,
                "trial_id": trial._trial_id,
                "metric": self.metric,
                "direction": self.direction,
                "pruner": self.args.pruner,
                "max_epochs": self.max_epochs,
                "result": str(result_file),
                "parent": os.getpid(),
            }
        )
        gpus = _visible_gpus()
        if self.args.workers > 1 and gpus:  # one worker per GPU (round robin when there are more workers)
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        return env

    def _loggers(self, run_dir: Path) -> list[dict]:
        """The run's loggers in ``trial_<n>/version_0``: a rerun of its config.yaml goes to ``version_1`` beside
        it, never over it."""
        return [
            {"class_path": cls, "init_args": {"save_dir": str(run_dir.parent), "name": run_dir.name}}
            for cls in _DEFAULT_LOGGERS
        ]

    # --- the study's state -------------------------------------------------------------------------------

    def _counted(self, trials: Optional[list] = None) -> int:
        """Trials that count toward --trials: finished, pruned, or failed of their own error (not those whose
        worker was killed: they are retried)."""
        import optuna

        states = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False) if trials is None else trials
        return sum(
            t.state in (states.COMPLETE, states.PRUNED) or (t.state == states.FAIL and "reason" in t.user_attrs)
            for t in trials
        )

    def _recover_lost_trials(self) -> None:
        """Fail and queue again the running trials whose worker is gone: a ``tune`` process of this machine that no
        longer exists (killed, crashed), or any worker whose stamp is older than GRACE_S."""
        import optuna

        host, now = socket.gethostname(), time.time()
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker", "")
            owner_host, _, pid = worker.rpartition(":")
            dead_here = owner_host == host and pid.isdigit() and not _alive(int(pid))
            silent = now - trial.user_attrs.get("alive_at", now) > GRACE_S
            if not (dead_here or silent):
                continue
            self.storage.set_trial_user_attr(trial._trial_id, "lost", f"its worker {worker} stopped")
            self.storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            print(f"tune: trial {trial.number} lost its worker ({worker}); failed and queued again", flush=True)

    def _print_progress(self, number: int, state: Any, value: Optional[float], epochs: int, wall: float) -> None:
        done = self._counted()
        try:
            best = self.study.best_trial
            best_text = f"best {best.value:.4f} (trial {best.number})"
        except ValueError:
            best_text = "no best yet"
        what = {
            "COMPLETE": f"{self.metric} {value:.4f}" if value is not None else "",
            "PRUNED": f"pruned after epoch {epochs}",
            "FAIL": "failed: " + str(self.study.trials[number].user_attrs.get("reason", "")),
        }[state.name]
        left = max(self.trials - done, 0)
        mean = sum(self._finished_here) / len(self._finished_here)
        eta = f"  ETA {_duration(mean * left / self.args.workers)}" if left else ""
        with self._print_lock:
            print(f"trial {number}  {done}/{self.trials}  {what}  {_duration(wall)}  {best_text}{eta}", flush=True)


# --- small helpers ------------------------------------------------------------------------------------------


def _failure_reason(log: Path, returncode: int) -> str:
    """The one line that says why a trial's fit failed: its ``error:`` line, else the last line of its output."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return lines[-1] if lines else f"exit status {returncode}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
