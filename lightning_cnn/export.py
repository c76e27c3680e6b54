"""Export a trained classifier for use outside Python training code: ONNX, a ``torch.export`` program (``pt2``) or
TorchScript (legacy: ``torch.jit`` is deprecated upstream; kept for the C++ and mobile runtimes that load it).

``python cli.py export --ckpt_path runs/…/last.ckpt --format onnx [--out model.onnx]``

The exported model is :class:`DeployableClassifier`: it takes float32 pixels in [0, 1], shape ``(N, C, H, W)``
with any batch size N, and returns class probabilities ``(N, num_classes)`` (a one-logit binary network gives
``[1 - p, p]``). The normalization recorded in the checkpoint is inside the model, so a deployer only decodes,
resizes to the stored input size and divides by 255. The class names, input size and channels are stored in the
file: ONNX ``metadata_props`` (values as JSON), or the ``metadata.json`` extra file of the ``pt2`` and TorchScript
archives (``torch.export.load(path, extra_files={"metadata.json": ""})``).

ONNX needs the optional extra: ``pip install -e .[export]`` (onnx, onnxscript; onnxruntime to run the file).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_cnn.checkpoints import checkpoint_preprocessing
from lightning_cnn.preprocessing import Preprocessing

__all__ = ["FORMATS", "DeployableClassifier", "ExportError", "export", "metadata"]

Format = Literal["onnx", "pt2", "torchscript"]
#: Export formats and the file suffix each gets by default.
FORMATS: dict[str, str] = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
# ONNX opset of the exported graph: supported by onnxruntime releases of the last two years.
ONNX_OPSET = 18
# Batch of the example input traced; 2, not 1, so the exporters do not specialize the batch axis to 1.
_EXAMPLE_BATCH = 2
# Largest |Δprobability| between the exported file and PyTorch accepted by the check made right after export.
_CHECK_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export cannot be made (missing extra, existing output file...); the message says what to do."""


class DeployableClassifier(nn.Module):
    """Pixels in [0, 1] ``(N, C, H, W)`` → class probabilities ``(N, num_classes)``: the checkpoint's
    normalization, the network, then softmax (or ``[1 - p, p]`` for a one-logit network).

    Args:
        net: The trained network (in eval mode).
        preprocessing: The checkpoint's preprocessing (normalization, channels, class names).
        binary: The network has one logit.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, binary: bool) -> None:
        super().__init__()
        self.net = net
        self.binary = binary
        self.to_rgb = preprocessing.to_rgb and preprocessing.channels == 1
        mean, std = preprocessing.statistics()
        self.normalize = mean is not None
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1, 1, 1, 1))
        self.register_buffer("std", std if std is not None else torch.ones(1, 1, 1, 1))

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.expand(-1, 3, -1, -1) if self.to_rgb else pixels
        if self.normalize:
            x = (x - self.mean) / self.std
        logits = self.net(x)
        if self.binary:
            p = torch.sigmoid(logits.reshape(-1, 1))
            return torch.cat([1 - p, p], dim=1)
        return logits.softmax(dim=1)


def metadata(preprocessing: Preprocessing, checkpoint: Union[str, Path]) -> dict[str, str]:
    """What a deployer needs to feed the model, as strings (JSON values)."""
    return {
        "class_names": json.dumps(list(preprocessing.class_names)),
        "input_size": json.dumps(list(preprocessing.image_size)),
        "input_channels": json.dumps(preprocessing.channels),
        "input": "float32 pixels in [0, 1], shape (N, input_channels, *input_size); normalization is inside",
        "output": "class probabilities, shape (N, len(class_names))",
        "normalization_mean": json.dumps(list(preprocessing.mean) if preprocessing.mean else None),
        "normalization_std": json.dumps(list(preprocessing.std) if preprocessing.std else None),
        "source_checkpoint": Path(checkpoint).name,
    }


def load_deployable(checkpoint: Union[str, Path]) -> tuple[DeployableClassifier, Preprocessing]:
    """The checkpoint's model wrapped as :class:`DeployableClassifier` (eval mode, CPU), and its preprocessing.

    Raises:
        CheckpointError: If the file is not a checkpoint or records no preprocessing.
    """
    from lightning_cnn.module import ImageClassifier

    preprocessing = checkpoint_preprocessing(checkpoint)
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    return DeployableClassifier(model.net, preprocessing, model.binary).eval(), preprocessing


def export(checkpoint: Union[str, Path], format: Format = "onnx", out: Optional[Union[str, Path]] = None) -> Path:
    """Export ``checkpoint``'s model to ``out`` (default: beside the checkpoint, ``<name>.onnx`` / ``<name>.pt``,
    never over an existing file) and check the file against PyTorch on a few inputs.

    Raises:
        ExportError: On an unknown format, an existing ``out``, or a missing ONNX package.
        CheckpointError: If ``checkpoint`` is not a usable checkpoint.
    """
    from lightning_cnn.paths import free_path

    if format not in FORMATS:
        raise ExportError(f"--format {format!r}; choose one of {sorted(FORMATS)}.")
    if out is None:
        path = free_path(Path(checkpoint).with_suffix(FORMATS[format]))
    else:
        path = Path(out).expanduser()
        if path.exists():
            raise ExportError(f"{path} exists; choose another --out or delete it first (nothing was overwritten).")
    if format == "onnx":
        _require_onnx()
    model, preprocessing = load_deployable(checkpoint)
    example = torch.rand(_EXAMPLE_BATCH, preprocessing.channels, *preprocessing.image_size)
    _check_writable(path)
    info = metadata(preprocessing, checkpoint)
    try:
        if format == "onnx":
            _export_onnx(model, example, path, info)
        elif format == "pt2":
            _export_program(model, example, path, info)
        else:
            _export_torchscript(model, example, path, info)
        _check(model, path, format, preprocessing)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written or unverified file left behind
        raise
    return path


def _check_writable(path: Path) -> None:
    """Make ``path``'s folder and try a file in it, so an unwritable place is one line that names ``--out``,
    before any exporter writes (torch's exporters report it in their own words, some with a traceback).

    Raises:
        ExportError: If the folder cannot be made or written to.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise ExportError(
            f"cannot write {path}: {err.strerror}; choose another --out (a folder you can write to)."
        ) from None


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs the optional packages ({err.name} is missing): pip install -e '.[export]'."
        ) from None


