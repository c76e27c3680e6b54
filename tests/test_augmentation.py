"""Augmentation: Keras' ImageDataGenerator semantics on images with known geometry, for the per-sample
(Albumentations) and batched (grid_sample) paths and between them; YAML pipelines and their errors; seeding;
train-only application; the shipped configs and the preview command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import lightning_cnn.augmentation
from lightning_cnn import ImageClassifier
from lightning_cnn.augmentation import (
    SLIDES_IMAGE_DATA_GENERATOR,
    AlbumentationsAugmentation,
    BatchedKerasAugment,
    ImageDataGeneratorArgs,
    KerasAffine,
    KerasAugmentation,
    KerasParams,
    build_pipeline,
    keras_pipeline,
    keras_pixel_matrix,
    seed_worker,
)
from lightning_cnn.augmentation.pipeline import _CheckedPipeline
from lightning_cnn.cli import CNNCLI
from lightning_cnn.data import FashionMNISTDataModule, MNISTDataModule
from lightning_cnn.models import LeNet
from tests.conftest import CONFIGS, REPO_ROOT, write_fake_mnist

SLIDES = SLIDES_IMAGE_DATA_GENERATOR
SHAPES = [(28, 28, 1), (32, 32, 3), (224, 224, 3)]


def _params(angle=0.0, shift_x=0.0, shift_y=0.0, zoom_x=1.0, zoom_y=1.0, flip_x=False, flip_y=False) -> KerasParams:
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    return KerasParams(
        t(angle), t(shift_x), t(shift_y), t(zoom_x), t(zoom_y), torch.tensor([flip_x]), torch.tensor([flip_y])
    )


def per_sample(image: np.ndarray, fill_mode: str = "nearest", **params) -> np.ndarray:
    """The per-sample path with fixed parameters: KerasAffine's warp with Keras' matrix."""
    p = _params(**params)
    numpy_params = KerasParams(*(float(v) for v in (p.angle, p.shift_x, p.shift_y, p.zoom_x, p.zoom_y)))
    matrix = keras_pixel_matrix(numpy_params, *image.shape[:2])
    return KerasAffine(fill_mode=fill_mode).apply(image, matrix=matrix)


def batched(image: np.ndarray, fill_mode: str = "nearest", **params) -> np.ndarray:
    """The batched path with fixed parameters, back in uint8 HWC units."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    out = BatchedKerasAugment(fill_mode=fill_mode, seed=0).apply(x, _params(**params))
    return (out[0].permute(1, 2, 0) * 255).numpy()


PATHS = {"per_sample": per_sample, "batched": batched}


def marker_image(size: int = 28, row: int = 10, col: int = 12, channels: int = 1) -> np.ndarray:
    image = np.zeros((size, size, channels), np.uint8)
    image[row - 1 : row + 2, col - 1 : col + 2] = 255
    return image


