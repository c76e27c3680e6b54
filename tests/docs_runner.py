"""Runs the code blocks of a Markdown page as a reader would, in a scratch folder: the rules are in
``docs/contributing-docs.md`` ("Every block runs in the tests"). Used by ``tests/test_docs.py`` (every page, in the
checkout) and ``tests/test_wheel.py`` (a page, against the installed wheel, from an empty folder).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# What a scratch folder links to from the checkout, so pages can name these as a reader in the checkout does.
CHECKOUT_LINKS = ("cli.py", "configs", "examples", "slurm", "scripts", "benchmarks")
CLI_SUBCOMMANDS = ("fit", "validate", "test", "predict", "summary", "preview", "export", "optimize", "tune")
PAGE_TIMEOUT_S = 1800  # catches a hung page only; a page's blocks take seconds to minutes

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`\n]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<what>.*?)\s*-->\s*$")
_SNIPPET = re.compile(r'^(?P<indent>\s*)--8<--\s+"(?P<path>[^"]+)"\s*$')
_TAG = re.compile(r"\[(network|GPU|SLURM)\]")
# Lines that set up the environment the tests already run in: shown to readers, not run.
_SETUP_COMMANDS = ("make", "pip", "git", ".", "source", "apt-get", "sudo", "cd")
# Commands that need a cluster or GPUs: their cli.py arguments are checked with --print_config.
_CLUSTER_COMMANDS = ("torchrun", "sbatch", "srun")


@dataclass
class Block:
    """A fenced code block of a page: its language, text (snippets included), line number and directive."""

    page: Path
    line: int
    language: str
    code: str
    directive: str = ""

    @property
    def where(self) -> str:
        return f"{_shown(self.page)}:{self.line}"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, dedented, with ``--8<-- "file"`` lines replaced by the file."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        directive = _DIRECTIVE.match(previous)
        code = "\n".join(_with_snippets(body)) + "\n"
        blocks.append(Block(page, i + 1, language, code, directive["what"] if directive else ""))
        i = j + 1
    return blocks


def _with_snippets(body: list[str]) -> list[str]:
    out: list[str] = []
    for line in body:
        snippet = _SNIPPET.match(line)
        if snippet:
            out += (REPO_ROOT / snippet["path"]).read_text().splitlines()
        else:
            out.append(line)
    return out


def page_directives(page: Path) -> list[str]:
    return [m["what"] for m in map(_DIRECTIVE.match, page.read_text().splitlines()) if m]


# --- shell ------------------------------------------------------------------------------------------------------


def _logical_lines(code: str) -> list[str]:
    """Lines with their ``\\`` continuations joined."""
    joined, current = [], ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        joined.append(current + raw)
        current = ""
    if current:
        joined.append(current)
    return [line for line in joined if line.strip()]


def _split_comment(line: str) -> tuple[str, str]:
    """``line`` as (command, comment): a ``#`` after a space and outside quotes starts the comment."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:]
    return line.rstrip(), ""


def _cli_arguments(words: list[str]) -> Optional[list[str]]:
    """The arguments after ``cli.py`` (or the ``lightning-cnn`` console script) in a command's words."""
    for i, word in enumerate(words):
        if word.endswith("cli.py") or word == "lightning-cnn":
            return words[i + 1 :]
    return None


def shell_script(block: Block) -> str:
    """The bash script that checks ``block``: each logical line as written, setup lines left out, lines that need
    the network, GPUs or a cluster checked with ``--print_config``, benchmark and script lines checked against
    their ``--help``. (``python cli.py`` lines get the smoke trainer from the ``python`` on PATH.)"""
    out = ["set -euo pipefail"]
    for line in _logical_lines(block.code):
        command, comment = _split_comment(line)
        if not command:
            continue
        words = command.split()
        first = words[0]
        if first in _SETUP_COMMANDS:
            out.append(f": not run, the tests run inside that setup: {shlex.quote(command)}")
        elif first in _CLUSTER_COMMANDS or _TAG.search(comment):
            out.append(_parse_only(command, words))
        elif first == "python" and len(words) > 1 and words[1].startswith(("benchmarks/", "scripts/")):
            out.append(f"check_options {shlex.quote(words[1])} {' '.join(shlex.quote(w) for w in words[2:])}")
        else:
            out.append(command)
    return "\n".join(out) + "\n"


