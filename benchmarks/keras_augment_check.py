"""Our Keras-style augmentation against Keras' own ``ImageDataGenerator``, convention by convention.

    python benchmarks/keras_augment_check.py [--keras-python PATH | --keras-venv DIR] [--draws 4000] [--markdown PATH]

Two checks, each on Keras 3 run by another interpreter (``--keras-python``, else a venv at ``--keras-venv`` created
from ``benchmarks/requirements-keras.txt``; that interpreter also needs scipy, which ``apply_transform`` uses):

1. Fixed parameters. ``ImageDataGenerator(fill_mode, cval, data_format).apply_transform(x, {"theta", "tx", "ty",
   "shear", "zx", "zy", "flip_horizontal", "flip_vertical"})`` against our two paths given the same numbers:
   per sample (``keras_pipeline``'s ``KerasAffine`` warp with ``keras_pixel_matrix``, then its flips, on uint8 HWC)
   and batched (``BatchedKerasAugment.apply`` on a float NCHW batch). Each case runs on 28×28×1, 20×32×1 and
   32×20×3 images (smooth, asymmetric, so that a wrong sign, axis or centre moves whole regions), plus Keras'
   ``channels_first`` on one case. The name-for-name mapping is ``angle = theta``, ``shift_x = tx``,
   ``shift_y = ty``, ``zoom_x = zx``, ``zoom_y = zy``, ``flip_x/flip_y = flip_horizontal/flip_vertical``. Where it
   fails, the case is re-run with the angle negated, with Keras' pivot, and against Keras with scipy's ``grid-``
   edge mode (see below), to say which convention differs.
2. Random draws. ``get_random_transform`` against ``BatchedKerasAugment.sample`` and ``KerasAffine``'s draws (read
   back from its matrices): min, max, mean and standard deviation of each parameter over ``--draws`` draws.

Verdicts: PASS; KERAS PIVOT (Keras 3 turns and zooms a non-square image about ``((h - 1) / 2, (w - 1) / 2)`` taken
as (x, y), not its centre; ours matches once given that pivot); SCIPY EDGE (Keras hands ``fill_mode`` to
``scipy.ndimage`` as is: its ``constant`` fills a sample point less than a pixel outside the image with ``cval``
instead of blending, its ``wrap`` repeats with a period of n - 1 pixels; ours matches scipy's ``grid-constant`` /
``grid-wrap``); KERAS BUG (the shift draws swap the axes: ``height_shift_range × height`` moves the image
sideways); NOT PORTED (shear; ``wrap`` in the batched path); DIFF, naming what makes it pass. The exit status is 1
if any case is DIFF.

Tolerance: max |Δ| ≤ 1.5 grey levels (0-255). The per-sample path works on uint8 (rounding: 0.5) and OpenCV puts
bilinear samples on a 1/32-pixel grid (up to 1/64 px × the test images' steepest slope of about 40 levels/px: 0.6);
the batched path is float32. A wrong sign, axis or centre costs 10 levels and more. The share of pixels off by more
than 1 level is printed too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
from machine import (  # benchmarks/machine.py (on sys.path)
    Report,
    add_keras_arguments,
    add_markdown_argument,
    keras_env,
    keras_python,
)

SHAPES = {"28×28×1": (28, 28, 1), "20×32×1": (20, 32, 1), "32×20×3": (32, 20, 3)}  # (height, width, channels)
COMBINED = {"theta": 25.0, "tx": 5.0, "ty": -4.0, "zx": 1.2, "zy": 0.9, "flip_horizontal": True}
SHIFT = {"tx": 5.5, "ty": -4.5}  # half pixels: every output pixel is a blend, also at the fill's edge
CASES = [  # (name, apply_transform parameters, fill_mode, cval)
    ("rotation 30°", {"theta": 30.0}, "nearest", 0.0),
    ("rotation 90°", {"theta": 90.0}, "nearest", 0.0),
    ("shift tx=5", {"tx": 5.0}, "nearest", 0.0),
    ("shift ty=-4", {"ty": -4.0}, "nearest", 0.0),
    ("zoom zx=1.3 zy=0.8", {"zx": 1.3, "zy": 0.8}, "nearest", 0.0),
    ("shear 20°", {"shear": 20.0}, "nearest", 0.0),
    ("flip horizontal", {"flip_horizontal": True}, "nearest", 0.0),
    ("flip vertical", {"flip_vertical": True}, "nearest", 0.0),
    ("shift tx=5.5 ty=-4.5", SHIFT, "constant", 200.0),
    ("shift tx=5.5 ty=-4.5", SHIFT, "reflect", 0.0),
    ("shift tx=5.5 ty=-4.5", SHIFT, "wrap", 0.0),
    ("combined", COMBINED, "nearest", 0.0),
    ("combined", COMBINED, "constant", 200.0),
    ("combined", COMBINED, "reflect", 0.0),
    ("combined", COMBINED, "wrap", 0.0),
]
CHANNELS_FIRST_CASE = ("combined, channels_first", COMBINED, "nearest", 0.0)
TOLERANCE = 1.5  # grey levels; see the module docstring
GRID_MODES = {"constant": "grid-constant", "wrap": "grid-wrap"}  # scipy's edge modes that OpenCV's borders match
# get_random_transform's keys -> what they move, in apply_transform's sense (tx along x).
QUANTITIES = {"theta": "angle °", "tx": "x shift px", "ty": "y shift px", "zx": "x zoom", "zy": "y zoom",
              "flip_horizontal": "h-flip", "flip_vertical": "v-flip"}  # fmt: skip
DRAW_SETS = {  # name -> (ImageDataGenerator arguments, image shape); "slides" is filled in from the package
    "unequal ranges, 20×32": (dict(rotation_range=45, width_shift_range=0.2, height_shift_range=0.05,
                                   zoom_range=[0.6, 1.1], horizontal_flip=True), (20, 32, 1)),
    "int pixel shifts, 28×28": (dict(width_shift_range=3, height_shift_range=3), (28, 28, 1)),
    "float pixel shifts, 28×28": (dict(width_shift_range=2.5, height_shift_range=2.5), (28, 28, 1)),
}  # fmt: skip


def sample_image(height: int, width: int, channels: int) -> np.ndarray:
    """A smooth uint8 HWC image with no symmetry: a slanted wave, a blob off-centre, a vertical ramp."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    sigma = 0.12 * min(height, width)
    blob = 70 * np.exp(-((x - 0.68 * width) ** 2 + (y - 0.3 * height) ** 2) / (2 * sigma**2))
    planes = [110 + 50 * np.sin(2 * np.pi * (1.3 * x / width + 0.4 * y / height + 0.25 * c)) + blob + 30 * y / height
              for c in range(channels)]  # fmt: skip
    return np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)


