"""The help people read: a screen per subcommand with the options they change, each of them a real key; the
parser's whole list behind ``--help full``; one line per subcommand at the top."""

from __future__ import annotations

import re

import pytest
import yaml

from lightning_cnn.cli import main
from lightning_cnn.cli.help import SUBCOMMAND_HELP
from tests.conftest import CONFIGS

SHORT = ("fit", "validate", "test", "predict")
# Options in the short help that are not dotted config keys, or stand for a family of keys.
NOT_KEYS = {"--config", "--print_config", "--help", "--trainer", "--data", "--model", "--KEY"}


def _printed(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def _keys(document: object, prefix: str = "") -> set[str]:
    if not isinstance(document, dict):
        return {prefix}
    keys = {prefix} if prefix else set()
    for name, value in document.items():
        keys |= _keys(value, f"{prefix}.{name}" if prefix else str(name))
    return keys


@pytest.mark.parametrize("subcommand", SHORT)
def test_the_short_help_fits_a_screen_and_names_only_real_keys(capsys, subcommand):
    text = _printed(capsys, [subcommand, "--help"])
    assert len(text.splitlines()) <= 80, text
    assert f"cli.py {subcommand} --help full" in text
    resolved = _printed(capsys, [subcommand, "--config", str(CONFIGS / "lenet_fashion_mnist.yaml"), "--print_config"])
    keys = _keys(yaml.safe_load(resolved))
    named = set(re.findall(r"--[\w.]+", text)) - NOT_KEYS
    assert named, text
    for option in named:
        key = option[2:].replace(".KEY", "")
        assert key in keys, f"{option} in the short help of {subcommand} is not a key of the resolved config"


def test_help_full_is_the_parsers_whole_list(capsys):
    text = _printed(capsys, ["fit", "--help", "full"])
    assert len(text.splitlines()) > 300 and "--trainer.max_epochs" in text and "--help full" not in text
    assert "--trainer.max_epochs" in _printed(capsys, ["fit", "--help=full"])


def test_the_top_level_help_gives_each_subcommand_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = _printed(capsys, ["--help"])
    for name, line in SUBCOMMAND_HELP.items():
        assert re.search(rf"^    {name}\s+{re.escape(line)}$", text, flags=re.M), f"{name}:\n{text}"
