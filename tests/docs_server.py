"""Runs the docs' ``python SCRIPT …`` and ``lightning-cnn …`` commands without paying Python's start-up each time.

Importing torch and Lightning takes about ten seconds on a small machine, and the docs hold dozens of commands.
``python tests/docs_server.py SOCKET`` imports the CLI once, then listens on a Unix socket. Each request (sent by
the ``python`` / ``lightning-cnn`` shims that ``tests/docs_runner.py`` puts on PATH) carries the command's
arguments, folder and environment, and its stdin/stdout/stderr as file descriptors. The server forks a child per
request that takes those descriptors, folder and environment and runs the script as ``__main__`` (or the CLI's
``main`` for the console script), then writes the child's exit status back. No torch operation runs in the server
before the forks, as in ``tests/cli_forkserver.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import selectors
import socket
import sys

from cli_forkserver import run_for_status  # this folder is sys.path[0] when run as a script

MAX_FDS = 3
HEADER_BYTES = 1 << 20


def _child(request: dict, fds: list[int]) -> int:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]

    def run() -> None:
        if request["kind"] == "console":
            from lightning_cnn.cli import main

            sys.argv = ["lightning-cnn", *argv]
            main()
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))  # as `python SCRIPT` sets it
            runpy.run_path(argv[0], run_name="__main__")

    return run_for_status(run)


def serve(path: str) -> None:
    import lightning_cnn.cli  # noqa: F401  (the import every child shares)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while True:
        for _ in selector.select(timeout=0.05):
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, HEADER_BYTES, MAX_FDS)
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                os._exit(_child(request, fds))
            for fd in fds:
                os.close(fd)
            waiting[pid] = connection
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = waiting.pop(pid)
            with contextlib.suppress(OSError):  # the shim is gone (killed): nobody waits for the status
                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            connection.close()


if __name__ == "__main__":
    serve(sys.argv[1])
