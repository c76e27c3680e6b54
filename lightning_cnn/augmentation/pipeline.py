"""Any Albumentations pipeline from YAML, every name and argument checked.

:func:`build_pipeline` turns a hand-written list of transforms into an ``albumentations.Compose`` (Albumentations 2.x
only *warns* about unknown or renamed 1.x arguments and drops them). YAML format — one entry per transform,
``Name: {arguments}`` (or just ``Name``)::

    - Affine: {rotate: [-20, 20], border_mode: BORDER_REPLICATE, p: 1.0}
    - HorizontalFlip          # default arguments
    - OneOf:
        transforms: [GaussNoise, {Blur: {blur_limit: 3}}]
        p: 0.3

Names are Albumentations classes, :class:`~lightning_cnn.augmentation.KerasAffine`, or dotted paths to a transform
class; strings ``BORDER_*`` / ``INTER_*`` stand for the OpenCV constants. Albumentations' own serialisation
(``A.to_dict(pipeline)``: ``{"transform": {"__class_fullname__": ...}}``) is read as well.

Why not jsonargparse ``class_path`` lists of transforms, which check arguments against signatures too (they do
build Albumentations 2.x transforms): they cannot read ``A.to_dict`` output (a saved pipeline) or name OpenCV
constants, and they spell every transform as ``class_path`` + ``init_args``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

import albumentations as A
import cv2
import numpy as np
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform

from lightning_cnn.augmentation.per_sample import KerasAffine
from lightning_cnn.augmentation.seeding import _seeded

__all__ = ["build_pipeline"]

# Albumentations 1.x argument names that 2.x silently drops (its migration notes), with what to write instead.
_RENAMED_ARGS = {
    "always_apply": "it was removed in Albumentations 2; use p: 1.0",
    "cval": "use fill",
    "value": "use fill",
    "cval_mask": "use fill_mask",
    "mask_value": "use fill_mask",
    "mode": "use border_mode",
}
# These change dtype or size, which the datamodule's own float conversion and batching rely on.
_NOT_PER_SAMPLE = {"Normalize", "ToFloat", "FromFloat", "ToTensorV2"}
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _transform_names() -> list[str]:
    names = [n for n, obj in vars(A).items() if inspect.isclass(obj) and issubclass(obj, (BasicTransform, BaseCompose))]
    return names + ["KerasAffine"]


def _resolve_transform(name: str, where: str) -> type:
    if not isinstance(name, str):
        raise ValueError(f"{where}: transform name {name!r} is not a string; write `- Name: {{arguments}}`.")
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            raise ValueError(f"{where}: cannot import transform {name!r}; check the dotted path.") from None
    elif name == "KerasAffine":
        cls = KerasAffine
    else:
        cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, (BasicTransform, BaseCompose))):
        close = difflib.get_close_matches(name.rpartition(".")[2], _transform_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"{where}: unknown transform {name!r}.{hint} Use an Albumentations 2.x class name "
            "(https://albumentations.ai/docs/), KerasAffine, or a dotted path to a transform class."
        )
    return cls


def _cv2_constant(value: Any) -> Any:
    """``"BORDER_REPLICATE"`` / ``"cv2.INTER_LINEAR"`` → the OpenCV integer, so YAML can name them."""
    if isinstance(value, str):
        name = value.removeprefix("cv2.")
        if name.startswith(("BORDER_", "INTER_")) and hasattr(cv2, name):
            return getattr(cv2, name)
    if isinstance(value, list):
        return [_cv2_constant(v) for v in value]
    return value


def _build_transform(name: str, args: Mapping[str, Any], where: str) -> Any:
    cls = _resolve_transform(name, where)
    label = f"{where} {name}"
    if cls.__name__ in _NOT_PER_SAMPLE:
        raise ValueError(
            f"{label}: not allowed in a training augmentation, the datamodule converts to float and normalizes "
            "itself (data.normalize); remove it."
        )
    if not isinstance(args, Mapping):
        raise ValueError(f"{label}: arguments must be a mapping like {{p: 0.5}}, got {args!r}.")
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [param for param, spec in parameters.items() if param != "self" and spec.kind not in _VARIADIC]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for arg in args:
        if arg in accepted or takes_any:
            continue
        if arg in _RENAMED_ARGS:
            fix = _RENAMED_ARGS[arg]
        else:
            close = difflib.get_close_matches(arg, accepted, n=2)
            fix = f"did you mean {' or '.join(close)}?" if close else f"accepted: {', '.join(accepted)}"
        raise ValueError(f"{label}: unknown argument {arg!r} ({fix}).")
    kwargs = {k: _cv2_constant(v) for k, v in args.items()}
    if "transforms" in kwargs:
        kwargs["transforms"] = _build_list(kwargs["transforms"], f"{label}.transforms")
    if "strict" in accepted and issubclass(cls, BasicTransform):
        # Without strict, Albumentations replaces a value it cannot validate by the defaults with a warning.
        kwargs.setdefault("strict", True)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ValueError(f"{label}({', '.join(f'{k}={v!r}' for k, v in args.items())}): {detail}") from None


def _split_entry(entry: Any, where: str) -> tuple[str, Mapping[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and "__class_fullname__" in entry:  # Albumentations' own serialisation
        args = {k: v for k, v in entry.items() if k not in ("__class_fullname__", "id")}
        return entry["__class_fullname__"], args
    if isinstance(entry, Mapping) and len(entry) == 1:
        name, args = next(iter(entry.items()))
        return name, {} if args is None else args
    raise ValueError(
        f"{where}: {entry!r} is not a transform entry; write `- Name: {{argument: value}}` (one name per entry)."
    )


def _build_list(entries: Any, where: str) -> list[Any]:
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
        raise ValueError(f"{where} must be a list of transforms (`- Name: {{arguments}}`), got {entries!r}.")
    return [_build_transform(*_split_entry(e, f"{where}[{i}]"), f"{where}[{i}]") for i, e in enumerate(entries)]


def build_pipeline(spec: Union[Sequence[Any], Mapping[str, Any]], seed: Optional[int] = None) -> A.Compose:
    """Build an ``albumentations.Compose`` from the YAML format above (or Albumentations' ``to_dict`` output).

    Args:
        spec: A list of ``{Name: {arguments}}`` entries (or bare names), or ``{"transform": {...}}`` as written
            by ``albumentations.to_dict``.
        seed: Seed of the pipeline's random draws (one stream shared by all transforms).

    Raises:
        ValueError: On an unknown transform or argument (naming it, with close matches or the 1.x → 2.x rename),
            or a value Albumentations rejects.
    """
    if isinstance(spec, Mapping) and "transform" in spec:
        root = spec["transform"]
        name, args = _split_entry(root, "transform")
        if name.rpartition(".")[2] not in ("Compose", "Sequential"):
            return _seeded(A.Compose([_build_transform(name, args, "transform")]), seed)
        return _seeded(A.Compose(_build_list(args.get("transforms", []), "transform.transforms")), seed)
    return _seeded(A.Compose(_build_list(spec, "transforms")), seed)


@contextlib.contextmanager
def _opencv_single_threaded() -> Iterator[None]:
    # OpenCV's thread pool does not survive fork(): a DataLoader worker forked after a threaded warp can hang in its
    # first warp; the workers are the parallelism anyway. Set per call, not at import, to leave the user's process be.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


class _CheckedPipeline:
    """Runs a pipeline per sample and checks it keeps the uint8 image and its size, which batching needs."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self.seed = pipeline.seed  # what the pipeline was built with; workers mix it into their own seeds

    def set_random_seed(self, seed: int) -> None:
        _seeded(self.pipeline, seed)

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        with _opencv_single_threaded():
            out = self.pipeline(image=image)
        result = out["image"]
        if result.dtype != np.uint8 or result.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"the augmentation turned a {image.dtype} {image.shape} image into {result.dtype} {result.shape}; "
                "training augmentations must keep uint8 and the image size (resize with data.image_size, "
                "normalize with data.normalize)."
            )
        return out