def _parse_only(command: str, words: list[str]) -> str:
    if words[0] == "sbatch":  # sbatch [options] slurm/train.sbatch CONFIG [cli.py options], or tune.sbatch
        script = next(i for i, word in enumerate(words) if word.endswith(".sbatch"))
        if words[script].endswith("tune.sbatch"):  # tune.sbatch CONFIG SEARCH [tune options]
            config, search, extra = words[script + 1], words[script + 2], words[script + 3 :]
            arguments = ["tune", "--config", config, "--search", search, *extra]
        else:
            config, extra = words[script + 1], words[script + 2 :]
            arguments = ["fit", "--config", config, *extra]
        head = f"test -f {shlex.quote(words[script])}"
    else:
        arguments = _cli_arguments(words)
        if arguments is None:
            raise ValueError(f"cannot check {command!r}: no cli.py or lightning-cnn in it")
        head = ":"
    # Shell words stay unquoted so $VARIABLES expand as in the original line. A sweep checks its config and search
    # file with --dry-run.
    check = "--dry-run" if arguments[0] == "tune" else "--print_config"
    return f"{head} && python cli.py {' '.join(arguments)} {check} > /dev/null"


# The shell functions and PATH shims the scripts run with.
_PRELUDE = r"""
check_options() {  # SCRIPT OPTIONS...: each --option must appear in SCRIPT's --help
    local help
    help=$(python "$1" --help)
    shift
    for word in "$@"; do
        case "$word" in --*) option=${word%%=*}
            grep -q -- "$option" <<<"$help" || { echo "$option is not an option of the script" >&2; return 1; } ;;
        esac
    done
}
"""

# `python SCRIPT …` and `lightning-cnn …` for the pages: `cli.py` subcommands get the smoke trainer; with a
# docs server (tests/docs_server.py) the command runs in a child forked from it, else in a new process.
_SHIM = """#!{python} -S
import json, os, socket, sys

SUBCOMMANDS = {subcommands!r}


def smoke(args):
    asks_only = any(arg.startswith("--print_config") or arg in ("--help", "-h", "--dry-run") for arg in args)
    if args and args[0] in SUBCOMMANDS and not asks_only:
        if args[0] == "tune":  # a sweep of two smoke trials, one at a time
            capped = ("--trials", "--workers")
            args = [a for i, a in enumerate(args) if not a.startswith(capped) and (i == 0 or args[i - 1] not in capped)]
            args += ["--trials", "2"]
        return [*args, "--trainer", os.environ["SMOKE_TRAINER"]]
    return args


real, server = os.environ["REAL_PYTHON"], os.environ.get("DOCS_SERVER", "")
args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "lightning-cnn":
    kind, argv, fallback = "console", smoke(args), [os.environ["REAL_CONSOLE"]]
elif args and not args[0].startswith("-") and os.path.isfile(args[0]):
    rest = smoke(args[1:]) if os.path.basename(args[0]) == "cli.py" else args[1:]
    kind, argv, fallback = "script", [args[0], *rest], [real]
else:
    os.execv(real, [real, *args])
if not server or not os.path.exists(server):
    os.execv(fallback[0], [*fallback, *argv])
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect(server)
request = {{"kind": kind, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
status = b""
while not status.endswith(b"\\n"):
    chunk = connection.recv(64)
    if not chunk:
        break
    status += chunk
sys.exit(int(status or 1))
"""


