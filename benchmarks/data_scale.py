"""Training from a folder of JPEGs: decoded into memory, streamed from the files, or as LitData shards.

For each: images/s while training (and of the loader alone), the time to get ready, and peak memory.

    python benchmarks/data_scale.py [--images 20000] [--size 128] [--batches 150] [--warmup 20] [--rounds 3]
                                    [--workdir DIR] [--keep] [--markdown PATH] [--quick]

The data: ``--images`` real Fashion-MNIST training images (from ``FashionMNISTDataModule``; cycled past its
60,000), enlarged to ``--size`` px (PIL bilinear), made RGB and saved as JPEG (quality 90) into
``<workdir>/folder/train/<class>/<i>.jpg``, plus a ``test/`` folder of up to 1,000 test images, so every side has
a test split. Writing the folder is timed on its own line and is not part of any side; a folder written before
with the same settings under ``--workdir`` is used again. The files were just written, so they are read from the
page cache: this measures decoding, not the disk.

The sides (batch 64, 2 loader workers, ``val_split`` 0.1, images at ``--size``):

* ``in_memory``: ``ImageFolderDataModule(in_memory=True)``; its preparation is ``setup("fit")``, which decodes
  every image once and keeps them as uint8;
* ``streaming``: ``ImageFolderDataModule(in_memory=False)``; ``setup("fit")`` only scans the file headers, and the
  loader workers decode each batch's files;
* ``litdata``: ``write_shards`` (2 writer processes; the shards keep the JPEG bytes) once, in a process of its
  own, then ``ShardedDataModule``; its preparation is writing the shards plus its ``setup("fit")``.

Each side runs in a fresh process per round, so its memory figures are its own; the sides take turns, in the
opposite order every other round. In that process torch uses 1 thread, so the model's step and the 2 loader
workers share the 2 cores of a small machine without oversubscribing them. Two passes over
``train_dataloader()``, each with fresh workers, ``--warmup`` untimed batches (worker start-up, first calls) then
``--batches`` timed ones (epochs repeat as needed):

* loader alone: the batches are only fetched;
* training: each batch goes through a small CNN (two stride-2 3×3 convolutions with 8 and 16 filters, global
  average pooling; small, so that the loader decides the speed), cross-entropy, backward and an SGD step.

Memory, per side (the largest over rounds):

* main RSS: the peak RSS of the side's process (model, loop, and for ``in_memory`` the decoded images): Linux's
  ``VmHWM``, not ``getrusage(RUSAGE_SELF).ru_maxrss``, which Linux carries over from the process that started
  this one (so it would never read below this script's own peak); ``ru_maxrss`` elsewhere;
* worker RSS: ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` once the workers have exited: the peak of the largest one.
  A forked worker's RSS counts the pages it shares with the main process (torch's libraries; for ``in_memory``
  the images it reads), so main + 2 × worker overstates the total;
* total PSS: the proportional set size (each shared page divided among the processes sharing it) of the main
  process and its workers together, sampled every 0.25 s from Linux's ``/proc`` — what the side costs the machine
  (a little low: library pages shared with other processes, this script's included, are divided too); ``n/a``
  elsewhere.

Images/s and preparation times are the median and min–max over rounds; a ratio to ``in_memory`` divides a side's
training images/s by ``in_memory``'s of the same round (rounds minutes apart see different loads from other work),
then takes the median and range over rounds. Two targets are printed beside the figures, not asserted: streaming
main-process peak RSS under 1 GB whatever the dataset size (run two ``--images`` to see it flat), and streaming training at least
0.8 of in-memory's images/s with 2 workers. ``--quick`` is a smoke run (600 images at 64 px, 1 round, 20 batches);
options given with it win.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from machine import Report, add_markdown_argument, cli_env, cpu_name  # benchmarks/machine.py (on sys.path)
from PIL import Image
from torch import Tensor

from lightning_cnn.data import FashionMNISTDataModule, ImageFolderDataModule, ShardedDataModule, write_shards
from lightning_cnn.models import ConvNet

SIDES = ("in_memory", "streaming", "litdata")
FULL = {"images": 20_000, "size": 128, "rounds": 3, "batches": 150, "warmup": 20}
QUICK = {"images": 600, "size": 64, "rounds": 1, "batches": 20, "warmup": 5}
BATCH_SIZE = 64
LOADER_WORKERS = 2
VAL_SPLIT = 0.1
JPEG_QUALITY = 90
MAX_TEST_IMAGES = 1000
# The smallest side the small CNN's two stride-2 convolutions and poolings accept.
MIN_SIZE = 32
LEARNING_RATE = 0.01
PSS_INTERVAL_S = 0.25
TARGET_STREAMING_MB = 1000
TARGET_STREAMING_RATIO = 0.8
COLUMNS = (
    "side",
    "prep s",
    "peak RSS main MB",
    "peak RSS largest worker MB",
    "peak PSS main+workers MB",
    "loader alone img/s",
    "training img/s",
    "training / in_memory (same round)",
)
_RESULT_PREFIX = "RESULT "
_MB = 1e6


# --- the image folder ---------------------------------------------------------------------------------------------


def _class_folder(name: str) -> str:
    return name.replace("/", "_")  # "T-shirt/top" is one class, not two folders


def _fashion_mnist() -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(download=False, val_split=0)
    dm.setup("fit")
    return dm


def _write_split(folder: Path, images: Tensor, labels: Tensor, count: int, size: int) -> None:
    """``count`` JPEGs into ``folder/<class>/<i>.jpg``, cycling through ``images`` (uint8 ``(N, 1, 28, 28)``)."""
    names = [_class_folder(name) for name in FashionMNISTDataModule.class_names]
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        j = i % len(images)
        image = Image.fromarray(images[j, 0].numpy()).resize((size, size), Image.Resampling.BILINEAR)
        image.convert("RGB").save(folder / names[int(labels[j])] / f"{i}.jpg", quality=JPEG_QUALITY)


def test_image_count(images: int) -> int:
    """How many test JPEGs go with ``images`` training ones: a twentieth, at least 10 and at most 1,000."""
    return min(MAX_TEST_IMAGES, max(10, images // 20))


def _already_written(folder: Path, manifest: Path, wanted: dict[str, int]) -> bool:
    if not manifest.is_file() or json.loads(manifest.read_text()) != wanted:
        return False
    return sum(1 for _ in folder.rglob("*.jpg")) == wanted["images"] + wanted["test_images"]


def write_image_folder(workdir: Path, images: int, size: int) -> tuple[Path, Optional[float]]:
    """The JPEG folder under ``workdir`` and the seconds it took to write (``None``: the one there was used)."""
    folder = workdir / "folder"
    manifest = workdir / "folder.json"
    wanted = {"images": images, "test_images": test_image_count(images), "size": size}
    if _already_written(folder, manifest, wanted):
        return folder, None
    manifest.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    source = _fashion_mnist()
    train, test = source.train_set, source.test_set
    _write_split(folder / "train", train.images, train.labels, images, size)
    # Test images of the classes the training images hold only: a test class without training images is an error.
    keep = torch.isin(test.labels, train.labels[:images].unique())
    _write_split(folder / "test", test.images[keep], test.labels[keep], wanted["test_images"], size)
    seconds = time.perf_counter() - start
    manifest.write_text(json.dumps(wanted))  # last: a folder cut short is never used again
    return folder, seconds


# --- one side, in a process of its own ----------------------------------------------------------------------------


def _small_net(size: int) -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(in_channels=3, num_classes=10, input_size=(size, size), filters=(8, 16), kernel_size=3, stride=2,
                   global_pool="avg", dense_units=())  # fmt: skip


def _folder_datamodule(folder: str, size: int, in_memory: bool) -> ImageFolderDataModule:
    return ImageFolderDataModule(data_dir=folder, image_size=size, in_memory=in_memory, batch_size=BATCH_SIZE,
                                 num_workers=LOADER_WORKERS, val_split=VAL_SPLIT)  # fmt: skip


def _datamodule(job: dict[str, Any]) -> Any:
    if job["side"] == "litdata":
        return ShardedDataModule(data_dir=job["shards"], image_size=job["size"], batch_size=BATCH_SIZE,
                                 num_workers=LOADER_WORKERS)  # fmt: skip
    return _folder_datamodule(job["folder"], job["size"], in_memory=job["side"] == "in_memory")


def _pss(pid: str) -> int:
    """Proportional set size of process ``pid`` in bytes; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _children() -> list[str]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += (task / "children").read_text().split()
    return pids


