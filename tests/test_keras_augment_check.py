"""benchmarks/keras_augment_check.py without Keras: our side of every case, the verdicts it gives on references made
here (a Keras that pivots off-centre, turns the other way, or fills the scipy way), and its comparison functions.
The Keras side needs Keras, TensorFlow and scipy, which are never installed with the package; its table is in the
README."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import keras_augment_check as check  # noqa: E402
import machine  # noqa: E402

from lightning_cnn.augmentation import keras_pixel_matrix  # noqa: E402


def _ours(params: dict, shape: str, fill_mode: str = "nearest", cval: float = 0.0, **options) -> tuple:
    image = check.sample_image(*check.SHAPES[shape])
    p = check.our_params(params, *image.shape[:2], **options)
    return image, check.per_sample(image, p, fill_mode, cval), check.batched(image, p, fill_mode, cval)


def test_help_describes_the_check(capsys):
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--keras-python" in out and "apply_transform" in out and "KERAS PIVOT" in out


def test_a_missing_keras_interpreter_fails_with_the_fix(tmp_path):
    args = argparse.Namespace(keras_python=str(tmp_path / "nope" / "python"), keras_venv=str(tmp_path / "venv"))
    with pytest.raises(SystemExit, match="no such file"):
        machine.keras_python(args)


@pytest.mark.parametrize("shape", check.SHAPES, ids=[s.replace("×", "x") for s in check.SHAPES])
def test_our_side_of_every_case_keeps_the_image_shape(shape):
    for _, params, fill_mode, cval in [*check.CASES, check.CHANNELS_FIRST_CASE]:
        if params.get("shear"):
            continue  # not ported: check_case says so without running our side
        image, per_sample, batched = _ours(params, shape, fill_mode, cval)
        assert per_sample.shape == image.shape and per_sample.dtype == np.float64
        if fill_mode == "wrap":
            assert batched is None  # grid_sample cannot wrap
        else:
            assert batched.shape == image.shape and np.abs(batched - per_sample).max() <= 2 * check.TOLERANCE


def test_shifts_and_flips_move_the_content_as_keras_does():
    image, per_sample, batched = _ours({"tx": 5.0}, "20×32×1")  # samples x + 5: content moves left, edge repeated
    expected = image[:, np.minimum(np.arange(32) + 5, 31)].astype(np.float64)
    np.testing.assert_allclose(per_sample, expected)
    np.testing.assert_allclose(batched, expected, atol=1e-3)
    image, per_sample, _ = _ours({"ty": -4.0, "flip_horizontal": True}, "32×20×3")
    np.testing.assert_allclose(per_sample, image[np.maximum(np.arange(32) - 4, 0)][:, ::-1])


def test_keras_pivot_moves_the_fixed_point_to_keras_centre():
    height, width = 20, 32
    params = {"theta": 30.0, "zx": 1.2, "zy": 0.9, "tx": 0.0}
    matrix = keras_pixel_matrix(check.our_params(params, height, width, keras_pivot=True), height, width)
    keras_centre = np.array([(height - 1) / 2, (width - 1) / 2, 1.0])  # Keras 3 takes (h - 1) / 2 as x
    np.testing.assert_allclose(matrix @ keras_centre, keras_centre[:2], atol=1e-9)
    square = check.our_params(params, 28, 28, keras_pivot=True)  # on a square image nothing moves
    assert (square.shift_x, square.shift_y) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_compare_counts_grey_levels_against_the_tolerance():
    keras = np.full((4, 5, 1), 100.0)
    assert check.compare(keras + 0.5, keras) == (0.5, 0.0, True)
    ours = keras.copy()
    ours[0, 0, 0] += 2.0
    assert check.compare(ours, keras) == (2.0, 1 / 20, False)


def test_verdicts_name_the_convention_that_differs():
    params, shape = {"theta": 30.0, "zx": 1.2}, "20×32×1"
    image = check.sample_image(*check.SHAPES[shape])
    _, ours, _ = _ours(params, shape)
    assert check.check_case(image, params, "nearest", 0.0, {"as is": ours})[1] == "PASS"
    _, pivoted, _ = _ours(params, shape, keras_pivot=True)
    assert check.check_case(image, params, "nearest", 0.0, {"as is": pivoted})[1].startswith("KERAS PIVOT")
    _, turned, _ = _ours(params, "28×28×1", angle_sign=-1.0)
    square = check.sample_image(*check.SHAPES["28×28×1"])
    assert check.check_case(square, params, "nearest", 0.0, {"as is": turned})[1].startswith("DIFF: angle sign")
    _, reference, _ = _ours(params, shape, "constant", 200.0)
    verdict = check.check_case(image, params, "constant", 200.0, {"as is": reference + 50, "grid": reference})[1]
    assert verdict.startswith("SCIPY EDGE")
    assert check.check_case(image, {"shear": 20.0}, "nearest", 0.0, {"as is": ours})[1].startswith("NOT PORTED")


def test_same_distribution_tells_ranges_apart():
    rng = np.random.default_rng(0)
    uniform = rng.uniform(-3, 3, 4000)
    assert check.same_distribution(rng.uniform(-3, 3, 4000), uniform)
    assert not check.same_distribution(rng.uniform(-2, 2, 4000), uniform)
    keras_int = rng.integers(0, 3, 4000) * rng.choice([-1, 1], 4000)  # Keras' int range: choice(3) × a sign
    assert not check.same_distribution(uniform, keras_int.astype(np.float64))


def test_our_draws_come_back_from_both_paths():
    args, shape = check.DRAW_SETS["unequal ranges, 20×32"]
    draws = check.our_draws(args, shape, 200)
    for path in ("batched", "per sample"):
        assert np.abs(draws[path]["theta"]).max() <= 45 + 1e-6
        assert np.abs(draws[path]["tx"]).max() <= 0.2 * 32 + 1e-6  # width_shift_range × width, along x
        assert np.abs(draws[path]["ty"]).max() <= 0.05 * 20 + 1e-6
        assert draws[path]["zx"].min() >= 0.6 - 1e-6 and draws[path]["zy"].max() <= 1.1 + 1e-6
        assert all(len(v) == 200 for v in draws[path].values())
    assert set(np.unique(draws["batched"]["flip_horizontal"])) == {0.0, 1.0}
