"""Values from the command line, the YAML files and a checkpoint, before and after parsing: options in ``argv``, a
checkpoint's model and data as config defaults, and the pretrained weights that decide the data's normalization.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from jsonargparse import Namespace

from lightning_cnn.checkpoints import (
    CheckpointError,
    checkpoint_preprocessing,
)
from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.models.backbones import (
    TorchvisionNet,
    weights_name_for,
)

# --ckpt_path values Lightning resolves itself rather than a file path.
_CKPT_KEYWORDS = ("last", "best", "hpc")
# Keys the CLI fills from the datamodule: a checkpoint and a config that differ only there describe one model.
_LINKED_NET_KEYS = ("in_channels", "num_classes", "input_size")
_FILES_DATAMODULE = "lightning_cnn.data.ImageFilesDataModule"


def _option_value(argv: list[str], option: str) -> Optional[str]:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in ``argv`` (the last one given), else ``None``."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def _config_files(argv: list[str]) -> list[str]:
    """The ``--config`` / ``-c`` files of ``argv``, in the order given."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]


def _experiment_name(argv: list[str], default: str) -> str:
    """The experiment a command runs: the name of its first ``--config`` file (``bn_cnn_mnist``), else ``default``.
    Run folders and preview pictures are named after it."""
    configs = _config_files(argv)
    return Path(configs[0]).stem if configs else default


def _typed_values(argv: list[str], keys: list[str]) -> dict[str, Any]:
    """Values given for ``keys`` (dotted) on the command line or in the ``--config`` YAML files of ``argv``."""
    typed: dict[str, Any] = {}
    for config in _config_files(argv):
        if Path(config).is_file():
            try:
                document = yaml.safe_load(Path(config).read_text()) or {}
            except yaml.YAMLError:
                continue  # the parser has already reported a broken file
            for key in keys:
                found = _lookup(document, key.split("."))
                if found is not _MISSING:
                    typed[key] = found
    for key in keys:
        value = _option_value(argv, f"--{key}")
        if value is not None:
            typed[key] = yaml.safe_load(value)
    return typed


_MISSING = object()