# --- Keras side (the Keras interpreter: numpy, scipy and keras only) --------------------------------------------------


def keras_side(folder: Path) -> None:
    """Read ``inputs.npz`` in ``folder``, write Keras' outputs and draws to ``keras.npz``."""
    try:
        import scipy  # noqa: F401  # apply_transform's warp: say so here rather than fail deep inside Keras
    except ImportError:
        sys.exit(f"{sys.executable} lacks scipy, which ImageDataGenerator's transforms need: "
                 f"{sys.executable} -m pip install scipy")  # fmt: skip
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    inputs = np.load(folder / "inputs.npz")
    spec = json.loads(str(inputs["spec"]))
    out = {}
    for job in spec["transforms"]:
        generator = ImageDataGenerator(fill_mode=job["fill_mode"], cval=job["cval"], data_format=job["data_format"])
        image = inputs[job["shape"]].astype(np.float32)
        first = job["data_format"] == "channels_first"
        for suffix, mode in (("", job["fill_mode"]), ("/grid", GRID_MODES.get(job["fill_mode"]))):
            if mode:  # apply_transform hands fill_mode to scipy unchecked (the constructor checks only its own)
                generator.fill_mode = mode
                x = generator.apply_transform(image.transpose(2, 0, 1) if first else image, job["params"])
                out[job["key"] + suffix] = x.transpose(1, 2, 0) if first else x
    for name, (args, shape) in spec["draws"].items():
        generator = ImageDataGenerator(**args)
        np.random.seed(0)
        draws = [generator.get_random_transform(tuple(shape)) for _ in range(spec["n_draws"])]
        for key in QUANTITIES:
            out[f"{name}/{key}"] = np.array([float(d[key]) for d in draws])
    np.savez(folder / "keras.npz", **out)


# --- our side (the project's interpreter) -------------------------------------------------------------------------


