"""The docs' reference pages, generated from the code so they cannot drift from it:

- ``reference/cli.md``: ``python cli.py --help`` and each subcommand's ``--help``, as the parser prints them;
- ``reference/configs.md``: every YAML file in ``configs/``, with its leading comment and the name ``--config`` takes;
- ``reference/api.md``: one mkdocstrings directive per public module; the pages' text comes from the docstrings.

``mkdocs build`` runs this file (the ``gen-files`` plugin in ``mkdocs.yml``), so the pages exist only in the built
site. ``python scripts/docs_reference.py --out DIR`` writes them into ``DIR`` to read them without a build.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
HELP_COLUMNS = "100"
SHORT_HELP_SUBCOMMANDS = (
    "fit",
    "validate",
    "test",
    "predict",
)  # the others have one help only  # the width argparse wraps help to, so the page does not depend on the terminal
# The public modules, in the order a reader meets them; each page section lists the module's __all__.
API_MODULES = (
    ("The module", "lightning_cnn.module"),
    ("Architectures", "lightning_cnn.models"),
    ("Datamodules", "lightning_cnn.data"),
    ("Augmentation", "lightning_cnn.augmentation"),
    ("Callbacks", "lightning_cnn.callbacks"),
    ("Regularization", "lightning_cnn.regularization"),
    ("Preprocessing", "lightning_cnn.preprocessing"),
    ("Predict", "lightning_cnn.predict"),
    ("Export", "lightning_cnn.export"),
    ("Keras summary", "lightning_cnn.summary"),
    ("Augmentation preview", "lightning_cnn.preview"),
    ("Checkpoints", "lightning_cnn.checkpoints"),
    ("Loggers", "lightning_cnn.loggers"),
    ("Registries", "lightning_cnn.registry"),
    ("Output paths", "lightning_cnn.paths"),
    ("Command line", "lightning_cnn.cli"),
    ("Sweeps", "lightning_cnn.tune"),
)
# Folders of configs/ that hold pieces, and what they are.
PIECES = {
    "model": "Models: the slides' networks as compiled (`--model NAME` or `model: model/NAME.yaml`).",
    "data": "Datasets (`--data NAME` or `data: data/NAME.yaml`).",
    "trainer": "Trainers: devices, precision, smoke runs, a time budget (`--trainer NAME`).",
    "callbacks": "Callbacks (`trainer.callbacks: callbacks/NAME.yaml`).",
    "augmentation": "Augmentation (a second `--config augmentation/NAME`).",
    "transfer": "The offline transfer experiment (`--config transfer/NAME`).",
    "search": "Search files of sweeps (`python cli.py tune --config EXPERIMENT --search NAME`).",
}


def cli_help(argv: list[str]) -> str:
    """What ``python cli.py ARGV`` prints (``--help`` exits)."""
    from lightning_cnn.cli import main

    out, saved = io.StringIO(), sys.argv
    sys.argv = ["cli.py", *argv]  # as typed: the usage line names cli.py
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main()
    finally:
        sys.argv = saved
    return out.getvalue().rstrip()


def cli_page() -> str:
    os.environ["COLUMNS"] = HELP_COLUMNS
    top = cli_help(["--help"])
    subcommands = re.search(r"\{([a-z_,]+)\}", top)[1].split(",")  # argparse's {fit,validate,...}
    parts = [
        "# Command line",
        "",
        "`python cli.py` in a checkout and `lightning-cnn` after `pip install` are the same command. This page is "
        "generated from the parser (`scripts/docs_reference.py`); what follows is exactly what `--help` prints.",
        "",
        "```text",
        "$ python cli.py --help",
        top,
        "```",
    ]
    for sub in subcommands:
        parts += ["", f"## {sub}", "", f'??? example "python cli.py {sub} --help"', "", "    ```text"]
        parts += [f"    {line}".rstrip() for line in cli_help([sub, "--help"]).splitlines()]
        parts += ["    ```"]
    return "\n".join(parts) + "\n"


def _leading_comment(path: Path) -> str:
    """The file's first comment paragraph: up to a blank comment line or a command line."""
    lines = []
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text or text.startswith(("python ", "lightning-cnn ")):
            break
        lines.append(text)
    return " ".join(lines)


def _config_section(path: Path) -> list[str]:
    name = str(path.relative_to(CONFIGS).with_suffix(""))
    comment = _leading_comment(path) or "(no description in the file)"
    text = path.read_text().rstrip()
    return [
        f"### `{name}`",
        "",
        f"`configs/{path.relative_to(CONFIGS)}` — {comment}",
        "",
        f'??? note "{path.name}"',
        "",
        "    ```yaml",
        *[f"    {line}".rstrip() for line in text.splitlines()],
        "    ```",
        "",
    ]


def configs_page() -> str:
    parts = [
        "# Configs",
        "",
        "Every YAML file in `configs/`, generated from the files (`scripts/docs_reference.py`). Each is also shipped "
        "in the package: `--config NAME` (the name in each heading) finds it from any folder, after `pip install` "
        "too; a path works as well. An experiment composes pieces, named by path relative to itself.",
        "",
        "## Experiments",
        "",
        "`python cli.py fit --config configs/NAME.yaml`, or `lightning-cnn fit --config NAME`.",
        "",
    ]
    for path in sorted(CONFIGS.glob("*.yaml")):
        parts += _config_section(path)
    for folder, about in PIECES.items():
        parts += [f"## {folder}/", "", about, ""]
        for path in sorted((CONFIGS / folder).glob("*.yaml")):
            parts += _config_section(path)
    return "\n".join(parts)


def api_page() -> str:
    parts = [
        "# Python API",
        "",
        "Every public class and function (each module's `__all__`), from the docstrings. Arguments of the classes "
        "that configs build are their YAML keys: `init_args` under the `class_path`.",
        "",
    ]
    for title, module in API_MODULES:
        parts += [f"## {title}", "", f"::: {module}", "    options:", "      show_root_heading: false", ""]
    return "\n".join(parts)


PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_page,
    "reference/configs.md": configs_page,
    "reference/api.md": api_page,
}


def _write_all(opener: Callable[[str], contextlib.AbstractContextManager[io.TextIOBase]]) -> None:
    for name, make in PAGES.items():
        with opener(name) as file:
            file.write(make())


@contextlib.contextmanager
def _into(folder: Path, name: str) -> Iterator[io.TextIOBase]:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        yield file


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Write the docs' generated reference pages into a folder.")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write reference/*.md into")
    options = parser.parse_args(argv)
    _write_all(lambda name: _into(options.out, name))
    print(f"Wrote {', '.join(PAGES)} into {options.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1:])
elif __name__ == "<run_path>":  # run by mkdocs' gen-files plugin
    import mkdocs_gen_files

    sys.path.insert(0, str(REPO))
    _write_all(lambda name: mkdocs_gen_files.open(name, "w"))