def centroid(image: np.ndarray) -> tuple[float, float]:
    weights = image.astype(np.float64).sum(axis=2)
    rows, cols = np.indices(weights.shape)
    return (rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum()


# --- Keras semantics on known geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_shift_moves_the_marker_by_the_shift_in_pixels(path):
    image = marker_image(row=10, col=12)
    # Keras samples the input at output + shift: the content moves by minus the shift.
    out = PATHS[path](image, shift_x=3, shift_y=-2)
    assert centroid(out) == pytest.approx((12.0, 9.0), abs=1e-3)
    assert out.max() == pytest.approx(255, abs=1)  # whole-pixel shift: no blur


@pytest.mark.parametrize("path", PATHS)
def test_keras_zoom_above_one_makes_the_object_smaller(path):
    image = np.zeros((28, 28, 1), np.uint8)
    image[8:20, 8:20] = 255  # a 12×12 square centred on the image centre
    area = (image > 127).sum()
    smaller = PATHS[path](image, zoom_x=1.5, zoom_y=1.5)
    larger = PATHS[path](image, zoom_x=0.75, zoom_y=0.75)
    assert (smaller > 127).sum() == pytest.approx(area / 1.5**2, rel=0.2)
    assert (larger > 127).sum() == pytest.approx(area / 0.75**2, rel=0.2)
    wide = PATHS[path](image, zoom_x=2.0, zoom_y=1.0)  # per axis: only the width shrinks
    rows, cols = np.nonzero(wide[..., 0] > 127)
    assert (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) == (6, 12)


@pytest.mark.parametrize("path", PATHS)
def test_rotation_by_90_degrees_is_a_counter_clockwise_quarter_turn(path):
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    out = PATHS[path](image, angle=90)
    # Keras 3's positive angle, as on screen (rows pointing down); benchmarks/keras_augment_check.py checks it
    np.testing.assert_allclose(out, np.rot90(image, k=1), atol=0.01)


def test_small_rotation_turns_a_marker_about_the_centre():
    image = marker_image(size=29, row=14, col=24)  # 10 px right of the centre (14, 14)
    for path in PATHS.values():
        r, c = centroid(path(image, angle=30))
        assert (r, c) == pytest.approx((14 - 10 * np.sin(np.radians(30)), 14 + 10 * np.cos(np.radians(30))), abs=0.15)


def test_flips():
    image = np.random.default_rng(1).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(batched(image, flip_x=True), image[:, ::-1], atol=0.01)
    np.testing.assert_allclose(batched(image, flip_y=True), image[::-1], atol=0.01)
    np.testing.assert_allclose(batched(image, flip_x=True, flip_y=True), image[::-1, ::-1], atol=0.01)
    # Per sample, each flip is an Albumentations flip with p=0.5: every output is one of the four flips.
    pipeline = keras_pipeline(horizontal_flip=True, vertical_flip=True, seed=0)
    seen = set()
    for _ in range(40):
        out = pipeline(image=image)["image"]
        matches = [
            k for k, f in enumerate((image, image[:, ::-1], image[::-1], image[::-1, ::-1])) if np.array_equal(out, f)
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("path", PATHS)
def test_fill_mode_nearest_repeats_the_edge_pixels(path):
    image = np.zeros((28, 28, 1), np.uint8)
    image[:, 0] = np.arange(28, dtype=np.uint8)[:, None] * 9  # a distinct value per row in the first column
    out = PATHS[path](image, shift_x=-5)  # content moves 5 px right, uncovering 5 columns on the left
    for col in range(6):
        np.testing.assert_allclose(out[:, col, 0], image[:, 0, 0], atol=0.01)
    constant = PATHS[path](image, fill_mode="constant", shift_x=-5)
    assert np.abs(constant[:, :5]).max() < 0.01


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_per_sample_and_batched_paths_agree(shape, fill_mode):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    h = shape[0]
    params = dict(angle=13.0, shift_x=0.07 * h, shift_y=-0.05 * h, zoom_x=1.12, zoom_y=0.9)
    a, b = per_sample(image, fill_mode, **params).astype(np.float64), batched(image, fill_mode, **params)
    assert a.shape == b.shape == shape
    # OpenCV rounds to uint8 and uses fixed-point weights; grid_sample stays in float.
    assert np.abs(a - b).mean() < 0.6
    assert np.percentile(np.abs(a - b), 99) < 2.5


def test_keras_draws_every_image_and_zoom_per_axis():
    augment = BatchedKerasAugment(**SLIDES, seed=0)
    p = augment.sample(4000, 28, 28)
    assert p.angle.abs().max() <= 20 and p.angle.abs().max() > 19
    assert p.shift_x.abs().max() <= 2.8 and p.shift_y.abs().max() <= 2.8  # 0.1 × 28 px
    assert p.zoom_x.min() >= 0.85 and p.zoom_x.max() <= 1.15
    assert abs(torch.corrcoef(torch.stack([p.zoom_x, p.zoom_y]))[0, 1]) < 0.1  # drawn independently
    assert 0.45 < p.flip_x.double().mean() < 0.55 and 0.45 < p.flip_y.double().mean() < 0.55
    # Per sample, KerasAffine has p=1: every image is transformed.
    transform = keras_pipeline(rotation_range=20, zoom_range=0.15, seed=0)
    image = marker_image()
    assert all(not np.array_equal(transform(image=image)["image"], image) for _ in range(30))


# --- YAML pipelines and their errors --------------------------------------------------------------------------------


def test_yaml_pipeline_builds_nested_transforms_and_opencv_names():
    pipeline = build_pipeline(
        [
            {"Affine": {"rotate": [-20, 20], "border_mode": "BORDER_REPLICATE", "p": 1.0}},
            "HorizontalFlip",
            {"OneOf": {"transforms": ["GaussNoise", {"Blur": {"blur_limit": 3}}], "p": 0.3}},
            {"KerasAffine": {"zoom_range": 0.15}},
        ],
        seed=0,
    )
    affine, flip, one_of, keras = pipeline.transforms
    assert affine.border_mode == 1 and affine.p == 1.0 and flip.p == 0.5 and len(one_of.transforms) == 2
    assert isinstance(keras, KerasAffine)
    out = pipeline(image=marker_image(channels=3))["image"]
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8


def test_albumentations_own_serialisation_round_trips():
    import albumentations as A

    original = keras_pipeline(**SLIDES)
    rebuilt = build_pipeline(A.to_dict(original), seed=3)
    assert [type(t).__name__ for t in rebuilt.transforms] == ["KerasAffine", "HorizontalFlip", "VerticalFlip"]
    assert rebuilt.transforms[0].keras.rotation_range == 20


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["Afine"], r"unknown transform 'Afine'.*Did you mean Affine"),
        ([{"Affine": {"rotat": 10}}], r"unknown argument 'rotat' \(did you mean rotate\?\)"),
        ([{"Affine": {"cval": 0}}], r"unknown argument 'cval' \(use fill\)"),
        ([{"Affine": {"mode": 1}}], r"unknown argument 'mode' \(use border_mode\)"),
        ([{"HorizontalFlip": {"always_apply": True}}], r"always_apply.*use p: 1.0"),
        ([{"Affine": {"rotate": "abc"}}], r"Affine\(rotate='abc'\)"),
        (
            [{"OneOf": {"transforms": [{"Blurr": {}}]}}],
            r"transforms\[0\] OneOf.transforms\[0\].*unknown transform 'Blurr'",
        ),
        (["Normalize"], r"Normalize: not allowed.*data.normalize"),
        ("Affine", r"must be a list of transforms"),
        ([{"Affine": {}, "HorizontalFlip": {}}], r"not a transform entry"),
        (["os.path"], r"cannot import transform|unknown transform"),
    ],
)
def test_bad_transform_names_and_arguments_fail_clearly(spec, message):
    with pytest.raises(ValueError, match=message):
        AlbumentationsAugmentation(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fill_mode": "edge"}, r"fill_mode='edge'; choose one of 'nearest'"),
        ({"mode": "gpu"}, r"mode='gpu'; choose 'per_sample'"),
        ({"fill_mode": "wrap", "mode": "batched"}, r"fill_mode='wrap'; choose one of 'nearest', 'reflect', 'constant'"),
        ({"zoom_range": 1.5}, r"zoom_range=1.5"),
        ({"rotation_range": -3}, r"rotation_range=-3"),
    ],
)
def test_bad_keras_arguments_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KerasAugmentation(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rotation_range": -3}, r"^rotation_range=-3; use degrees >= 0"),
        ({"width_shift_range": "0.1"}, r"^width_shift_range='0.1'; use a number >= 0: a fraction of the width"),
        ({"height_shift_range": True}, r"^height_shift_range=True; use a number >= 0"),
        ({"zoom_range": 1.5}, r"^zoom_range=1.5; use a float in \[0, 1\) or a pair"),
        ({"zoom_range": (1.2, 0.8)}, r"^zoom_range=\[1.2, 0.8\]; use a float in \[0, 1\) or a pair \[lower, upper\]"),
        ({"fill_mode": "edge"}, r"^fill_mode='edge'; choose one of 'nearest', 'constant', 'reflect', 'wrap'"),
    ],
)
def test_keras_arguments_are_checked_in_one_place_with_a_one_line_fix(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        ImageDataGeneratorArgs(**kwargs)
    assert "\n" not in str(err.value)
    for build in (KerasAffine, keras_pipeline, BatchedKerasAugment, KerasAugmentation):  # all take them from there
        with pytest.raises(ValueError, match=message):
            build(**kwargs)


def test_keras_affine_refuses_the_flips_it_does_not_apply():
    with pytest.raises(ValueError, match=r"KerasAffine does not flip; follow it with HorizontalFlip"):
        build_pipeline([{"KerasAffine": {"rotation_range": 10, "horizontal_flip": True}}])


def test_a_size_changing_pipeline_fails_at_the_first_batch_with_the_fix(mnist_dir):
    dm = FashionMNISTDataModule(
        data_dir=str(mnist_dir),
        batch_size=8,
        num_workers=0,
        augmentation=AlbumentationsAugmentation([{"RandomCrop": {"height": 20, "width": 20}}]),
    )
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"must keep uint8 and the image size.*data.image_size"):
        next(iter(dm.train_dataloader()))