def our_params(params: dict[str, Any], height: int, width: int, angle_sign: float = 1.0, keras_pivot: bool = False):
    """``apply_transform``'s parameters as our ``KerasParams`` (floats), name for name.

    ``keras_pivot`` moves the shift so that the turn and zoom pivot where Keras 3 puts it on a non-square image:
    at ``(x, y) = ((h - 1) / 2, (w - 1) / 2)`` instead of ``((w - 1) / 2, (h - 1) / 2)``. Our map is ``in = L·(out -
    c) + R·s + c`` with ``L = R·Z``; pivoting at ``c + d`` adds ``(I - L)·d``, i.e. ``s += Z·(L⁻¹ - I)·d``.
    """
    from lightning_cnn.augmentation import KerasParams, keras_pixel_matrix

    angle, zx, zy = angle_sign * params.get("theta", 0.0), params.get("zx", 1.0), params.get("zy", 1.0)
    shift = np.array([params.get("tx", 0.0), params.get("ty", 0.0)], dtype=np.float64)
    if keras_pivot:
        linear = keras_pixel_matrix(KerasParams(angle, 0.0, 0.0, zx, zy), height, width)[:, :2]
        d = np.array([(height - width) / 2, (width - height) / 2])
        shift += np.diag([zx, zy]) @ (np.linalg.inv(linear) - np.eye(2)) @ d
    flips = [float(bool(params.get(k, False))) for k in ("flip_horizontal", "flip_vertical")]
    return KerasParams(angle, shift[0], shift[1], zx, zy, *flips)


def per_sample(image: np.ndarray, params: Any, fill_mode: str, cval: float) -> np.ndarray:
    """``keras_pipeline``'s transforms in order, on uint8 HWC, with fixed parameters: grey levels, float."""
    from lightning_cnn.augmentation import KerasAffine, KerasParams, keras_pipeline, keras_pixel_matrix

    height, width = image.shape[:2]
    # rotation_range=1 only so that the pipeline holds a KerasAffine; its draws are replaced by `params`.
    pipeline = keras_pipeline(rotation_range=1, horizontal_flip=True, vertical_flip=True, fill_mode=fill_mode,
                              cval=cval)  # fmt: skip
    affine = KerasParams(params.angle, params.shift_x, params.shift_y, params.zoom_x, params.zoom_y)
    wanted = {"HorizontalFlip": params.flip_x, "VerticalFlip": params.flip_y}
    for transform in pipeline.transforms:
        if isinstance(transform, KerasAffine):
            image = transform.apply(image, matrix=keras_pixel_matrix(affine, height, width))
        elif wanted[type(transform).__name__]:
            image = transform.apply(image)
    return image.astype(np.float64)


def batched(image: np.ndarray, params: Any, fill_mode: str, cval: float) -> Optional[np.ndarray]:
    """``BatchedKerasAugment.apply`` on the image as a float batch of one, in grey levels; None where refused."""
    import torch

    from lightning_cnn.augmentation import BatchedKerasAugment

    try:
        augment = BatchedKerasAugment(fill_mode=fill_mode, cval=cval, seed=0)
    except ValueError:  # fill_mode="wrap": grid_sample cannot wrap
        return None
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return augment.apply(x, params)[0].permute(1, 2, 0).double().numpy() * 255


def compare(ours: np.ndarray, keras: np.ndarray, tolerance: float = TOLERANCE) -> tuple[float, float, bool]:
    """Max |Δ| (grey levels), the share of pixels off by more than 1 level, and whether max |Δ| ≤ ``tolerance``."""
    delta = np.abs(np.asarray(ours, np.float64) - np.asarray(keras, np.float64))
    return float(delta.max()), float((delta > 1).mean()), bool(delta.max() <= tolerance)