class _PeakPss(threading.Thread):
    """Samples the PSS of this process plus its children every ``PSS_INTERVAL_S``; :meth:`stop` returns the peak
    in bytes (``None`` without Linux's ``/proc``)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: Optional[int] = None
        self._done = threading.Event()

    def run(self) -> None:
        if not Path("/proc/self/smaps_rollup").is_file():
            return
        self.peak = 0
        while not self._done.wait(PSS_INTERVAL_S):
            self.peak = max(self.peak, _pss("self") + sum(_pss(pid) for pid in _children()))

    def stop(self) -> Optional[int]:
        self._done.set()
        self.join()
        return self.peak


def _images_per_second(dm: Any, warmup: int, batches: int, step: Optional[Callable] = None) -> float:
    """Fetch ``warmup + batches`` training batches from fresh loader workers, each through ``step`` if given;
    images/s over the last ``batches``. The workers have exited when it returns."""
    loader = dm.train_dataloader()
    sizes: list[int] = []
    marks = [time.perf_counter()]
    while len(sizes) < warmup + batches:
        for images, labels in loader:
            if step is not None:
                step(images, labels)
            sizes.append(len(labels))
            marks.append(time.perf_counter())
            if len(sizes) == warmup + batches:
                break
    del loader  # shuts its workers down, so that RUSAGE_CHILDREN counts them
    gc.collect()
    return sum(sizes[warmup:]) / (marks[-1] - marks[warmup])


def _training_step(size: int) -> Callable[[Tensor, Tensor], None]:
    net = _small_net(size)
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)

    def step(images: Tensor, labels: Tensor) -> None:
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _ru_maxrss(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _status_bytes(key: str) -> Optional[float]:
    """A size from this process' ``/proc/self/status`` (Linux) in bytes: ``VmRSS`` now, ``VmHWM`` its peak."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return None


