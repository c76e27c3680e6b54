"""Sweeps with ``cli.py tune`` on Fashion-MNIST: what a second worker, pruning and a search buy.

    python benchmarks/tune.py [--parts workers pruning search] [--rounds 2] [--trials 20] [--train-size 6000]
                              [--epochs 3] [--data-dir DIR] [--markdown PATH]

- **workers**: trials per hour of one study run by 2 worker threads (one core each) against 1 (one core), on the
  same fixed trials (random sampler, no pruning), the two sides alternating over ``--rounds``.
- **pruning**: the same seeded TPE search of ``--trials`` LeNet trials with Hyperband pruning and without: the
  epochs each runs in all, and the best val/acc each finds, per round (a different seed each round).
- **search**: the best val/acc that a ``--trials`` search (configs/search/*.yaml) finds for LeNet and the
  BatchNorm CNN, against the shipped config's own val/acc on the same budget (``--train-size`` training images,
  ``--epochs`` epochs).

Every trial is a ``cli.py fit`` process of its own; figures are wall-clock on a shared machine, hence the rounds.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import REPO, Report, add_markdown_argument, cli_env

PARTS = ("workers", "pruning", "search")
EXPERIMENTS = {"LeNet": ("lenet_fashion_mnist", "lenet"), "BatchNorm CNN": ("bn_cnn_fashion_mnist", "bn_cnn")}


def _budget(args: argparse.Namespace) -> list[str]:
    """The trials' budget: a subset of the training images, a few epochs, no early stop or test."""
    extra = ["--data.init_args.train_size", str(args.train_size), "--trainer.max_epochs", str(args.epochs)]
    if args.data_dir:
        extra += ["--data.init_args.data_dir", args.data_dir]
    return [*extra, "--trainer.callbacks", "null", "--cpu_threads", "1"]


def _search_file(folder: Path, name: str) -> Path:
    """The shipped search file, scored by val/acc (maximize) so every part compares the same figure."""
    search = yaml.safe_load((REPO / "configs" / "search" / f"{name}.yaml").read_text())
    search["objective"] = {"metric": "val/acc", "direction": "maximize"}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(search))
    return path


def _tune(folder: Path, config: str, search: Path, args: argparse.Namespace, *options: str) -> list[dict]:
    """Run one study in ``folder``; its trials.csv rows."""
    command = [sys.executable, str(REPO / "cli.py"), "tune", "--config", str(REPO / "configs" / f"{config}.yaml")]
    command += ["--search", str(search), *options, *_budget(args)]
    result = subprocess.run(command, cwd=folder, env=cli_env(), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"cli.py tune failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    table = next((folder / "runs" / config).glob("tune-*")) / "trials.csv"
    with table.open() as handle:
        return list(csv.DictReader(handle))


def _best(rows: list[dict]) -> float:
    return max(float(r["value"]) for r in rows if r["state"] == "complete")


def part_workers(args: argparse.Namespace, report: Report) -> None:
    trials = max(4, args.trials // 5)
    report.print(f"Workers: {trials} LeNet trials (random sampler, no pruning) per study, one core per worker.")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            with tempfile.TemporaryDirectory() as tmp:
                search = _search_file(Path(tmp), "lenet")
                start = time.perf_counter()
                _tune(Path(tmp), "lenet_fashion_mnist", search, args, "--trials", str(trials), "--sampler", "random",
                      "--pruner", "none", "--workers", str(workers), "--seed", str(round_))  # fmt: skip
                rates[workers].append(trials * 3600 / (time.perf_counter() - start))
    ratios = [two / one for one, two in zip(rates[1], rates[2])]
    report.print("| workers | trials per hour (median, range over rounds) | 2 workers / 1, per round |")
    report.print("|---|---|---|")
    for workers, values in rates.items():
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if workers == 2 else "1.00"
        report.print(f"| {workers} | {statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f}) | {ratio} |")


def part_pruning(args: argparse.Namespace, report: Report) -> None:
    report.print(f"Pruning: {args.trials} LeNet trials (TPE), Hyperband against none, the same seed per round.")
    report.print(
        "| round | epochs run, none | epochs run, Hyperband | epochs saved | best val/acc, none | best, Hyperband |"
    )
    report.print("|---|---|---|---|---|---|")
    for round_ in range(args.rounds):
        side = {}
        for pruner in ("none", "hyperband"):
            with tempfile.TemporaryDirectory() as tmp:
                search = _search_file(Path(tmp), "lenet")
                rows = _tune(Path(tmp), "lenet_fashion_mnist", search, args, "--trials", str(args.trials),
                             "--pruner", pruner, "--seed", str(round_))  # fmt: skip
            side[pruner] = (sum(int(r["epochs"] or 0) for r in rows), _best(rows))
        saved = 1 - side["hyperband"][0] / side["none"][0]
        report.print(f"| {round_ + 1} | {side['none'][0]} | {side['hyperband'][0]} | {saved:.0%} | "
                     f"{side['none'][1]:.4f} | {side['hyperband'][1]:.4f} |")  # fmt: skip


def part_search(args: argparse.Namespace, report: Report) -> None:
    report.print(f"Search: the best val/acc of {args.trials} trials (TPE, Hyperband) against the shipped config, "
                 f"{args.train_size} training images, {args.epochs} epochs each.")  # fmt: skip
    report.print("| model | shipped config's val/acc | search's best (per round) | trials complete / pruned / failed |")
    report.print("|---|---|---|---|")
    for model, (config, search_name) in EXPERIMENTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            shipped = _shipped(Path(tmp), config, args)
        bests, counts = [], []
        for round_ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                search = _search_file(Path(tmp), search_name)
                rows = _tune(Path(tmp), config, search, args, "--trials", str(args.trials), "--seed", str(round_))
            bests.append(_best(rows))
            states = [r["state"] for r in rows]
            counts.append("/".join(str(states.count(s)) for s in ("complete", "pruned", "fail")))
        report.print(f"| {model} | {shipped:.4f} | {', '.join(f'{b:.4f}' for b in bests)} | {', '.join(counts)} |")


def _shipped(folder: Path, config: str, args: argparse.Namespace) -> float:
    """The shipped config's best val/acc on the same budget as a trial."""
    command = [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(REPO / "configs" / f"{config}.yaml")]
    command += [*_budget(args), "--test_after_fit", "false"]
    subprocess.run(command, cwd=folder, env=cli_env(), check=True, capture_output=True)
    metrics = next((folder / "runs" / config).glob("version_*")) / "metrics.csv"
    with metrics.open() as handle:
        return max(float(r["val/acc"]) for r in csv.DictReader(handle) if r.get("val/acc"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    parser.add_argument("--rounds", type=int, default=2, help="repeats of each measurement (default 2)")
    parser.add_argument("--trials", type=int, default=20, help="trials of a search (default 20)")
    parser.add_argument("--train-size", type=int, default=6000, help="training images per trial (default 6000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument("--data-dir", help="Fashion-MNIST's folder (default: the data config's)")
    add_markdown_argument(parser)
    args = parser.parse_args()
    report = Report(__file__)
    for part in args.parts:
        {"workers": part_workers, "pruning": part_pruning, "search": part_search}[part](args, report)
    report.write_markdown(args.markdown)


if __name__ == "__main__":
    main()