def check_case(image: np.ndarray, params: dict, fill_mode: str, cval: float, keras: dict[str, np.ndarray]) -> tuple:
    """One case on both paths against ``keras["as is"]`` (and ``keras["grid"]``, Keras with scipy's ``grid-`` mode):
    ``(cells, verdict)``. A failing case is re-run under each combination of explanations until one passes."""
    if params.get("shear"):
        return ["n/a", "n/a"], "NOT PORTED (no shear in KerasParams)"
    height, width = image.shape[:2]

    def run(angle_sign: float, pivot: bool, reference: np.ndarray) -> list:
        p = our_params(params, height, width, angle_sign, pivot)
        outs = [per_sample(image, p, fill_mode, cval), batched(image, p, fill_mode, cval)]
        return [None if o is None else compare(o, reference) for o in outs]

    results = run(1.0, False, keras["as is"])
    cells = ["n/a" if r is None else f"{r[0]:.2f} / {100 * r[1]:.1f}%" for r in results]
    note = " (batched: NOT PORTED, no wrap)" if results[1] is None else ""
    if all(r is None or r[2] for r in results):
        return cells, "PASS" + note
    for sign, pivot, grid in itertools.product((1.0, -1.0), (False, True), (False, True)):
        if (pivot and height == width) or (grid and "grid" not in keras) or (sign, pivot, grid) == (1.0, False, False):
            continue
        tried = run(sign, pivot, keras["grid" if grid else "as is"])
        if all(r is None or r[2] for r in tried):
            worst = max(r[0] for r in tried if r is not None)
            parts = [label for label, on in (("−angle", sign < 0), ("Keras' pivot", pivot),
                                             (f"scipy {GRID_MODES.get(fill_mode)}", grid)) if on]  # fmt: skip
            kinds = [kind for kind, on in (("KERAS PIVOT", pivot), ("SCIPY EDGE", grid)) if on]
            kind = "DIFF: angle sign" if sign < 0 else " + ".join(kinds)
            return cells, f"{kind} (with {', '.join(parts)}: max {worst:.2f}){note}"
    return cells, "DIFF" + note


def our_draws(args: dict[str, Any], shape: tuple[int, int, int], n: int) -> dict[str, dict[str, np.ndarray]]:
    """Our parameters for ``n`` draws, by ``get_random_transform`` key: ``BatchedKerasAugment.sample`` and
    ``KerasAffine`` (its draws read back from the matrices: ``L = R·Z``, ``t = R·s`` about the centre)."""
    from lightning_cnn.augmentation import BatchedKerasAugment, KerasAffine, keras_pipeline

    height, width = shape[:2]
    p = BatchedKerasAugment(**args, seed=0).sample(n, height, width)
    values = (p.angle, p.shift_x, p.shift_y, p.zoom_x, p.zoom_y, p.flip_x, p.flip_y)
    result = {"batched": {k: np.asarray(v, dtype=np.float64) for k, v in zip(QUANTITIES, values)}}
    affine = next(t for t in keras_pipeline(**args, seed=0).transforms if isinstance(t, KerasAffine))
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    rows = []
    for _ in range(n):
        m = affine.get_params_dependent_on_data({"shape": shape}, {})["matrix"]
        linear = m[:, :2]
        zoom = np.linalg.norm(linear, axis=0)
        rotation = linear / zoom
        shift = rotation.T @ (m[:, 2] - centre + linear @ centre)
        rows.append((math.degrees(math.atan2(rotation[1, 0], rotation[0, 0])), *shift, *zoom))
    result["per sample"] = dict(zip(QUANTITIES, np.array(rows).T))
    return result


def same_distribution(ours: np.ndarray, keras: np.ndarray) -> bool:
    """Whether two samples of one parameter look alike: min and max within 5% of Keras' spread, mean within 0.1 and
    std within 5% of Keras' std. For 4000 draws that is about 6 and 4 standard errors, while a range off by a
    factor or an axis (the differences looked for) moves them by 20% and more."""
    spread, std = float(np.ptp(keras)), float(np.std(keras))
    gaps = [(ours.min() - keras.min(), 0.05 * spread), (ours.max() - keras.max(), 0.05 * spread),
            (ours.mean() - keras.mean(), 0.1 * std), (ours.std() - std, 0.05 * std)]  # fmt: skip
    return all(abs(gap) <= bound + 1e-9 for gap, bound in gaps)


def _stats(values: np.ndarray) -> str:
    return f"{values.min():.2f} … {values.max():.2f}, {values.mean():.2f} ± {values.std():.2f}"