def _peak_rss_self() -> float:
    """This process' peak RSS in bytes. On Linux ``VmHWM``: ``ru_maxrss`` of RUSAGE_SELF keeps the peak of the
    process that started this one (Linux carries it over fork and exec), here the benchmark's own, often larger."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else _ru_maxrss(resource.RUSAGE_SELF)


def run_side(job: dict[str, Any]) -> dict[str, Any]:
    """One side in this process: setup, the loader alone, then training; times and memory peaks."""
    torch.set_num_threads(1)
    rss_imports = _status_bytes("VmRSS")
    pss = _PeakPss()
    pss.start()
    dm = _datamodule(job)
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader_alone = _images_per_second(dm, job["warmup"], job["batches"])
    training = _images_per_second(dm, job["warmup"], job["batches"], _training_step(job["size"]))
    return {
        "setup_s": setup_s,
        "loader_alone": loader_alone,
        "training": training,
        "rss_imports": rss_imports,
        "rss_main": _peak_rss_self(),
        "rss_worker": _ru_maxrss(resource.RUSAGE_CHILDREN),
        "pss": pss.stop(),
        "train_images": len(dm.train_set),
    }


def run_write_shards(job: dict[str, Any]) -> dict[str, Any]:
    """The folder written as LitData shards (the JPEG bytes as they are), in this process and its writers."""
    start = time.perf_counter()
    dm = _folder_datamodule(job["folder"], job["size"], in_memory=False)
    write_shards(dm, job["shards"], num_workers=LOADER_WORKERS, overwrite=True)
    return {"seconds": time.perf_counter() - start, "rss_main": _peak_rss_self()}


def _run_job(job: dict[str, Any]) -> None:
    warnings.filterwarnings("ignore")  # Lightning's and LitData's advice would bury the result line
    result = run_write_shards(job) if job["kind"] == "shards" else run_side(job)
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


def _in_fresh_process(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a new Python process (its own memory peaks) and return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--_job", json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, env=cli_env())
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
    raise RuntimeError(f"{job['kind']} {job.get('side', '')} exited with status {done.returncode}{killed}:\n{tail}")


# --- the report ---------------------------------------------------------------------------------------------------


def _spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def _mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / _MB:,.0f}"


def _ratios(runs: dict[str, list[dict]], side: str) -> list[float]:
    """``side``'s training images/s over ``in_memory``'s, round by round."""
    return [run["training"] / base["training"] for run, base in zip(runs[side], runs["in_memory"])]


def _row(side: str, runs: list[dict], shards_s: float, ratios: list[float]) -> str:
    prep = [run["setup_s"] + (shards_s if side == "litdata" else 0) for run in runs]
    pss = [run["pss"] for run in runs if run["pss"] is not None]
    cells = [
        side,
        _spread(prep, 1),
        _mb(max(run["rss_main"] for run in runs)),
        _mb(max(run["rss_worker"] for run in runs)),
        _mb(max(pss) if pss else None),
        _spread([run["loader_alone"] for run in runs], 0),
        _spread([run["training"] for run in runs], 0),
        _spread(ratios, 2),
    ]
    return "| " + " | ".join(cells) + " |"


def _targets(runs: dict[str, list[dict]]) -> list[str]:
    rss = max(run["rss_main"] for run in runs["streaming"])
    ratio = statistics.median(_ratios(runs, "streaming"))
    return [
        f"Target: streaming peak RSS < {TARGET_STREAMING_MB:,} MB and independent of dataset size: main process "
        f"{_mb(rss)} MB, {'met' if rss / _MB < TARGET_STREAMING_MB else 'NOT met'} at this size (workers and PSS: "
        "see the table; size independence: compare the streaming row of runs with different --images)",
        f"Target: streaming training >= {TARGET_STREAMING_RATIO} × in_memory with {LOADER_WORKERS} workers: "
        f"{ratio:.2f} (median of same-round ratios), {'met' if ratio >= TARGET_STREAMING_RATIO else 'NOT met'}",
    ]


def _header(args: argparse.Namespace, generated_s: Optional[float], shards: dict, first: dict,
            loads: tuple[float, float]) -> list[str]:  # fmt: skip
    """What was run, and on what machine."""
    size, train = args.size, first["train_images"]
    written = "reused from --workdir" if generated_s is None else f"written in {generated_s:.1f} s"
    return [
        f"Image folder: {args.images:,} train + {test_image_count(args.images):,} test JPEGs (quality "
        f"{JPEG_QUALITY}) at {size}×{size} from Fashion-MNIST, {written} (not part of any side); {train:,} training "
        f"images after val_split {VAL_SPLIT}; decoded, they take {train * 3 * size * size / _MB:,.0f} MB",
        f"batch {BATCH_SIZE}, {LOADER_WORKERS} loader workers, torch threads 1 in each side's process; "
        f"{args.warmup} untimed + {args.batches} timed batches; {args.rounds} round(s), each side in a fresh process, "
        "order reversed every other round; model: 2 stride-2 convs (8, 16 filters), global average pool, SGD",
        f"litdata prep includes writing the shards once: {shards['seconds']:.1f} s (peak RSS of the writing process "
        f"{_mb(shards['rss_main'])} MB); in_memory and streaming prep is setup('fit')",
        f"Python {platform.python_version()} on {platform.platform()}",
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}; 1-min load average "
        f"{loads[0]:.2f} before, {loads[1]:.2f} after",
        f"Each side's process holds {_mb(first['rss_imports'])} MB RSS after its imports (torch, Lightning, LitData), "
        "before any data; figures: median (min–max) over rounds; memory: the largest over rounds",
    ]


def report_lines(args: argparse.Namespace, generated_s: Optional[float], shards: dict, runs: dict[str, list[dict]],
           loads: tuple[float, float]) -> list[str]:  # fmt: skip
    """The lines of the report: what was run, on what machine, the table, the targets."""
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += [_row(side, runs[side], shards["seconds"], _ratios(runs, side)) for side in SIDES]
    header = _header(args, generated_s, shards, runs["in_memory"][0], loads)
    return [*header, "", *table, "", *_targets(runs)]


# --- main ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(args: argparse.Namespace) -> Iterator[Path]:
    """``--workdir`` (kept), else a temporary folder removed afterwards unless ``--keep``."""
    if args.workdir:
        path = Path(args.workdir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="data_scale_"))
    try:
        yield path
    finally:
        if args.keep:
            print(f"Kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, help_text in (("images", "training JPEGs to write"), ("size", "side of the images in px"),
                            ("rounds", "fresh processes per side"), ("batches", "timed batches per pass"),
                            ("warmup", "untimed batches before timing")):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, help=f"{help_text} (default {FULL[name]}; --quick: {QUICK[name]})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the --quick defaults above")
    parser.add_argument("--workdir", help="where the image folder and shards go, kept for the next run "
                                          "(default: a temporary folder)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (without --workdir)")
    add_markdown_argument(parser)
    parser.add_argument("--_job", help=argparse.SUPPRESS)  # internal: one side, run in a fresh process
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.size < MIN_SIZE:
        parser.error(f"--size {args.size}: the small CNN needs at least {MIN_SIZE} px.")
    if min(args.images, args.rounds, args.batches) < 1 or args.warmup < 0:
        parser.error("--images, --rounds and --batches must be at least 1, --warmup at least 0.")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    report = Report(__file__, argv)
    args = _parse(argv)
    if args._job:
        _run_job(json.loads(args._job))
        return
    wall = time.perf_counter()
    with _workdir(args) as workdir:
        folder, generated_s = write_image_folder(workdir, args.images, args.size)
        common = {"folder": str(folder), "shards": str(workdir / "shards"), "size": args.size}
        shards = _in_fresh_process({"kind": "shards", **common})
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        load_before = os.getloadavg()[0]
        for round_ in range(args.rounds):
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                job = {"kind": "side", "side": side, "warmup": args.warmup, "batches": args.batches, **common}
                runs[side].append(_in_fresh_process(job))
        loads = (load_before, os.getloadavg()[0])
    lines = [*report_lines(args, generated_s, shards, runs, loads), f"Wall time: {time.perf_counter() - wall:.0f} s"]
    report.print("\n" + "\n".join(lines))
    report.write_markdown(args.markdown)


if __name__ == "__main__":
    main()