# --- the package: its names, what importing it costs and changes -------------------------------------------------


def test_the_package_exports_only_public_names_and_all_of_them_import():
    names = lightning_cnn.augmentation.__all__
    assert names and not [name for name in names if name.startswith("_")]
    for name in names:  # the Albumentations ones load on first use
        assert getattr(lightning_cnn.augmentation, name) is not None


@pytest.fixture(scope="module")
def fresh_imports() -> dict:
    """What importing does, in a fresh interpreter (one for all checks: each start imports Lightning)."""
    code = """if True:
        import json, sys
        import lightning_cnn.augmentation.batched
        batched_loads = [name for name in ("albumentations", "cv2") if name in sys.modules]
        import lightning_cnn.augmentation
        package_loads = [name for name in ("albumentations", "cv2") if name in sys.modules]
        import cv2
        cv2.setNumThreads(3)
        import lightning_cnn.augmentation.per_sample, lightning_cnn.augmentation.pipeline
        print(json.dumps({"batched": batched_loads, "package": package_loads, "threads": cv2.getNumThreads()}))
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_the_batched_path_and_the_package_import_without_albumentations_or_opencv(fresh_imports):
    assert fresh_imports["batched"] == [] and fresh_imports["package"] == []


def test_importing_leaves_opencv_threads_alone_and_a_pipeline_call_restores_them(fresh_imports):
    import albumentations as A
    import cv2

    assert fresh_imports["threads"] == 3
    seen = []

    def record_threads(image: np.ndarray, **params) -> np.ndarray:
        seen.append(cv2.getNumThreads())
        return image

    pipeline = _CheckedPipeline(A.Compose([A.Lambda(image=record_threads)]))
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        pipeline(marker_image())
        # Inside, OpenCV runs sequentially (setNumThreads(0), which it reports as 1 thread); after, the user's 3.
        assert seen == [1] and cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


# --- seeding ---------------------------------------------------------------------------------------------------------


def _first_train_batch(data_dir: Path, mode: str, seed: int, **data_kwargs) -> torch.Tensor:
    dm = FashionMNISTDataModule(
        data_dir=str(data_dir),
        batch_size=16,
        num_workers=0,
        augmentation=KerasAugmentation(**SLIDES, mode=mode, seed=seed),
        **data_kwargs,
    )
    dm.setup("fit")
    torch.manual_seed(0)  # the shuffling order
    # The datamodule's device step, outside a Trainer: it enlarges the batch to image_size (augmenting there
    # needs a training Trainer, so the batched augmentation is applied here).
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    return dm.batch_augment(x) if dm.batch_augment is not None else x


@pytest.mark.parametrize("mode", ["per_sample", "batched"])
def test_the_same_seed_gives_the_same_augmented_batch(mnist_dir, mode):
    a, b = _first_train_batch(mnist_dir, mode, 7), _first_train_batch(mnist_dir, mode, 7)
    c = _first_train_batch(mnist_dir, mode, 8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_a_batch_is_augmented_alike_with_any_number_of_workers(mnist_dir):
    def epochs(workers: int, persistent: bool) -> list[list[torch.Tensor]]:
        dm = FashionMNISTDataModule(
            data_dir=str(mnist_dir),
            batch_size=4,
            num_workers=workers,
            persistent_workers=persistent,
            augmentation=KerasAugmentation(**SLIDES, seed=1),
        )
        dm.setup("fit")
        dm.train_set.images[:] = dm.train_set.images[0]  # every sample the same image: differences are augmentation
        loader = dm.train_dataloader()
        assert loader.worker_init_fn is (seed_worker if workers else None)
        out = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            out.append([x for x, _ in loader][:3])  # the whole epoch is read, so workers stop cleanly
        return out

    reference = epochs(0, False)
    for workers, persistent in ((2, True), (2, False)):
        for a, b in zip(reference, epochs(workers, persistent)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(reference[0][0], reference[0][1]), "two batches drew alike"
    assert not torch.allclose(reference[0][0][:1], reference[1][0][:1]), "two epochs drew alike"


# --- train-only, through Trainer.fit ----------------------------------------------------------------------------------


class _Recorder(ImageClassifier):
    """Keeps the first images each stage's step receives."""

    def __init__(self) -> None:
        super().__init__(LeNet(), num_classes=10)
        self.seen: dict[str, torch.Tensor] = {}

    def shared_step(self, batch, stage):  # noqa: ANN001
        self.seen.setdefault(stage, batch[0].clone())
        return super().shared_step(batch, stage)


