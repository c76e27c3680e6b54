"""FullDiskWatch when the writers fail on their own: LitData then ends its workers and raises, and the workers'
children must not live on (they kept the caller's output pipe open, and a one-line error became a hang)."""

import contextlib
import errno
import multiprocessing
import os
import signal
import sys
import time

import pytest

from lightning_cnn.data.disk_watch import FullDiskWatch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watch adopts orphans on Linux only")

# What litdata.optimize raises when a chunk writer reports a failed write itself.
LITDATA_FULL_DISK = RuntimeError(
    "We found the following error Traceback (most recent call last):\n"
    '  File "litdata/streaming/writer.py", line 753, in write_chunk_to_file\n'
    "    out.write(raw_data)\nOSError: [Errno 28] No space left on device\n."
)


def _sleep_forever() -> None:
    time.sleep(3600)


def _worker(pids: "multiprocessing.Queue[int]") -> None:
    """A writer that starts a child of its own, as LitData's workers start their uploaders and removers."""
    child = multiprocessing.get_context("fork").Process(target=_sleep_forever)
    child.start()
    pids.put(child.pid)
    _sleep_forever()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def grandchildren():
    """The pids of the workers' children; any still running after the test is killed, so that a failing test
    does not leave them holding the run's output open."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _fail_like_litdata(error: BaseException, grandchildren: list[int]) -> None:
    """Start a worker with a child (its pid goes into ``grandchildren``), end the worker as LitData does on an
    error, and raise ``error``."""
    context = multiprocessing.get_context("fork")
    pids = context.Queue()
    worker = context.Process(target=_worker, args=(pids,))
    worker.start()
    grandchildren.append(pids.get(timeout=120))
    worker.terminate()  # the worker's child is orphaned here
    worker.join()
    raise error


def test_writers_that_report_a_full_disk_themselves_end_in_one_line_and_leave_no_process(tmp_path, grandchildren):
    with pytest.raises(OSError) as raised, FullDiskWatch(tmp_path, where=tmp_path / "shards"):
        _fail_like_litdata(LITDATA_FULL_DISK, grandchildren)
    assert raised.value.errno == errno.ENOSPC
    assert str(raised.value) == (
        f"[Errno 28] No space left on device (the disk filled while writing): '{tmp_path / 'shards'}'"
    )
    assert not _alive(grandchildren[0])


def test_another_error_passes_unchanged_and_still_leaves_no_process(tmp_path, grandchildren):
    with pytest.raises(ValueError, match="cannot serialize"), FullDiskWatch(tmp_path):
        _fail_like_litdata(ValueError("a sample the writer cannot serialize"), grandchildren)
    assert not _alive(grandchildren[0])


def test_processes_started_before_the_block_are_left_alone(tmp_path):
    earlier = multiprocessing.get_context("fork").Process(target=_sleep_forever)
    earlier.start()
    try:
        with pytest.raises(ValueError), FullDiskWatch(tmp_path):
            raise ValueError("the writers failed")
        assert earlier.is_alive()
    finally:
        earlier.kill()
        earlier.join()


def test_a_block_that_ends_well_changes_nothing(tmp_path):
    with FullDiskWatch(tmp_path) as watch:
        (tmp_path / "chunk.bin").write_bytes(b"\0" * 1024)
    assert not watch.stopped
