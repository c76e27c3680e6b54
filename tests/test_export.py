"""Exported models give PyTorch's answers: onnxruntime (CPU) and TorchScript against eager PyTorch on real
Fashion-MNIST test images, for each kind of network the course trains; the files carry their metadata, and the
export command never overwrites a file and ends a bad call with one error line."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_cnn import ImageClassifier
from lightning_cnn.checkpoints import load_checkpoint
from lightning_cnn.cli import CNNCLI
from lightning_cnn.data.mnist import read_idx
from lightning_cnn.export import FORMATS, ExportError, export, run_exported
from lightning_cnn.preprocessing import Preprocessing
from tests.conftest import CONFIGS, FASHION_MNIST_SYSTEM_DIR, write_fake_mnist

# The parity bar: on this many real test images, probabilities within this of eager PyTorch's.
PARITY_IMAGES = 256
PARITY_TOLERANCE = 1e-4
# The binary config's task (functional_cnn_binary.yaml): Fashion-MNIST Sneaker (7) vs Ankle boot (9).
BINARY_CLASSES = (7, 9)
NEEDS_EXPORT_EXTRA = "install the export extra: pip install -e '.[export]'"
NEEDS_FASHION_MNIST = f"real Fashion-MNIST not in {FASHION_MNIST_SYSTEM_DIR}: apt install dataset-fashion-mnist"
SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml"), "--test_after_fit", "false"]

# One entry per kind of network: its config and overrides, fitted for a few batches (the smoke trainer). Parity
# needs real inputs and BatchNorm statistics that training has moved, not a trained model.
MODELS: dict[str, tuple[str, list[str]]] = {
    "lenet": ("lenet_fashion_mnist.yaml", []),
    "bn_cnn": ("bn_cnn_fashion_mnist.yaml", []),
    "functional_binary": ("functional_cnn_binary.yaml", []),
    # Random weights (no network); 32×32 and small batches keep resnet18's fit to seconds on a CPU.
    "resnet18": ("lenet_fashion_mnist.yaml", [
        "--model.init_args.net", "lightning_cnn.models.TorchvisionNet",
        "--model.init_args.net.init_args.arch", "resnet18",
        "--model.init_args.net.init_args.weights", "none",
        "--data.init_args.image_size", "32",
        "--data.init_args.batch_size", "32",
    ]),
}  # fmt: skip


def _has_fashion_mnist() -> bool:
    return (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.fixture(scope="module")
def checkpoint_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``last.ckpt`` of a smoke fit of ``MODELS[name]``, fitted once per module through the real CLI.

    Without the real Fashion-MNIST, the fit reads fake IDX files instead: enough for the tests of the export
    command's files and errors (the parity tests skip before asking for a checkpoint)."""
    root = tmp_path_factory.mktemp("fits")
    fitted: dict[str, Path] = {}

    def fit(name: str) -> Path:
        if name not in fitted:
            data = []
            if not _has_fashion_mnist():
                folder = write_fake_mnist(root / "fake_fashion_mnist")
                data = ["--data.init_args.data_dir", str(folder), "--data.init_args.download", "false"]
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(root)  # the configs' loggers write into ./runs/...
                config, overrides = MODELS[name]
                cli = CNNCLI(args=["fit", "--config", str(CONFIGS / config), *SMOKE, *overrides, *data])
            fitted[name] = root / cli.trainer.log_dir / "checkpoints" / "last.ckpt"
        return fitted[name]

    return fit


