"""Keras vs this package on the slides' LeNet and BatchNorm CNN: ms per training step (fp32 and bf16), parameter
counts, 1-epoch test accuracy, and how long ``lightning_cnn`` takes to start.

    python benchmarks/keras_parity.py [--keras-python PATH | --keras-venv DIR] [--steps 100] [--bf16-steps 20]
                                      [--warmup 10] [--rounds 3] [--batch-size 128] [--data-dir DIR] [--accuracy]
                                      [--markdown PATH]
    python benchmarks/keras_parity.py --startup-only [--markdown PATH]

The Keras side is the slides' code (``Sequential``, ``compile``, ``model.fit``) on Keras 3 + tensorflow-cpu, run by
another interpreter: ``--keras-python`` names an existing one, else the script creates a venv at ``--keras-venv``
(default ``.keras-venv`` in the repository root, a local folder: delete it when done) from
``benchmarks/requirements-keras.txt``. Keras is never a dependency of ``lightning_cnn``; this file runs under both
interpreters and imports neither torch nor ``lightning_cnn`` on the Keras side. Our side is ``python cli.py fit
--config configs/<model>.yaml`` as a user starts it.

Both sides get the same data (real Fashion-MNIST, Debian's ``dataset-fashion-mnist`` folder unless ``--data-dir``,
standardized with the datamodule's mean/std), the same batch size and the same number of steps (``--steps`` in fp32,
``--bf16-steps`` in bf16), on the CPU (Keras runs on tensorflow-cpu, so ours is kept on the CPU too). Each run is
a fresh process; in each round the runs alternate Keras fp32, ours fp32, Keras bf16, ours bf16 for one model,
then the other model. The first ``--warmup`` steps (graph tracing, allocator, loader start) are not timed; a
callback on each side times the next ``--steps`` (Keras ``on_train_batch_begin``/``end``; ours
``gpu_check.Probe``). bf16 is Keras' ``mixed_bfloat16`` policy vs ``--trainer configs/trainer/bf16.yaml``
(``bf16-mixed``). Our fit runs without logger, checkpoints, validation,
plots and progress bar, as Keras' ``fit(verbose=0)`` without validation does. The ratio Keras ÷ ours is taken per
round (runs minutes apart) and then summarized; above 1 means ours is faster. The defaults take about 25 minutes
on two CPU cores, most of it the BatchNorm CNN in bf16.

What each side builds, from the configs: LeNet with ``l2(1e-4)`` on both conv kernels and Adam; the BatchNorm CNN
with dropout 0.25/0.5 and Adadelta; optimizer hyper-parameters are read from the configs (torch defaults filled in)
and handed to Keras' optimizer of the same name. What stays each side's own default, as in the slides and the
configs: weight initialization (Keras glorot_uniform, torch kaiming_uniform) and BatchNorm momentum/epsilon (Keras
0.99/1e-3, torch 0.1/1e-5, the configs leave ``keras_batchnorm`` off). Both sides count parameters the Keras way
(BatchNorm's moving statistics as non-trainable); the script fails if they differ.

``--accuracy`` adds one fp32 epoch per model and side on Keras' ``validation_split=0.2`` (the last 12,000 training
images held out: the BatchNorm config's split; LeNet's config holds out a random 10%, overridden here so both sides
train on the same 48,000 images), then the 10,000 test images. About 5 minutes on two CPU cores.

Start-up: wall times of fresh processes (``import torch``, ``import pytorch_lightning``, ``import
lightning_cnn.cli``, ``python cli.py --help``; 3 alternating rounds), and from ``python -X importtime`` the self times
of Lightning's own import by package and of what ``lightning_cnn.cli`` adds on top of it. ``--startup-only``
measures only that: no Keras, no training, about a minute.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
from machine import (  # benchmarks/machine.py (on sys.path)
    Report,
    add_keras_arguments,
    add_markdown_argument,
    cli_env,
    cpu_name,
    keras_env,
    keras_python,
    quiet_fit_args,
    timing_fit_args,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Debian's dataset-fashion-mnist package: FashionMNISTDataModule.system_dirs.
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MODELS = {"LeNet": "lenet_fashion_mnist.yaml", "BatchNorm CNN": "bn_cnn_fashion_mnist.yaml"}
# precision -> (Keras dtype policy, our trainer piece, the precision Lightning must report)
PRECISIONS = {
    "fp32": ("float32", None, "32-true"),
    "bf16": ("mixed_bfloat16", "bf16.yaml", "bf16-mixed"),
}
SLIDES_WEIGHT_DECAY = 1e-4  # the slides' kernel_regularizer=regularizers.l2(weight_decay) on LeNet's convs
BN_CNN_DROPOUT = (0.25, 0.5)  # configs/bn_cnn_fashion_mnist.yaml (the slides do not show the rates)
VAL_SPLIT = 0.2  # Keras' validation_split=0.2 takes the last 20%; our val_split_mode "last" does the same
SEED = 42  # the configs' seed_everything
# torch optimizer argument -> Keras optimizer argument; any other argument must stay at its torch default.
_KERAS_OPTIMIZER_ARGS = {"lr": "learning_rate", "rho": "rho", "eps": "epsilon"}
_KERAS_OPTIMIZERS = {"Adam": "Adam", "Adadelta": "Adadelta"}
_RESULT_PREFIX = "RESULT "
_PARAMS = re.compile(r"^(Total|Trainable|Non-trainable) params: ([\d,]+)", re.MULTILINE)


# --- Keras side (runs under the Keras interpreter: numpy, keras and tensorflow only) ----------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (optionally gzipped): zero bytes, type, ndim, one big-endian uint32 per dim."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_path(folder: Path, name: str) -> Path:
    plain = folder / name
    return plain if plain.exists() else folder / f"{name}.gz"


def _idx_length(path: Path) -> int:
    """The first dimension of an IDX file, from its header."""
    with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as file:
        return int.from_bytes(file.read(8)[4:8], "big")


def _fashion_mnist(folder: Path, mean: float, std: float) -> dict[str, np.ndarray]:
    """NHWC float32 images standardized as the datamodule does (``(x / 255 - mean) / std``), int labels."""
    arrays = {key: _read_idx(_idx_path(folder, name)) for key, name in IDX_FILES.items()}
    for split in ("train", "test"):
        images = arrays[f"{split}_images"].astype(np.float32)[..., None] / np.float32(255)
        arrays[f"{split}_images"] = (images - np.float32(mean)) / np.float32(std)
    return arrays


def _keras_model(keras: Any, name: str) -> Any:
    """The slides' Keras code for ``name``."""
    from keras import layers, regularizers

    if name == "LeNet":
        l2 = SLIDES_WEIGHT_DECAY
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(4, (5, 5), padding="valid", kernel_regularizer=regularizers.l2(l2), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(12, (5, 5), padding="valid", activation="relu", kernel_regularizer=regularizers.l2(l2)),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dense(300, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ])  # fmt: skip
    conv_rate, dense_rate = BN_CNN_DROPOUT
    blocks = []
    for filters in (32, 60, 128):
        blocks += [
            layers.Conv2D(filters, (5, 5), padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Dropout(conv_rate),
            layers.MaxPooling2D(pool_size=(2, 2)),
        ]
    return keras.Sequential([
        keras.Input((28, 28, 1)), *blocks, layers.Flatten(), layers.Dense(100, activation="relu"),
        layers.Dropout(dense_rate), layers.Dense(10, activation="softmax"),
    ])  # fmt: skip


def keras_side(job: dict[str, Any]) -> dict[str, Any]:
    """One Keras run in this process: ``job["kind"]`` "time" (steps after warm-up) or "accuracy" (1 epoch + test)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    keras.mixed_precision.set_global_policy(job["policy"])
    data = _fashion_mnist(Path(job["data_dir"]), job["mean"], job["std"])
    model = _keras_model(keras, job["model"])
    optimizer = getattr(keras.optimizers, job["optimizer"]["name"])(**job["optimizer"]["args"])
    model.compile(loss=keras.losses.categorical_crossentropy, optimizer=optimizer, metrics=["accuracy"])
    y_train = keras.utils.to_categorical(data["train_labels"], 10)
    result: dict[str, Any] = {
        "total": model.count_params(),
        "trainable": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "non_trainable": sum(int(np.prod(w.shape)) for w in model.non_trainable_weights),
        "policy": keras.mixed_precision.global_policy().name,
        "versions": f"Keras {keras.__version__}, TensorFlow {tf.__version__}",
    }
    n_train = len(y_train) - int(len(y_train) * VAL_SPLIT)  # what validation_split leaves to train on
    if job["kind"] == "time":
        warmup, steps = job["warmup"], job["steps"]

        class StepTimer(keras.callbacks.Callback):
            """Steps ``warmup .. warmup + steps - 1``, from the first one's start to the last one's end.

            Not ``async_safe``: Keras then calls the batch hooks in the training loop's own thread, each step's logs
            ready, as Lightning's hooks run after each step."""

            def on_train_batch_begin(self, batch: int, logs: Optional[dict] = None) -> None:
                if batch == warmup:
                    self.start = time.perf_counter()

            def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
                if batch == warmup + steps - 1:
                    self.seconds = time.perf_counter() - self.start

        timer = StepTimer()
        model.fit(
            data["train_images"][:n_train], y_train[:n_train], batch_size=job["batch_size"], epochs=1,
            steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0,
        )  # fmt: skip
        result.update(ms=1000 * timer.seconds / steps, jit_compile=bool(model.jit_compile))
    else:
        start = time.perf_counter()
        history = model.fit(
            data["train_images"], y_train, batch_size=job["batch_size"], epochs=1, validation_split=VAL_SPLIT,
            verbose=0,
        )  # fmt: skip
        y_test = keras.utils.to_categorical(data["test_labels"], 10)
        _, test_acc = model.evaluate(data["test_images"], y_test, batch_size=job["batch_size"], verbose=0)
        result.update(
            n_train=n_train,
            n_val=len(y_train) - n_train,
            n_test=len(y_test),
            val_acc=float(history.history["val_accuracy"][-1]),
            test_acc=float(test_acc),
            seconds=time.perf_counter() - start,
        )
    return result


# --- our side (the project's interpreter) ---------------------------------------------------------------------------


def _optimizer_for_keras(config: str) -> dict[str, Any]:
    """The config's ``model.init_args.optimizer`` with torch's defaults filled in, as the Keras optimizer of the same name and settings.

    Raises:
        ValueError: If the config's optimizer or one of its settings has no Keras counterpart here.
    """
    import inspect

    import torch
    import yaml

    model = yaml.safe_load((CONFIGS / config).read_text())["model"]
    if isinstance(model, str):  # a model piece, named relative to the experiment
        model = yaml.safe_load((CONFIGS / model).read_text())
    # The module's default optimizer is torch.optim.Adam with its defaults (Keras' compile(optimizer="adam")).
    spec = (model.get("init_args") or {}).get("optimizer") or {"class_path": "torch.optim.Adam"}
    name = spec["class_path"].rsplit(".", 1)[-1]
    if name not in _KERAS_OPTIMIZERS:
        raise ValueError(
            f"{config}: optimizer {name} has no Keras counterpart here; use one of {sorted(_KERAS_OPTIMIZERS)}."
        )
    cls = getattr(torch.optim, name)
    settings = {key: p.default for key, p in inspect.signature(cls).parameters.items() if key not in ("params", "self")}
    settings.update(spec.get("init_args") or {})
    args = {keras_key: settings[key] for key, keras_key in _KERAS_OPTIMIZER_ARGS.items() if key in settings}
    if "betas" in settings:
        args["beta_1"], args["beta_2"] = settings["betas"]
    odd = {k: v for k, v in settings.items() if k not in _KERAS_OPTIMIZER_ARGS and k != "betas" and v}
    if odd:
        raise ValueError(f"{config}: {odd} has no Keras counterpart in this benchmark; extend _optimizer_for_keras.")
    return {"name": _KERAS_OPTIMIZERS[name], "args": {k: float(v) for k, v in args.items()}}


def run_ours(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``python cli.py fit`` on ``job["config"]`` in a fresh process: ms/step, or 1-epoch accuracy; parameter counts
    from the Keras-style summary it prints."""
    import yaml

    folder.mkdir(parents=True)
    command = [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(CONFIGS / job["config"])]
    if job["piece"]:
        command += ["--trainer", str(CONFIGS / "trainer" / job["piece"])]
    override: dict[str, Any] = {"callbacks": []}  # the BN config's EarlyStopping needs validation, off when timing
    if job["kind"] == "time":
        probe = {"out_dir": str(folder), "warmup": job["warmup"], "steps": job["steps"]}
        override["callbacks"] = [{"class_path": "gpu_check.Probe", "init_args": probe}]
        extra = timing_fit_args(job["warmup"], job["steps"])
    else:
        csv_logger = {
            "class_path": "lightning_cnn.loggers.CSVLogger",
            "init_args": {"save_dir": str(folder), "name": ""},
        }
        override["logger"] = [csv_logger]
        extra = [
            "--trainer.max_epochs", "1",
            "--data.init_args.val_split", str(VAL_SPLIT),
            "--data.init_args.val_split_mode", "last",
            "--test_after_fit", "true",  # no checkpoint is saved, so it tests the weights after the epoch
            "--report.enabled", "false",
        ]  # fmt: skip
    (folder / "override.yaml").write_text(yaml.safe_dump({"trainer": override}))
    command += [
        "--config", str(folder / "override.yaml"),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--data.init_args.data_dir", job["data_dir"],
        "--data.init_args.download", "false",
        "--data.init_args.batch_size", str(job["batch_size"]),
        *quiet_fit_args(folder),
        *extra,
    ]  # fmt: skip
    env = cli_env()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    counts = {kind: int(value.replace(",", "")) for kind, value in _PARAMS.findall(done.stdout)}
    if done.returncode != 0 or len(counts) != 3:
        _fail(f"ours {job['model']} {job['precision']} {job['kind']}", done)
    result: dict[str, Any] = {
        "total": counts["Total"],
        "trainable": counts["Trainable"],
        "non_trainable": counts["Non-trainable"],
    }
    if job["kind"] == "time":
        record = json.loads((folder / "rank0.json").read_text())
        result.update(ms=1000 * record["seconds"] / record["steps"], precision=record["precision"])
    else:
        rows = list(csv.DictReader(next(folder.rglob("metrics.csv")).open()))
        result.update(
            val_acc=float(next(r["val/acc"] for r in rows if r.get("val/acc"))),
            test_acc=float(next(r["test/acc"] for r in rows if r.get("test/acc"))),
            seconds=seconds,
        )
    return result


def run_keras(job: dict[str, Any], keras_python: str) -> dict[str, Any]:
    """:func:`keras_side` under the Keras interpreter, in a fresh process."""
    done = subprocess.run(
        [keras_python, str(Path(__file__).resolve()), "--_keras-job", json.dumps(job)],
        env=keras_env(),
        capture_output=True,
        text=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    _fail(f"Keras {job['model']} {job['precision']} {job['kind']}", done)
    raise AssertionError  # unreachable: _fail exits


def _fail(what: str, done: subprocess.CompletedProcess) -> None:
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
    sys.exit(f"{what}: exited with status {done.returncode}:\n{tail}")


# --- start-up --------------------------------------------------------------------------------------------------------


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def _import_self_times(module: str) -> dict[str, int]:
    """``python -X importtime -c "import <module>"``: each imported module's own (self) time in µs."""
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=REPO, check=True, capture_output=True,
        text=True,
    ).stderr  # fmt: skip
    times = {}
    for line in traced.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            own, _, name = line[len("import time:") :].split("|")
            times[name.strip()] = int(own)
    return times


def startup(runs: int = 3) -> list[str]:
    """Lines on how long ``lightning_cnn`` takes to start, and how much of it is ours: wall times of fresh processes
    (the commands alternating, ``runs`` rounds), then ``-X importtime`` self times split into what importing
    Lightning alone costs and what ``lightning_cnn.cli`` adds on top."""
    python = sys.executable
    commands = {
        "import torch": [python, "-c", "import torch"],
        "import pytorch_lightning": [python, "-c", "import pytorch_lightning"],
        "import lightning_cnn.cli": [python, "-c", "import lightning_cnn.cli"],
        "python cli.py --help": [python, "cli.py", "--help"],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            walls[name].append(_wall(command))
    lightning = _import_self_times("pytorch_lightning")
    ours = _import_self_times("lightning_cnn.cli")
    added: dict[str, int] = {}  # top-level package -> self µs of the modules Lightning alone does not import
    for name, own in ours.items():
        if name not in lightning:
            added[name.split(".")[0]] = added.get(name.split(".")[0], 0) + own
    by_package: dict[str, int] = {}
    for name, own in lightning.items():
        by_package[name.split(".")[0]] = by_package.get(name.split(".")[0], 0) + own

    lines = [f"| fresh process (the commands alternating) | wall time, s: median (min–max) of {runs} |", "|---|---|"]
    lines += [f"| {name} | {_spread(values, 2)} |" for name, values in walls.items()]
    lines.append(
        f"python -X importtime (one run, self times): importing pytorch_lightning alone takes "
        f"{sum(lightning.values()) / 1e6:.2f} s; lightning_cnn.cli adds {sum(added.values()) / 1e6:.2f} s."
    )
    top = ", ".join(f"{pkg} {us / 1e6:.2f}" for pkg, us in sorted(by_package.items(), key=lambda kv: -kv[1])[:6])
    lines.append(f"  Lightning's import by package (s): {top}")
    top = ", ".join(f"{pkg} {us / 1e6:.2f}" for pkg, us in sorted(added.items(), key=lambda kv: -kv[1])[:6])
    lines.append(f"  What lightning_cnn.cli adds, by package (s): {top}")
    return lines


# --- report ---------------------------------------------------------------------------------------------------------


def _spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _counts(r: dict) -> str:
    return f"{r['total']:,} / {r['trainable']:,} / {r['non_trainable']:,}"


def main(argv: Optional[list[str]] = None) -> int:
    report = Report(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_keras_arguments(parser)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per fp32 run")
    parser.add_argument(
        "--bf16-steps",
        type=int,
        default=20,
        help="timed steps per bf16 run: fewer, since a CPU without native bf16 (AVX512-BF16, AMX) emulates it on "
        "both sides, ~10x slower than fp32 for the BatchNorm CNN",
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per side, model and precision")
    parser.add_argument("--batch-size", type=int, default=128, help="the configs' batch size")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="Fashion-MNIST IDX files (plain or .gz)")
    parser.add_argument("--accuracy", action="store_true",
                        help="also 1 fp32 epoch + test per model and side (about 5 min on 2 CPU cores)")  # fmt: skip
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL",
                        help=f"which models (default: all of {list(MODELS)})")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS),
                        help="which precisions (default: all)")  # fmt: skip
    parser.add_argument("--skip-startup", action="store_true", help="leave out the start-up measurement")
    parser.add_argument("--startup-only", action="store_true", help="only the start-up measurement (no Keras needed)")
    add_markdown_argument(parser)
    parser.add_argument("--_keras-job", help=argparse.SUPPRESS)  # internal: one Keras run in this process
    args = parser.parse_args(argv)
    if args._keras_job:
        warnings.filterwarnings("ignore")
        print(_RESULT_PREFIX + json.dumps(keras_side(json.loads(args._keras_job))), flush=True)
        return 0
    if args.startup_only:
        load_before = os.getloadavg()[0]
        lines = startup()
        report.print(f"Start-up (this package, fresh processes; 1-min load average {load_before:.2f} before, "
                     f"{os.getloadavg()[0]:.2f} after):")  # fmt: skip
        report.print("\n".join(lines))
        report.write_markdown(args.markdown)
        return 0

    missing = [n for n in IDX_FILES.values() if not _idx_path(Path(args.data_dir), n).exists()]
    if missing:
        parser.error(f"--data-dir {args.data_dir} lacks {', '.join(missing)}[.gz]; install Debian's "
                     "dataset-fashion-mnist or point --data-dir at a folder with the four IDX files.")  # fmt: skip
    n_images = _idx_length(_idx_path(Path(args.data_dir), IDX_FILES["train_labels"]))
    n_train = n_images - int(n_images * VAL_SPLIT)  # as Keras' validation_split and our "last" split
    train_batches = n_train // args.batch_size
    longest = max(args.steps, args.bf16_steps)
    if args.warmup < 1 or min(args.steps, args.bf16_steps) < 1 or args.warmup + longest > train_batches:
        parser.error(f"--warmup {args.warmup}, --steps {args.steps}, --bf16-steps {args.bf16_steps}: each must be at "
                     f"least 1, and warm-up + steps at most {train_batches} (one epoch of {n_train:,} images at batch "
                     f"{args.batch_size}).")  # fmt: skip

    from lightning_cnn.data import FashionMNISTDataModule

    keras_interpreter = keras_python(args)
    wall = time.perf_counter()
    base = {"data_dir": args.data_dir, "batch_size": args.batch_size, "warmup": args.warmup,
            "mean": FashionMNISTDataModule.mean[0], "std": FashionMNISTDataModule.std[0]}  # fmt: skip
    optimizers = {model: _optimizer_for_keras(config) for model, config in MODELS.items()}
    runs: dict[tuple[str, str, str], list[dict]] = {}
    accuracy: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="keras_parity_") as tmp:

        def job(model: str, precision: str, kind: str) -> dict[str, Any]:
            policy, piece, _ = PRECISIONS[precision]
            steps = args.bf16_steps if precision == "bf16" else args.steps
            return {**base, "model": model, "precision": precision, "kind": kind, "config": MODELS[model],
                    "steps": steps, "policy": policy, "piece": piece, "optimizer": optimizers[model]}  # fmt: skip

        load_before = os.getloadavg()[0]
        for round_ in range(args.rounds):
            for model in args.models:
                for precision in args.precisions:
                    j = job(model, precision, "time")
                    runs.setdefault((model, precision, "keras"), []).append(run_keras(j, keras_interpreter))
                    folder = Path(tmp) / f"r{round_}_{model.replace(' ', '_')}_{precision}"
                    runs.setdefault((model, precision, "ours"), []).append(run_ours(j, folder))
                    print(f"round {round_ + 1}/{args.rounds} {model} {precision}: Keras "
                          f"{runs[model, precision, 'keras'][-1]['ms']:.1f} ms/step, ours "
                          f"{runs[model, precision, 'ours'][-1]['ms']:.1f} ms/step", flush=True)  # fmt: skip
        load_after = os.getloadavg()[0]
        if args.accuracy:
            for model in args.models:
                j = job(model, "fp32", "accuracy")
                accuracy[model, "keras"] = run_keras(j, keras_interpreter)
                accuracy[model, "ours"] = run_ours(j, Path(tmp) / f"accuracy_{model.replace(' ', '_')}")
        start_lines = [] if args.skip_startup else startup()

    import pytorch_lightning as pl
    import torch

    failed = []
    first_keras = next(iter(runs.values()))[0]
    report.print(
        f"\nFashion-MNIST ({args.data_dir}), batch {args.batch_size}, {args.steps} (fp32) / {args.bf16_steps} (bf16) "
        f"timed steps after {args.warmup} warm-up, {args.rounds} round(s), each run a fresh process, sides "
        "alternating; CPU only"
    )
    report.print(
        f"Machine: {cpu_name()}, {os.cpu_count()} logical cores, Python {platform.python_version()} on "
        f"{platform.platform()}; ours: torch {torch.__version__} ({torch.get_num_threads()} threads), Lightning "
        f"{pl.__version__}; Keras side: {first_keras['versions']}, jit_compile {first_keras['jit_compile']} "
        f"(Keras' 'auto' turns XLA off on CPU-only machines); 1-min load average {load_before:.2f} before the timed "
        f"runs, {load_after:.2f} after"
    )
    report.print("\n| model | precision | Keras ms/step | ours ms/step | Keras ÷ ours |")
    report.print("|---|---|---|---|---|")
    for model in args.models:
        for precision in args.precisions:
            policy, _, lightning_precision = PRECISIONS[precision]
            k, o = runs[model, precision, "keras"], runs[model, precision, "ours"]
            ratios = [a["ms"] / b["ms"] for a, b in zip(k, o)]
            label = f"{precision} ({policy} / {lightning_precision})"
            report.print(
                f"| {model} | {label} | {_spread([r['ms'] for r in k])} | {_spread([r['ms'] for r in o])} | "
                f"{_spread(ratios, 2)} |"
            )
            got = {r["policy"] for r in k} | {r["precision"] for r in o}
            if got != {policy, lightning_precision}:
                failed.append(f"{model} {precision}: ran as {sorted(got)}")
    report.print("Figures: median over rounds (min–max); the ratio is taken per round, then summarized.")

    report.print("\n| model | Keras params total / trainable / non-trainable | ours | equal |")
    report.print("|---|---|---|---|")
    for model in args.models:
        counts = {_counts(r) for side in ("keras", "ours") for p in args.precisions for r in runs[model, p, side]}
        k, o = runs[model, args.precisions[0], "keras"][0], runs[model, args.precisions[0], "ours"][0]
        equal = len(counts) == 1
        report.print(f"| {model} | {_counts(k)} | {_counts(o)} | {'yes' if equal else 'NO'} |")
        if not equal:
            failed.append(f"{model}: parameter counts differ ({sorted(counts)})")

    if accuracy:
        sizes = accuracy[args.models[0], "keras"]
        report.print(
            f"\n1 epoch, fp32, batch {args.batch_size}, trained on the first {sizes['n_train']:,} training images "
            f"(the last {sizes['n_val']:,} validate), tested on the {sizes['n_test']:,} test images; seconds: the "
            "whole process (start-up, epoch, validation, test)"
        )
        report.print(
            "| model | optimizer (both sides) | Keras val / test acc | ours val / test acc | Keras s | ours s |"
        )
        report.print("|---|---|---|---|---|---|")
        for model in args.models:
            k, o = accuracy[model, "keras"], accuracy[model, "ours"]
            opt = optimizers[model]
            settings = ", ".join(f"{key} {value:g}" for key, value in opt["args"].items())
            report.print(
                f"| {model} | {opt['name']}({settings}) | {k['val_acc']:.4f} / {k['test_acc']:.4f} | "
                f"{o['val_acc']:.4f} / {o['test_acc']:.4f} | {k['seconds']:.0f} | {o['seconds']:.0f} |"
            )

    if start_lines:
        report.print("\nStart-up (this package, fresh processes):")
        report.print("\n".join(start_lines))
    report.print(f"Wall time: {time.perf_counter() - wall:.0f} s")
    report.write_markdown(args.markdown)
    if failed:
        print(f"FAILED: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