def main(argv: Optional[list[str]] = None) -> int:
    report = Report(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_keras_arguments(parser)
    add_markdown_argument(parser)
    parser.add_argument("--draws", type=int, default=4000, help="random draws per side and setting")
    parser.add_argument("--_keras-job", help=argparse.SUPPRESS)  # internal: the Keras side, on this folder
    args = parser.parse_args(argv)
    if args._keras_job:
        warnings.filterwarnings("ignore")
        keras_side(Path(args._keras_job))
        return 0

    from lightning_cnn.augmentation import SLIDES_IMAGE_DATA_GENERATOR

    draw_sets = {"slides, 28×28": (SLIDES_IMAGE_DATA_GENERATOR, (28, 28, 1)), **DRAW_SETS}
    images = {name: sample_image(*shape) for name, shape in SHAPES.items()}
    cases = [(str(i), case, "channels_last") for i, case in enumerate(CASES)]
    cases.append(("cf", CHANNELS_FIRST_CASE, "channels_first"))
    jobs = [
        dict(key=f"{key}/{shape}", case=case, shape=shape, params=params, fill_mode=fill, cval=cval, data_format=fmt)
        for key, (case, params, fill, cval), fmt in cases
        for shape in SHAPES
    ]
    spec = {"transforms": jobs, "draws": draw_sets, "n_draws": args.draws}
    with tempfile.TemporaryDirectory(prefix="keras_augment_") as tmp:
        np.savez(Path(tmp) / "inputs.npz", spec=json.dumps(spec), **images)
        done = subprocess.run([keras_python(args), str(Path(__file__).resolve()), "--_keras-job", tmp],
                              env=keras_env(), capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            sys.exit(f"The Keras side exited with status {done.returncode}:\n{tail}")
        keras = dict(np.load(Path(tmp) / "keras.npz"))

    failed: dict[str, list[str]] = {}  # kind of difference -> what shows it
    report.print(
        f"1. apply_transform with fixed parameters; max |Δ| in grey levels / share of pixels off by > 1 level "
        f"(tolerance: max {TOLERANCE} levels)\n"
    )
    report.print("| case | fill_mode | image | per sample | batched | verdict |\n|---|---|---|---|---|---|")
    for job in jobs:
        references = {name: keras[job["key"] + suffix] for name, suffix in (("as is", ""), ("grid", "/grid"))
                      if job["key"] + suffix in keras}  # fmt: skip
        cells, verdict = check_case(images[job["shape"]], job["params"], job["fill_mode"], job["cval"], references)
        fill = job["fill_mode"] + (f" {job['cval']:g}" if job["fill_mode"] == "constant" else "")
        report.print(f"| {job['case']} | {fill} | {job['shape']} | {cells[0]} | {cells[1]} | {verdict} |")
        if verdict.startswith("DIFF"):
            failed.setdefault(verdict.split(" (")[0], []).append(f"{job['case']} ({fill}, {job['shape']})")

    report.print(f"\n2. Random draws ({args.draws} per side): min … max, mean ± std\n")
    report.print(
        "| setting | parameter | Keras | ours, batched | ours, per sample | verdict |\n|---|---|---|---|---|---|"
    )
    for name, (draw_args, shape) in draw_sets.items():
        ours = our_draws(draw_args, tuple(shape), args.draws)
        for key, label in QUANTITIES.items():
            k = keras[f"{name}/{key}"]
            sides = [ours[path].get(key) for path in ("batched", "per sample")]
            if all(s is None or (np.ptp(s) == 0 and s[0] == k[0]) for s in (k, *sides)):
                continue  # the setting leaves this parameter alone on both sides
            ok = all(s is None or same_distribution(s, k) for s in sides)
            other = {"tx": "ty", "ty": "tx"}.get(key)
            swapped = other and all(same_distribution(ours[p][other], k) for p in ("batched", "per sample"))
            verdict = "PASS" if ok else "KERAS BUG (shift axes swapped)" if swapped else "DIFF"
            cells = " | ".join("n/a (Albumentations p=0.5)" if s is None else _stats(s) for s in sides)
            report.print(f"| {name} | {label} | {_stats(k)} | {cells} | {verdict} |")
            if verdict == "DIFF":
                failed.setdefault("DIFF: random draws", []).append(f"{name}: {label}")
    if failed:
        for kind, where in failed.items():
            print(f"\n{kind} — {len(where)} case(s): {'; '.join(where)}", file=sys.stderr)
    else:
        report.print(
            "\nAll conventions agree (PASS, or a Keras 3 / scipy quirk this port does not copy, or not ported)."
        )
    report.write_markdown(args.markdown)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
