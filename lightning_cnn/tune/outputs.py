"""What a sweep leaves in its folder: ``trials.csv``, ``best.yaml`` and Optuna's plots as PNG."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lightning_cnn.paths import written_whole

if TYPE_CHECKING:
    from lightning_cnn.tune.study import Sweep

__all__ = ["write_outputs"]

_PLOTS = {
    "history.png": "plot_optimization_history",
    "importances.png": "plot_param_importances",
    "parallel_coordinates.png": "plot_parallel_coordinate",
}


def write_outputs(sweep: Sweep) -> None:
    """Write the study's table, its best config and its plots; print where they are."""
    trials = sweep.study.get_trials(deepcopy=False)
    _write_table(sweep.folder / "trials.csv", trials, [p.key for p in sweep.space.params])
    best = _best(sweep)
    lines = [f"tune: {len(trials)} trials in {sweep.folder / 'trials.csv'}"]
    if best is not None:
        path = _write_best(sweep, best)
        lines.append(
            f"best: trial {best.number}, {sweep.metric} {best.value:.4f}; rerun it: python cli.py fit --config {path}"
        )
    else:
        lines.append("best: none yet (no trial completed)")
    plots = _write_plots(sweep) if best is not None else []
    if plots:
        lines.append("plots: " + ", ".join(str(p) for p in plots))
    print("\n".join(lines), flush=True)


def _best(sweep: Sweep) -> Any:
    try:
        return sweep.study.best_trial
    except ValueError:
        return None


def _write_table(path: Path, trials: list, keys: list[str]) -> None:
    columns = ["number", "state", "value", *keys, "epochs", "wall_s", "folder", "reason"]
    with written_whole(path) as partial, partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for trial in trials:
            attrs = trial.user_attrs
            writer.writerow(
                {
                    "number": trial.number,
                    "state": trial.state.name.lower(),
                    "value": "" if trial.value is None else trial.value,
                    **{key: trial.params.get(key, "") for key in keys},
                    "epochs": attrs.get("epochs", ""),
                    "wall_s": attrs.get("wall_s", ""),
                    "folder": attrs.get("folder", ""),
                    "reason": attrs.get("reason") or attrs.get("lost", ""),
                }
            )


def _write_best(sweep: Sweep, best: Any) -> Path:
    """The best trial's whole config, made to rerun as a run of its own: its loggers back to the default (a new
    ``runs/best/version_N``) and ``test_after_fit`` as the experiment had it (trials skip the test)."""
    folder = Path(best.user_attrs["folder"])
    config = yaml.safe_load((folder / "version_0" / "config.yaml").read_text())
    config.get("trainer", {}).pop("logger", None)
    config["test_after_fit"] = bool(sweep.base.test_after_fit)
    path = sweep.folder / "best.yaml"
    header = (
        f"# The best trial of study {sweep.study.study_name!r}: trial {best.number}, {sweep.metric} "
        f"{best.value:.6g}.\n#   python cli.py fit --config {path}\n"
    )
    with written_whole(path) as partial:
        partial.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def _write_plots(sweep: Sweep) -> list[Path]:
    """Optuna's matplotlib plots of the study; a plot that needs more finished trials than there are is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    written = []
    for name, function in _PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = getattr(plots, function)(sweep.study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need two finished trials that differ
        if name == "history.png":
            axes.set_ylabel(sweep.metric)  # Optuna's label is "Objective Value"
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = sweep.folder / name
        with written_whole(path) as partial:
            figure.savefig(partial, format="png", dpi=100)
        plt.close(figure)
        written.append(path)
    return written