@pytest.mark.parametrize("mode", ["per_sample", "batched"])
def test_only_training_batches_are_augmented(mnist_dir, in_tmp, mode):
    dm = FashionMNISTDataModule(
        data_dir=str(mnist_dir),
        batch_size=8,
        num_workers=0,
        augmentation=KerasAugmentation(**SLIDES, mode=mode, seed=0),
    )
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    plain = lambda ds: ds.to_float(ds.images[:8])  # noqa: E731  (val/test loaders do not shuffle)
    torch.testing.assert_close(model.seen["val"], plain(dm.val_set))
    torch.testing.assert_close(model.seen["test"], plain(dm.test_set))
    assert dm.val_set.transform is None and dm.test_set.transform is None
    train = model.seen["train"]
    # The training images are augmented: none equals its un-augmented self anywhere in the training set.
    originals = dm.train_set.to_float(dm.train_set.images)
    assert train.shape == (8, 1, 28, 28)
    assert all(not (originals == image).all(dim=(1, 2, 3)).any() for image in train)


# --- shapes, configs, preview -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["per_sample", "batched"])
@pytest.mark.parametrize(("image_size", "to_rgb"), [(None, False), (32, True), (224, True)])
def test_datamodule_augments_1_and_3_channel_inputs_of_any_size(mnist_dir, mode, image_size, to_rgb):
    x = _first_train_batch(mnist_dir, mode, 0, image_size=image_size, to_rgb=to_rgb, train_size=16)
    side = image_size or 28
    assert x.shape == (16, 3 if to_rgb else 1, side, side) and torch.isfinite(x).all()