def _export_onnx(model: nn.Module, example: Tensor, path: Path, info: dict[str, str]) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress notes; the check below verifies the result
        torch.onnx.export(
            model, (example,), str(path), input_names=["pixels"], output_names=["probabilities"],
            dynamic_shapes={"pixels": {0: batch}}, opset_version=ONNX_OPSET, dynamo=True, verbose=False,
            report=False, external_data=False,
        )  # fmt: skip
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, info)
    onnx.save(graph, str(path))


def _export_program(model: nn.Module, example: Tensor, path: Path, info: dict[str, str]) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes={"pixels": {0: batch}})
    torch.export.save(program, str(path), extra_files={"metadata.json": json.dumps(info)})


def _export_torchscript(model: nn.Module, example: Tensor, path: Path, info: dict[str, str]) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but TorchScript files are what many C++ and mobile
        # runtimes load; tracing is still supported.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(info)})


def run_exported(path: Union[str, Path], format: Format, pixels: Tensor) -> Tensor:
    """Probabilities from an exported file (onnxruntime on the CPU, ``torch.export.load`` or ``torch.jit.load``)."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0])
    if format == "pt2":
        program = torch.export.load(str(path))
        with torch.inference_mode():
            return program.module()(pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(pixels)


def _check(model: nn.Module, path: Path, format: Format, preprocessing: Preprocessing) -> None:
    """Compare the file with PyTorch on a batch of another size than the traced one (dynamic batch axis)."""
    if format == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print(f"Exported {path} (not checked: onnxruntime is not installed)", flush=True)
            return
    pixels = torch.rand(_EXAMPLE_BATCH + 3, preprocessing.channels, *preprocessing.image_size)
    with torch.inference_mode():
        expected = model(pixels)
    got = run_exported(path, format, pixels)
    difference = float((got - expected).abs().max())
    if difference > _CHECK_TOLERANCE or not torch.equal(got.argmax(1), expected.argmax(1)):
        raise ExportError(f"{path} disagrees with PyTorch (max |Δprobability| {difference:.2e}); please report it.")
    print(f"Exported {path} (checked against PyTorch: max |Δprobability| {difference:.1e})", flush=True)
