"""Runs ``cli.py`` many times, each in a process of its own, without paying Python's start-up each time.

Started by ``tests/test_cli_errors.py``: this process imports the CLI once (torch and Lightning take about ten
seconds to import on a small machine), then forks one child per job it reads on stdin (JSON lines: ``folder``,
``args``, ``env``, ``prelude``, ``log``). A child moves into its folder, applies its environment, runs the job's
``prelude`` (a simulated fault), and runs ``cli.py`` itself as ``__main__`` with the job's arguments, its stdout and
stderr going to ``<log>.out`` / ``<log>.err``. Its exit status is written back as a JSON line (``name``, ``rc``).
No torch operation runs in this process before the forks.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_for_status(run: Callable[[], object]) -> int:
    """Call ``run`` as Python runs a script's main code, and return the exit status the process would have: a
    ``SystemExit``'s code (a message is printed, status 1), 1 after printing an exception's traceback, else 0."""
    try:
        run()
        return 0
    except SystemExit as exit_:
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _child(job: dict) -> int:
    os.chdir(job["folder"])
    os.environ.update(job["env"])
    with open(job["log"] + ".out", "w") as out, open(job["log"] + ".err", "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
    sys.argv = [str(REPO_ROOT / "cli.py"), *job["args"]]

    def run() -> None:
        exec(job["prelude"], {})
        runpy.run_path(str(REPO_ROOT / "cli.py"), run_name="__main__")

    return run_for_status(run)


def main(workers: int) -> None:
    import lightning_cnn.cli  # noqa: F401  (the import every child shares)

    jobs = [json.loads(line) for line in sys.stdin if line.strip()]
    running: dict[int, str] = {}
    for job in [*jobs, None]:
        while running and (job is None or len(running) >= workers):
            pid, status = os.wait()
            print(json.dumps({"name": running.pop(pid), "rc": os.waitstatus_to_exitcode(status)}), flush=True)
        if job is None:
            break
        pid = os.fork()
        if pid == 0:
            os._exit(_child(job))
        running[pid] = job["name"]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