@pytest.fixture(scope="module")
def fashion_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The genuine Fashion-MNIST test split: uint8 images ``(10000, 28, 28)`` and their labels."""
    if not _has_fashion_mnist():
        pytest.skip(NEEDS_FASHION_MNIST)
    images = read_idx(FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz")
    return images, labels


def _require_onnx() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module, reason=NEEDS_EXPORT_EXTRA)


class _Eager:
    """A checkpoint's eager PyTorch answer on the first real test images of its task, and the pixels in [0, 1]
    that an exported model takes for the same images."""

    def __init__(self, checkpoint: Path, test_set: tuple[np.ndarray, np.ndarray], binary_task: bool) -> None:
        images, labels = test_set
        if binary_task:
            images = images[np.isin(labels, BINARY_CLASSES)]
        images = images[:PARITY_IMAGES]
        model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
        self.preprocessing: Preprocessing = model.preprocessing
        resized = self.preprocessing.from_array(images)
        with torch.inference_mode():
            self.probabilities = model.probabilities(model(self.preprocessing.to_input(resized)))
        self.pixels = resized.float() / 255  # the exported model normalizes inside
        self.class_names = list(load_checkpoint(checkpoint)["hyper_parameters"]["preprocessing"]["class_names"])


def _assert_parity(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    difference = float((got - expected).abs().max())
    assert difference <= PARITY_TOLERANCE, f"max |Δprobability| {difference:.2e}"
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_matches_eager_on_real_images(name, checkpoint_of, fashion_test_set, tmp_path, capsys):
    eager = _Eager(checkpoint_of(name), fashion_test_set, binary_task=name == "functional_binary")
    path = export(checkpoint_of(name), "torchscript", tmp_path / "m.pt")
    assert len(eager.pixels) == PARITY_IMAGES
    _assert_parity(run_exported(path, "torchscript", eager.pixels), eager.probabilities)
    _assert_parity(run_exported(path, "torchscript", eager.pixels[:1]), eager.probabilities[:1])  # any batch size

    extra = {"metadata.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation; loading TorchScript is the point
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    info = json.loads(extra["metadata.json"])
    assert json.loads(info["class_names"]) == eager.class_names
    assert json.loads(info["input_size"]) == list(eager.preprocessing.image_size)
    assert "checked against PyTorch" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(MODELS))
def test_pt2_program_matches_eager_on_real_images(name, checkpoint_of, fashion_test_set, tmp_path, capsys):
    eager = _Eager(checkpoint_of(name), fashion_test_set, binary_task=name == "functional_binary")
    path = export(checkpoint_of(name), "pt2", tmp_path / "m.pt2")
    _assert_parity(run_exported(path, "pt2", eager.pixels), eager.probabilities)
    _assert_parity(run_exported(path, "pt2", eager.pixels[:1]), eager.probabilities[:1])  # any batch size

    extra = {"metadata.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # unlike torch.jit.load, nothing deprecated
        torch.export.load(str(path), extra_files=extra)
    info = json.loads(extra["metadata.json"])
    assert json.loads(info["class_names"]) == eager.class_names
    assert "checked against PyTorch" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_matches_eager_on_real_images(name, checkpoint_of, fashion_test_set, tmp_path):
    _require_onnx()
    import onnxruntime

    eager = _Eager(checkpoint_of(name), fashion_test_set, binary_task=name == "functional_binary")
    path = export(checkpoint_of(name), "onnx", tmp_path / "m.onnx")
    _assert_parity(run_exported(path, "onnx", eager.pixels), eager.probabilities)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, PARITY_IMAGES):  # the batch axis is dynamic: neither size is the traced one
        (got,) = session.run(None, {"pixels": eager.pixels[:batch].numpy()})
        _assert_parity(torch.from_numpy(got), eager.probabilities[:batch])

    info = session.get_modelmeta().custom_metadata_map  # the file's metadata_props
    assert json.loads(info["class_names"]) == eager.class_names
    assert json.loads(info["input_size"]) == list(eager.preprocessing.image_size)


@pytest.mark.parametrize("format", sorted(FORMATS))
def test_export_refuses_an_existing_out_file(format, checkpoint_of, tmp_path):
    out = tmp_path / f"model{FORMATS[format]}"
    out.write_bytes(b"someone's file")
    with pytest.raises(ExportError, match="exists"):
        export(checkpoint_of("lenet"), format, out)
    assert out.read_bytes() == b"someone's file"


def test_default_out_is_beside_the_checkpoint_and_never_overwrites(checkpoint_of, tmp_path):
    checkpoint = shutil.copy(checkpoint_of("lenet"), tmp_path / "last.ckpt")  # a folder of its own
    first = export(checkpoint, "torchscript")
    assert first == tmp_path / "last.pt"
    first_bytes = first.read_bytes()
    second = export(checkpoint, "torchscript")
    assert second == tmp_path / "last_1.pt"
    assert first.read_bytes() == first_bytes


def test_cli_export_writes_a_runnable_file(checkpoint_of, tmp_path, capsys):
    from lightning_cnn.cli import main

    out = tmp_path / "exported" / "lenet.pt"
    main(["export", "--ckpt_path", str(checkpoint_of("lenet")), "--format", "torchscript", "--out", str(out)])
    assert f"Exported {out}" in capsys.readouterr().out
    probabilities = run_exported(out, "torchscript", torch.rand(3, 1, 28, 28))
    assert probabilities.shape == (3, 10)
    assert torch.allclose(probabilities.sum(1), torch.ones(3))


def test_cli_export_of_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    from lightning_cnn.cli import main

    missing = tmp_path / "missing.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(missing), "--format", "torchscript"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(missing) in err[0]
    assert not list(tmp_path.iterdir())  # nothing written
