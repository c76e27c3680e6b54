"""The shards' format as this package writes and trusts it: the description file beside the split folders, the
LitData sample serializers that may be read (none that runs code), and the checks that a split's chunk files are
whole. Shared by the writer (:mod:`~lightning_cnn.data.shards`) and the reader (:mod:`~lightning_cnn.data.streaming`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_cnn.data.errors import CorruptDataError, DataNotFoundError

__all__ = ["META_FILE", "SAFE_FORMATS", "check_split_files", "read_meta"]

#: What :func:`write_shards` writes beside the split folders, and :class:`ShardedDataModule` reads first.
META_FILE = "lightning_cnn.json"
_FORMAT_VERSION = 1
_SPLITS = ("train", "val", "test")
#: The LitData serializers a sample may use: integers, raw bytes (an encoded image file), plain arrays. Not
#: "pickle" (runs code when read) nor the decoders of other media.
SAFE_FORMATS = frozenset({"int", "bytes", "numpy", "no_header_numpy"})
_INSTALL_HINT = 'LitData is not installed; install the extra: pip install -e ".[stream]" (or pip install litdata).'


def _litdata() -> Any:
    try:
        import litdata
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return litdata


def _is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _read_text(location: str) -> str:
    if _is_remote(location):
        import fsspec  # comes with Lightning; object stores need their fsspec backend (s3fs, gcsfs…)

        with fsspec.open(location, "r") as handle:
            return handle.read()
    return Path(location.removeprefix("file://")).read_text()


def read_meta(root: str) -> dict[str, Any]:
    """``lightning_cnn.json`` of a shard folder, checked.

    Raises:
        DataNotFoundError: If it is missing.
        CorruptDataError: If it is not what :func:`write_shards` writes.
    """
    location = f"{root.rstrip('/')}/{META_FILE}"
    try:
        meta = json.loads(_read_text(location))
    except FileNotFoundError:
        raise DataNotFoundError(
            f"{location} not found: {root} is not a shard folder; write one with python cli.py optimize --data <data "
            "config> --output_dir <folder>."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptDataError(f"{location} is not valid JSON ({err}); write the shards again.") from None
    keys = {"format", "class_names", "channels", "image_size", "mean", "std", "splits"}
    if not isinstance(meta, dict) or not keys <= set(meta) or meta["format"] != _FORMAT_VERSION:
        raise CorruptDataError(
            f"{location} is not a lightning_cnn shard description (format {_FORMAT_VERSION}, keys {sorted(keys)}); "
            "write the shards again with python cli.py optimize."
        )
    if "train" not in meta["splits"]:
        raise CorruptDataError(f"{location} lists no train split; write the shards again with python cli.py optimize.")
    return meta


def check_split_files(root: str, split: str) -> None:
    """Refuse a split whose LitData index declares a serializer outside :data:`SAFE_FORMATS`, or (for a local
    folder) whose chunk files do not match the index.

    Raises:
        CorruptDataError: Naming the index or chunk file and what is wrong.
    """
    location = f"{root.rstrip('/')}/{split}/index.json"
    try:
        index = json.loads(_read_text(location))
        formats = index["config"]["data_format"]
    except FileNotFoundError:
        raise DataNotFoundError(f"{location} not found; write the shards again with python cli.py optimize.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CorruptDataError(f"{location} is not a LitData index ({type(err).__name__}: {err}).") from None
    unsafe = [f for f in formats if str(f).split(":")[0] not in SAFE_FORMATS]
    if unsafe:
        raise CorruptDataError(
            f"{location} declares sample format(s) {unsafe}; only {sorted(SAFE_FORMATS)} are read (a pickled sample "
            "can run code when loaded). Write the shards with python cli.py optimize."
        )
    if not _is_remote(root):
        _check_chunks(Path(root) / split, index.get("chunks", []))


def _check_chunks(folder: Path, chunks: list[dict[str, Any]]) -> None:
    """Each chunk file of a local split is there, as long as its index says, and its header counts the samples
    the index does: a damaged chunk is named here, not met in a loader worker as LitData's traceback (a header
    count that does not match, an empty file that cannot be mapped, a wait for a "download" that never ends).

    Raises:
        CorruptDataError: Naming the chunk file and what is wrong with it.
    """
    for chunk in chunks:
        path = folder / str(chunk.get("filename"))
        expected_bytes, expected_items = chunk.get("chunk_bytes"), chunk.get("chunk_size")
        if not path.is_file():
            problem = "it is missing"
        elif path.stat().st_size != expected_bytes:
            problem = f"it is {path.stat().st_size:,} bytes, its index says {expected_bytes:,} (truncated or replaced)"
        else:
            with path.open("rb") as handle:
                items = int.from_bytes(handle.read(4), "little")
            if items == expected_items:
                continue
            problem = f"its header counts {items:,} samples, its index {expected_items:,} (overwritten)"
        raise CorruptDataError(
            f"{path}: the shard file is damaged ({problem}); write the shards again with python cli.py optimize "
            "(--overwrite true to replace them)."
        )
