"""Stop LitData's writers when the disk fills up under them.

``litdata.optimize`` writes through worker processes and their own child processes; when a write fails for lack
of space, one of them blocks on a pipe that nobody reads and the call never returns. :func:`write_shards` checks
the free space before it starts, but the disk can still fill while it writes (another job writing to it, an
estimate that fell short). :class:`FullDiskWatch` looks at the disk while the writers run: a disk with almost no
space left on which the written bytes have stopped growing is a full disk, not a slow one, and the watch ends
every process started below this one so that the call returns and the caller can say what happened.

LitData sometimes sees the failed write itself: it then ends its workers and raises, but the workers' own children
live on, orphaned, and keep the caller's output pipes open. While the watch runs, this process adopts such orphans
(Linux), and a block that ends in an error ends them too: nothing started inside the block outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Optional

__all__ = ["FullDiskWatch"]


class FullDiskWatch:
    """``with FullDiskWatch(folder):`` around a write into ``folder`` by child processes; the block ends in
    ``OSError(ENOSPC)`` naming ``where`` when the disk filled up (the watch stopped the writers, or they failed on
    it themselves). A block that ends in an error leaves no process it started running.

    Args:
        folder: Where the children write (an existing folder).
        where: The folder the error names (default ``folder``): the one the user chose, not a temporary one.
        low_bytes: Free space under which the disk counts as full.
        stalled_s: How long the bytes written under ``folder`` must stay the same on a full disk before the writers
            are stopped: a writer that still makes progress is never stopped.
        poll_s: How often the disk is looked at.
    """

    def __init__(
        self,
        folder: Path,
        where: Optional[Path] = None,
        low_bytes: int = 1 << 20,
        stalled_s: float = 5.0,
        poll_s: float = 0.5,
    ) -> None:
        self.folder, self.where = Path(folder), Path(where or folder)
        self.low_bytes, self.stalled_s, self.poll_s = low_bytes, stalled_s, poll_s
        #: Whether the block ended on a full disk.
        self.stopped = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="full-disk-watch", daemon=True)

    def __enter__(self) -> FullDiskWatch:
        self._before = _descendants()  # already running before the block: never stopped
        self._was_subreaper = _adopt_orphans(True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: Optional[type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        self._done.set()
        self._thread.join()
        try:
            if error is not None and not self.stopped:
                _stop_descendants(self._before)  # what the failed writers left behind
                self.stopped = _disk_was_full(error)
        finally:
            _adopt_orphans(self._was_subreaper)
        if self.stopped:
            raise OSError(
                errno.ENOSPC, "No space left on device (the disk filled while writing)", str(self.where)
            ) from error

    def _watch(self) -> None:
        written, unchanged_since = -1, time.monotonic()
        while not self._done.wait(self.poll_s):
            if shutil.disk_usage(self.folder).free >= self.low_bytes:
                unchanged_since = time.monotonic()
                continue
            now_written = _bytes_under(self.folder)
            if now_written != written:
                written, unchanged_since = now_written, time.monotonic()
            elif time.monotonic() - unchanged_since >= self.stalled_s:
                self.stopped = True
                _stop_descendants(self._before)
                return


def _bytes_under(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _disk_was_full(error: BaseException) -> bool:
    """Whether ``error`` or an error behind it is ENOSPC; LitData passes a writer's failure on as the text of its
    traceback inside a RuntimeError."""
    seen: Optional[BaseException] = error
    while seen is not None:
        if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or f"[Errno {errno.ENOSPC}]" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _adopt_orphans(on: bool) -> bool:
    """Make this process the parent of its descendants' orphans while ``on`` (Linux's child subreaper; elsewhere
    nothing), so that they can still be found below it; returns the previous setting."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    previous = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    return bool(previous.value)


_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37  # from linux/prctl.h


def _descendants() -> set[int]:
    """Every process below this one (on Linux, found through /proc; elsewhere this process' own children)."""
    children: dict[int, list[int]] = {}
    if os.path.isdir("/proc"):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text()
                except OSError:
                    continue
                parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
                children.setdefault(parent, []).append(int(entry.name))
    pids = [p.pid for p in multiprocessing.active_children() if p.pid is not None]
    found, frontier = set(pids), [os.getpid(), *pids]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _stop_descendants(keep: set[int]) -> None:
    """Kill every process below this one but those in ``keep``, and collect the exit status of those that became
    this process' children as orphans (multiprocessing collects its own)."""
    managed = {p.pid for p in multiprocessing.active_children()}
    stopped = [pid for pid in _descendants() if pid not in keep]
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in stopped:
        if pid not in managed:
            with contextlib.suppress(ChildProcessError):  # not a child of this process
                os.waitpid(pid, 0)