def _lookup(document: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(document, dict) or part not in document:
            return _MISSING
        document = document[part]
    return document


def _has_option(argv: list[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in argv)


#: The configs shipped with the package: in a checkout, a link to its ``configs/`` folder; in a wheel, the files.
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Options whose value may be the name of a shipped file, and the folder of SHIPPED_CONFIGS the name is looked up in.
_SHIPPED_FOLDERS = {
    "--config": "",
    "-c": "",
    "--model": "model",
    "--data": "data",
    "--trainer": "trainer",
    "--search": "search",  # tune's search files
}
_YAML_SUFFIXES = (".yaml", ".yml")


def shipped_config(name: str, folder: str = "") -> Optional[Path]:
    """The shipped config that ``name`` stands for (``lenet_fashion_mnist``, ``transfer/scratch_fashion_5to9``,
    ``.yaml`` optional), looked up in ``folder`` of :data:`SHIPPED_CONFIGS`; ``None`` if there is none."""
    if not name or name.startswith(("/", ".", "~")):
        return None
    candidate = SHIPPED_CONFIGS / folder / name
    for path in (candidate, candidate.with_name(candidate.name + ".yaml")):
        if path.suffix in _YAML_SUFFIXES and path.is_file():
            return path
    return None


def with_shipped_configs(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config NAME`` (and ``--model`` / ``--data`` / ``--trainer NAME``, looked up in the
    matching folder) that is not a file here replaced by the shipped config's path, so a pip install runs
    ``lightning-cnn fit --config lenet_fashion_mnist`` from any folder. A path that exists is left as it is.

    Raises:
        ConfigError: If a ``--config`` value is neither a file nor the name of a shipped config.
    """
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        option, equals, value = arg.partition("=")
        if option not in _SHIPPED_FOLDERS:
            continue
        if not equals:
            if i + 1 >= len(resolved):
                continue
            value = resolved[i + 1]
        if Path(value).expanduser().exists():
            continue
        path = shipped_config(value, _SHIPPED_FOLDERS[option])
        if path is not None:
            if equals:
                resolved[i] = f"{option}={path}"
            else:
                resolved[i + 1] = str(path)
        elif option in ("--config", "-c") and not value.startswith(("{", "[")):
            names = ", ".join(path.stem for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")))
            raise ConfigError(
                f"--config {value}: no such file, and no shipped config of that name; give a YAML path or a shipped "
                f"name: {names} (pieces too, e.g. trainer/smoke)"
            )
    return resolved


def _files_data(inputs: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The datamodule of new images to predict on, with the checkpoint's preprocessing."""
    preprocessing = checkpoint_preprocessing(checkpoint).to_dict()
    return {"class_path": _FILES_DATAMODULE, "init_args": {"inputs": inputs, "preprocessing": preprocessing}}


def _class_config(hparams: Optional[dict], ckpt_path: str, what: str) -> dict[str, Any]:
    """``{class_path, init_args}`` from a checkpoint's saved (CLI) hyperparameters."""
    hparams = dict(hparams or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if class_path is None:
        raise CheckpointError(
            f"{ckpt_path} does not record its {what}'s class (not written by cli.py); give --config with the "
            f"{what} it was trained with."
        )
    return {"class_path": class_path, "init_args": hparams}


def _net_description(model: Any) -> dict[str, Any]:
    """The configured network as comparable plain values: class path and init args, linked keys left out."""
    if model is None:
        return {}
    model = model.as_dict() if isinstance(model, Namespace) else dict(model)
    init = model.get("init_args", model)
    net = init.get("net") or {}
    net = net.as_dict() if isinstance(net, Namespace) else dict(net)
    args = {k: v for k, v in (net.get("init_args") or {}).items() if k not in _LINKED_NET_KEYS}
    return {"model": model.get("class_path", model.get("_class_path")), "net": net.get("class_path"), **args}


def _note_model_difference(config_model: Any, ckpt_hparams: Optional[dict], ckpt_path: str) -> None:
    """One line when the checkpoint's model (which is what runs) differs from the configured one."""
    configured, saved = _net_description(config_model), _net_description(ckpt_hparams)
    if not configured.get("net") or not saved.get("net"):
        return
    differing = [k for k in saved if k in configured and _plain(configured[k]) != _plain(saved[k])]
    if differing:
        detail = "; ".join(
            f"{k}: {saved[k]!r} in the checkpoint, {configured[k]!r} in the config" for k in differing[:3]
        )
        print(
            f"note: the model comes from --ckpt_path {ckpt_path}, not from the config ({detail}); the run's "
            "config.yaml records the checkpoint's model.",
            file=sys.stderr,
        )


def _plain(value: Any) -> Any:
    """Tuples as lists and Namespaces as dicts, so a config value and its checkpoint copy compare equal."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _link_weights_to_normalization(config: Namespace) -> None:
    """A pretrained ``TorchvisionNet``'s weights decide the datamodule's ``normalize_from_weights``: one key sets
    both, so changing ``arch`` or ``weights`` changes the preprocessing too.

    Raises:
        ConfigError: If ``normalize_from_weights`` is set to other weights than the network's.
    """
    model, data = config.get("model"), config.get("data")
    net = model.get("init_args", Namespace()).get("net") if isinstance(model, Namespace) else None
    data_args = data.get("init_args") if isinstance(data, Namespace) else None
    if not isinstance(net, Namespace) or not isinstance(data_args, Namespace):
        return
    if "normalize_from_weights" not in data_args or not _is_subclass(net.get("class_path"), TorchvisionNet):
        return
    net_args = net.get("init_args") or Namespace()
    arch = net_args.get("arch", "vgg16")
    name = weights_name_for(arch, net_args.get("weights"))
    given = data_args.get("normalize_from_weights")
    if name is None:  # random init or a local file: the datamodule's own setting stands
        return
    if given and not _same_weights(given, name):
        raise ConfigError(
            f"data.normalize_from_weights={given!r} disagrees with the network's weights {name!r} "
            f"(arch {arch}); leave normalize_from_weights out: it follows the network's weights."
        )
    data_args["normalize_from_weights"] = name


def _is_subclass(class_path: Optional[str], base: type) -> bool:
    if not class_path:
        return False
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, base)


def _same_weights(a: str, b: str) -> bool:
    from torchvision.models import get_weight

    try:
        return get_weight(a) == get_weight(b)
    except (ValueError, KeyError, AttributeError):
        return False