# The slides' experiment, and the same with the overlay that moves its augmentation onto the device.
AUGMENT_CONFIGS = {
    "per_sample": ["--config", str(CONFIGS / "augment_lenet_fashion_mnist.yaml")],
    "batched": ["--config", str(CONFIGS / "augment_lenet_fashion_mnist.yaml"),
                "--config", str(CONFIGS / "augmentation" / "batched.yaml")],
}  # fmt: skip


@pytest.mark.parametrize("mode", AUGMENT_CONFIGS)
def test_augmentation_configs_fit_a_few_batches(mode, in_tmp):
    data = write_fake_mnist(in_tmp / "fmnist")
    cli = CNNCLI(
        args=[
            "fit",
            *AUGMENT_CONFIGS[mode],
            "--trainer",
            str(CONFIGS / "trainer" / "smoke.yaml"),
            "--data.init_args.data_dir",
            str(data),
            "--data.init_args.download",
            "false",
            "--trainer.logger",
            "false",
            "--test_after_fit",
            "false",
        ]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 4
    augmentation = cli.datamodule.augmentation
    assert isinstance(augmentation, KerasAugmentation) and augmentation.mode == mode
    assert (augmentation.rotation_range, augmentation.zoom_range, augmentation.width_shift_range) == (20, 0.15, 0.1)
    assert augmentation.horizontal_flip and augmentation.vertical_flip and cli.datamodule.batch_size == 16
    if augmentation.mode == "batched":
        assert cli.datamodule.batch_augment is not None and cli.datamodule.train_set.transform is None
    else:
        assert cli.datamodule.batch_augment is None and cli.datamodule.train_set.transform is not None


def test_preview_writes_a_png_and_never_overwrites(in_tmp, capsys):
    data = write_fake_mnist(in_tmp / "fmnist", n_train=40, n_test=10)
    args = [
        "preview",
        *AUGMENT_CONFIGS["batched"],
        "--samples",
        "3",
        "--variants",
        "2",
        "--data.init_args.data_dir",
        str(data),
        "--data.init_args.download",
        "false",
    ]

    def preview(*more: str) -> Path:  # the path it printed
        CNNCLI(args=[*args, *more])
        return Path(capsys.readouterr().out.strip().splitlines()[-1])

    first = preview()
    assert first.parent == Path("runs/preview") and first.suffix == ".png"
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = first.stat().st_mtime_ns
    second = preview()
    assert second != first and second.exists() and first.stat().st_mtime_ns == before
    out = in_tmp / "mine.png"
    assert preview("--out", str(out)) == out
    assert preview("--out", str(out), "--overwrite", "true") == out


def test_preview_of_a_config_without_augmentation_says_what_to_set(in_tmp):
    data = write_fake_mnist(in_tmp / "fmnist", n_train=40, n_test=10)
    with pytest.raises(ValueError, match="no training augmentation; set data.init_args.augmentation"):
        CNNCLI(args=["preview", "--config", str(CONFIGS / "lenet_fashion_mnist.yaml"),
                     "--data.init_args.data_dir", str(data)])  # fmt: skip


@pytest.mark.parametrize("mode", ["per_sample", "batched"])
def test_python_api_fit_with_default_summary_and_a_weights_only_checkpoint(tmp_path, mode):
    """Without the CLI: Lightning's own model summary moves a bare example tensor through the datamodule's
    transfer hooks while training, and the checkpoint must load with weights_only=True."""
    data_dir = write_fake_mnist(tmp_path / "mnist")
    dm = MNISTDataModule(
        data_dir=str(data_dir), num_workers=0, augmentation=KerasAugmentation(**SLIDES, mode=mode, seed=0)
    )
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(ImageClassifier(LeNet()), datamodule=dm)
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert "augmentation" not in checkpoint["datamodule_hyper_parameters"]


@pytest.mark.parametrize("mode", ["per_sample", "batched"])
def test_preview_variants_differ_and_match_the_model_input_size(mnist_dir, mode):
    from lightning_cnn.preview import preview_grid

    dm = FashionMNISTDataModule(
        data_dir=str(mnist_dir), image_size=40, augmentation=KerasAugmentation(**SLIDES, mode=mode, seed=0)
    )
    dm.setup("fit")
    original, augmented, _ = preview_grid(dm, samples=4, variants=3)
    assert original.shape == (4, 40, 40, 1) and augmented.shape == (3, 4, 40, 40, 1)
    assert not torch.equal(augmented[0], augmented[1]) and not torch.equal(augmented[1], augmented[2])


@pytest.mark.parametrize("shift_range,expected", [(3, {-2, -1, 0, 1, 2}), (1, {0})])
def test_an_int_shift_range_draws_whole_pixels_as_keras(shift_range, expected):
    # Keras: np.random.choice(n) * choice([-1, 1]) for an int range n >= 1 (so 1 never shifts); a float is uniform.
    args = ImageDataGeneratorArgs(width_shift_range=shift_range, height_shift_range=2.5)
    params = args.params_from_uniform(np.random.default_rng(0).random((4000, 5)), 28, 28)
    assert set(np.unique(params.shift_x).tolist()) == expected
    assert len(np.unique(params.shift_y)) > 100 and np.abs(params.shift_y).max() <= 2.5
    if shift_range == 3:  # each whole pixel about equally often, 0 twice as often as each signed value
        counts = {v: int((params.shift_x == v).sum()) for v in expected}
        assert counts[0] == pytest.approx(4000 / 3, rel=0.1) and counts[2] == pytest.approx(4000 / 6, rel=0.15)


# --- random erasing ------------------------------------------------------------------------------------------------


def _erased(images: np.ndarray) -> list[np.ndarray]:
    """Per image, the boolean mask of its black pixels (the images are a uniform grey before erasing)."""
    return [image.reshape(image.shape[0], image.shape[1], -1).max(axis=2) == 0 for image in images]


def _box_shape(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    # A single filled rectangle: its bounding box is all black.
    assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


@pytest.mark.parametrize("mode", ["per_sample", "batched"])
def test_random_erasing_paints_one_black_rectangle_of_the_documented_size_with_its_probability(mode):
    n, size, probability = 400, 28, 0.5
    grey = np.full((n, size, size, 1), 128, np.uint8)
    augmentation = KerasAugmentation(mode=mode, random_erasing=probability)
    if mode == "batched":
        mean, std = torch.tensor([0.3]).reshape(1, 1, 1, 1), torch.tensor([0.4]).reshape(1, 1, 1, 1)
        transform = augmentation.batch_transform(5, mean, std)
        x = (torch.from_numpy(grey).permute(0, 3, 1, 2).float() / 255 - mean) / std
        out = ((transform(x) * std + mean) * 255).round().permute(0, 2, 3, 1).numpy()
    else:
        transform = augmentation.per_sample_transform(5)
        out = np.stack([transform(image=image)["image"] for image in grey])
    masks = _erased(out)
    erased = [m for m in masks if m.any()]
    assert len(erased) / n == pytest.approx(probability, abs=0.08)
    untouched = out[[not m.any() for m in masks]]
    assert (untouched == 128).all()  # the other images keep every pixel
    shapes = [_box_shape(m) for m in erased]
    areas = np.array([h * w for h, w in shapes]) / size**2
    ratios = np.array([h / w for h, w in shapes])
    # 2-33% of the area, height/width 0.3-3.3, up to rounding to whole pixels.
    assert areas.min() >= 0.01 and areas.max() <= 0.38 and np.median(areas) == pytest.approx(0.175, abs=0.06)
    assert ratios.min() >= 0.25 and ratios.max() <= 4.0 and (ratios < 1).any() and (ratios > 1).any()
    assert len({m.tobytes() for m in erased}) > 0.9 * len(erased)  # drawn per image


def test_random_erasing_comes_after_the_keras_draws_and_leaves_them_unchanged():
    x = torch.rand(16, 1, 28, 28)
    plain = BatchedKerasAugment(width_shift_range=3, horizontal_flip=True, seed=11)
    erasing = BatchedKerasAugment(width_shift_range=3, horizontal_flip=True, seed=11, random_erasing=1.0)
    a, b = plain(x), erasing(x)
    kept = b != 0
    torch.testing.assert_close(a[kept], b[kept], rtol=0, atol=0)
    assert (~kept).flatten(1).any(1).all()  # every image got its rectangle


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.5"])
def test_a_bad_random_erasing_probability_fails_in_one_line_naming_it(value):
    for mode in ("per_sample", "batched"):
        with pytest.raises(ValueError, match=rf"^random_erasing={value!r}; use a probability from 0 to 1") as err:
            KerasAugmentation(mode=mode, random_erasing=value)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^random_erasing="):
        BatchedKerasAugment(random_erasing=value)