# --- running a page ----------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A scratch folder to run a page in, and the interpreter and console script its commands use."""

    folder: Path
    python: str = sys.executable
    console: Optional[str] = None  # the lightning-cnn script; default: the one beside ``python``
    in_checkout: bool = True  # link the checkout's folders in and put it on PYTHONPATH
    server: Optional[str] = None  # a docs server's socket (tests/docs_server.py): commands start in milliseconds
    env: dict[str, str] = field(default_factory=dict)

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.in_checkout:
            for name in CHECKOUT_LINKS:
                link = self.folder / name
                if not link.exists():
                    link.symlink_to(REPO_ROOT / name)
        bin_dir = self.folder.parent / f"{self.folder.name}-bin"
        bin_dir.mkdir(exist_ok=True)
        shim = _SHIM.format(python=self.python, subcommands=CLI_SUBCOMMANDS)
        for name in ("python", "python3", "lightning-cnn"):
            (bin_dir / name).write_text(shim)
            (bin_dir / name).chmod(0o755)
        console = self.console or str(Path(self.python).with_name("lightning-cnn"))
        pythonpath = [str(REPO_ROOT)] if self.in_checkout else []
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "REAL_PYTHON": self.python,
            "REAL_CONSOLE": console,
            # A shipped piece by name: found by the installed package, in the checkout or from a wheel.
            "SMOKE_TRAINER": "smoke",
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "MPLBACKEND": "Agg",
            "DOCS_SERVER": self.server or "",
        }

    def run(self, command: list[str], what: str) -> str:
        result = subprocess.run(
            command, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise AssertionError(f"{what} failed (exit {result.returncode}):\n{output[-4000:]}")
        return output


def run_page(page: Path, workspace: Workspace) -> list[str]:
    """Run every block of ``page`` in order in ``workspace``; returns one line per block saying what was done."""
    done: list[str] = []
    for n, block in enumerate(read_blocks(page)):
        done.append(f"{block.where} {block.language or 'plain'}: {run_block(block, n, workspace)}")
    return done


def run_block(block: Block, n: int, workspace: Workspace) -> str:
    directive = block.directive
    if directive.startswith("skip"):
        return f"skipped ({directive[4:].strip() or 'no reason given'})"
    if directive.startswith("file "):
        (workspace.folder / directive[5:].strip()).write_text(block.code)
        return f"written to {directive[5:].strip()}"
    if block.language in ("python", "py"):
        if directive == "keras":
            compile(block.code, block.where, "exec")
            return "compiled (Keras code from the slides)"
        script = workspace.folder / f".block_{n}.py"
        script.write_text(block.code)
        workspace.run(["python", script.name], f"python block at {block.where}")
        return "ran"
    if block.language in ("bash", "sh", "shell"):
        script = workspace.folder / f".block_{n}.sh"
        script.write_text(_PRELUDE + shell_script(block))
        workspace.run(["bash", script.name], f"bash block at {block.where}")
        return "ran"
    if block.language in ("yaml", "yml"):
        return check_yaml(block, n, workspace)
    return "shown, not run"


def check_yaml(block: Block, n: int, workspace: Workspace) -> str:
    document = yaml.safe_load(block.code)
    first = block.code.lstrip().splitlines()[0] if block.code.strip() else ""
    named = re.match(r"#\s*(?P<path>[\w./-]+\.ya?ml)\b(?P<rest>.*)", first)
    if named and (REPO_ROOT / named["path"]).is_file():
        source = yaml.safe_load((REPO_ROOT / named["path"]).read_text())
        if "(excerpt)" in named["rest"]:
            _assert_subset(document, source, named["path"], block.where)
            return f"an excerpt of {named['path']}"
        assert document == source, f"the block at {block.where} differs from {named['path']}"
        return f"equal to {named['path']}"
    if isinstance(document, dict) and {"model", "data", "trainer"} & document.keys():
        config = workspace.folder / f".block_{n}.yaml"
        config.write_text(block.code)
        workspace.run(
            ["lightning-cnn", "fit", "--config", config.name, "--print_config"], f"the config at {block.where}"
        )
        return "parsed by the CLI"
    return "parsed"


def _assert_subset(part: Any, whole: Any, path: str, where: str, key: str = "") -> None:
    if isinstance(part, dict):
        assert isinstance(whole, dict), f"{where}: {key or 'the top level'} is not a mapping in {path}"
        for name, value in part.items():
            assert name in whole, f"{where}: {key + '.' if key else ''}{name} is not in {path}"
            _assert_subset(value, whole[name], path, where, f"{key}.{name}" if key else str(name))
    else:
        assert part == whole, f"{where}: {key} is {part!r} in the block but {whole!r} in {path}"


def checkpoint_fixture(folder: Path, server: Optional[str] = None) -> Path:
    """The quick start's run, shortened, in ``folder``: ``runs/lenet_fashion_mnist/version_0`` with ``last.ckpt``,
    ``last.onnx`` and ``last.pt`` in its ``checkpoints/``. Returns the run folder."""
    workspace = Workspace(folder, server=server)
    workspace.prepare()
    cli = ["python", "cli.py"]
    workspace.run([*cli, "fit", "--config", "configs/lenet_fashion_mnist.yaml"], "smoke fit")
    run = folder / "runs" / "lenet_fashion_mnist" / "version_0"
    ckpt = str(run / "checkpoints" / "last.ckpt")
    for fmt in ("onnx", "torchscript"):
        workspace.run([*cli, "export", "--ckpt_path", ckpt, "--format", fmt], f"export {fmt}")
    return run
