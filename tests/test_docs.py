"""The documentation runs: every code block of README.md and docs/*.md is executed or checked.

* ```python blocks run, each file's blocks in order in one namespace (like a doctest session), in a
  temporary working directory with the hub offline. A block may be skipped only with a visible marker
  on the line before its fence, ``<!-- not-run: reason -->``; such blocks are counted and kept rare.
  ``<!-- slow: reason -->`` runs the block but marks its file's session slow.
* Shell blocks marked ``<!-- run: what they show -->`` run too, in the same working directory, at their
  place among the file's Python blocks (which make the data they use): each command must exit with 0.
  ``mcc-*`` console scripts and ``python`` run with this interpreter and the repository on the path.
* Shell commands (```bash blocks, and lines of unlabelled/text blocks that start with ``python``,
  ``torchrun``, ``make``, ``pip`` or an ``mcc-`` program): every script, module, console script and
  make target they name exists, every pip extra they name is declared, and every ``--option`` they use
  is listed by the program's own ``--help`` (which is run, so it must work offline and at once).
* Signature listings (a line ``name(arg, key=default) -> ...`` for a public name): the argument names
  exist and the defaults shown are the real ones.
* ``mcc.__all__`` and the public API that docs/index.md lists agree, and every public name is
  documented on some page.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import mcc

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_NOT_RUN = 4  # skipped python blocks in all the docs together: keep them rare

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*$")
_MARKER = re.compile(r"<!--\s*(?P<kind>not-run|slow|run)\s*:\s*(?P<reason>.*?)\s*-->")
_SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
_PYTHON_LANGS = {"python", "py", "python3"}
_COMMAND_START = re.compile(
    r"^(\$\s+)?([A-Z_][A-Z0-9_]*=\S*\s+)*(python3?|\S*/python3?|torchrun|make|pip|mcc-[\w-]+)\b"
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    marker: str | None  # "not-run", "slow", "run" (shell blocks) or None
    reason: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """Fenced code blocks of a Markdown file, with the marker on the line before each fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        body = [line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines[i + 1 : j]]
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = _MARKER.search(previous)
        blocks.append(
            Block(
                path=path,
                line=i + 2,
                lang=match["lang"].lower(),
                code="\n".join(body) + "\n",
                marker=marker["kind"] if marker else None,
                reason=marker["reason"] if marker else "",
            )
        )
        i = j + 1
    return blocks


@cache
def all_blocks() -> tuple[Block, ...]:
    return tuple(block for path in DOC_FILES for block in parse_blocks(path))


def _python_files() -> list:
    params = []
    for path in DOC_FILES:
        blocks = [b for b in parse_blocks(path) if b.lang in _PYTHON_LANGS or b.marker == "run"]
        if not blocks:
            continue
        marks = [pytest.mark.slow] if any(b.marker in ("slow", "run") for b in blocks) else []
        params.append(pytest.param(path, id=str(path.relative_to(ROOT)), marks=marks))
    return params


# ---------------------------------------------------------------------------------------------------
# Python blocks


def test_parser_finds_blocks_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\na = 1\n```\n\n<!-- not-run: needs a GPU -->\n```python\nb = 2\n```\n"
        "* item\n\n  ```bash\n  make demo\n  ```\n"
    )
    blocks = parse_blocks(page)
    assert [(b.lang, b.code, b.marker, b.line) for b in blocks] == [
        ("python", "a = 1\n", None, 4),
        ("python", "b = 2\n", "not-run", 9),
        ("bash", "make demo\n", None, 14),
    ]
    assert blocks[1].reason == "needs a GPU"


@pytest.mark.parametrize("path", _python_files())
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {"__name__": "__docs__"}
    for block in parse_blocks(path):
        if block.marker == "run" and block.lang in _SHELL_LANGS:
            for line in _commands_of(block):
                _run_shell_command(line, block, tmp_path)
            continue
        if block.lang not in _PYTHON_LANGS or block.marker == "not-run":
            continue
        # Pad so that tracebacks give the line numbers of the Markdown file.
        code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
        try:
            exec(code, namespace)
        except Exception as error:  # noqa: BLE001 - re-raised with the block's place
            raise AssertionError(f"code block at {block.where} failed: {error!r}") from error


def _run_shell_command(line: str, block: Block, cwd: Path) -> None:
    """Runs one documented command: ``mcc-*`` and ``python`` with this interpreter and this checkout."""
    tokens = shlex.split(line, comments=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    program, args = tokens[0], tokens[1:]
    if program.startswith("mcc-"):
        entry = _pyproject()["project"]["scripts"][program]
        module, func = entry.split(":")
        code = f"import sys; sys.argv[0] = {program!r}; from {module} import {func} as main; sys.exit(main())"
        argv = [sys.executable, "-c", code, *args]
    elif re.search(r"(^|/)python3?$", program):
        argv = [sys.executable, *args]
    else:
        raise AssertionError(f"{block.where}: a run block may only run mcc-* and python, not {program!r}")
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{block.where}: {line!r} failed:\n{done.stdout}\n{done.stderr}"


def test_run_blocks_are_shell_blocks():
    for block in all_blocks():
        if block.marker == "run":
            assert block.lang in _SHELL_LANGS, f"{block.where}: only bash blocks take the run marker"


def test_skipped_python_blocks_are_rare_and_say_why():
    skipped = [b for b in all_blocks() if b.lang in _PYTHON_LANGS and b.marker == "not-run"]
    for block in skipped:
        assert len(block.reason) >= 10, f"{block.where}: say why the block cannot run"
    assert len(skipped) <= MAX_NOT_RUN, [f"{b.where}: {b.reason}" for b in skipped]


def test_every_python_block_compiles():
    for block in all_blocks():
        if block.lang in _PYTHON_LANGS:
            compile(block.code, block.where, "exec")


# ---------------------------------------------------------------------------------------------------
# Shell commands


@dataclass(frozen=True)
class Command:
    where: str
    kind: str  # "script", "module", "console", "make", "pip"
    target: str
    options: tuple[str, ...]


@cache
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _commands_of(block: Block) -> list[str]:
    text = block.code.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if block.lang in _SHELL_LANGS or _COMMAND_START.match(line):
            line = line.removeprefix("$ ").strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in re.split(r"&&|;|\|\|", line) if part.strip())
    return commands


def _options(tokens: list[str]) -> tuple[str, ...]:
    options = []
    for token in tokens:
        match = re.match(r"^\[?(--[A-Za-z][\w-]*)", token)
        if match:
            options.append(match[1])
    return tuple(options)


def parse_command(line: str, where: str) -> Command | None:
    """What a documented shell command runs; None for programs outside the project (tar, unzip, ...)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as error:
        raise AssertionError(f"{where}: cannot parse {line!r}: {error}") from error
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    program, args = tokens[0], tokens[1:]
    if program == "make":
        targets = tuple(a for a in args if not a.startswith("-") and "=" not in a)
        return Command(where, "make", " ".join(targets), ())
    if program == "pip" or (args[:2] == ["-m", "pip"] and re.search(r"python3?$", program)):
        return Command(where, "pip", " ".join(args), ())
    if program.startswith("mcc-"):
        return Command(where, "console", program, _options(args))
    if program == "torchrun" or re.search(r"(^|/)python3?$", program):
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "-m" and i + 1 < len(args):
                return Command(where, "module", args[i + 1], _options(args[i + 2 :]))
            if arg == "-c":
                return None
            if not arg.startswith("-"):
                return Command(where, "script", arg, _options(args[i + 1 :]))
            # torchrun's own options: --name=value or --name value
            i += 1 if "=" in arg or program != "torchrun" else 2
        return None
    return None


@cache
def documented_commands() -> tuple[Command, ...]:
    commands = []
    for block in all_blocks():
        if block.lang in _PYTHON_LANGS:
            continue
        for line in _commands_of(block):
            command = parse_command(line, block.where)
            if command is not None:
                commands.append(command)
    return tuple(commands)


def test_shell_parser():
    parse = parse_command
    assert parse("HF_HUB_OFFLINE=1 python examples/train_voc.py --data-root D --amp", "w") == Command(
        "w", "script", "examples/train_voc.py", ("--data-root", "--amp")
    )
    assert (
        parse("torchrun --nproc_per_node=4 examples/evaluate.py --crf", "w").target == "examples/evaluate.py"
    )
    assert parse("python -m mcc.data.coco_to_voc --out o [--copy-images]", "w").options == (
        "--out",
        "--copy-images",
    )
    assert parse("make demo   # trains", "w") == Command("w", "make", "demo", ())
    assert parse("tar xf VOC.tar", "w") is None


def test_documented_programs_exist():
    project = _pyproject()
    scripts = project["project"].get("scripts", {})
    extras = set(project["project"].get("optional-dependencies", {}))
    makefile = (ROOT / "Makefile").read_text()
    missing = []
    for command in documented_commands():
        if command.kind == "script":
            if not (ROOT / command.target).is_file():
                missing.append(f"{command.where}: no file {command.target}")
        elif command.kind == "module":
            try:
                found = importlib.util.find_spec(command.target) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                missing.append(f"{command.where}: no module {command.target}")
        elif command.kind == "console":
            if command.target not in scripts:
                missing.append(f"{command.where}: no console script {command.target} in pyproject.toml")
        elif command.kind == "make":
            for target in command.target.split():
                if not re.search(rf"^{re.escape(target)}\s*:", makefile, re.MULTILINE):
                    missing.append(f"{command.where}: no make target {target}")
        elif command.kind == "pip":
            for requested in re.findall(r"\[([\w,\s-]+)\]", command.target):
                for extra in requested.split(","):
                    if extra.strip() not in extras:
                        missing.append(f"{command.where}: no extra {extra.strip()!r} in pyproject.toml")
    assert not missing, "\n".join(missing)


def _help_targets() -> list:
    """Each project program the docs run, once, with the options they use."""
    by_target: dict[tuple[str, str], set[str]] = {}
    for command in documented_commands():
        if command.kind == "module" and not command.target.split(".")[0] == "mcc":
            continue
        if command.kind in ("script", "module", "console"):
            by_target.setdefault((command.kind, command.target), set()).update(command.options)
    return [
        pytest.param(kind, target, tuple(sorted(options)), id=target)
        for (kind, target), options in sorted(by_target.items())
    ]


def _help_argv(kind: str, target: str) -> list[str]:
    if kind == "script":
        return [sys.executable, str(ROOT / target), "--help"]
    if kind == "module":
        return [sys.executable, "-m", target, "--help"]
    entry = _pyproject()["project"]["scripts"][target]
    module, func = entry.split(":")
    code = f"import sys; sys.argv[0] = {target!r}; from {module} import {func} as main; sys.exit(main())"
    return [sys.executable, "-c", code, "--help"]


@pytest.mark.slow  # one interpreter start (torch, timm) per program: several seconds each
@pytest.mark.parametrize(("kind", "target", "options"), _help_targets())
def test_documented_options_are_in_the_help(kind, target, options):
    if kind == "script" and not (ROOT / target).is_file():
        pytest.skip("missing file: reported by test_documented_programs_exist")
    if kind == "console" and target not in _pyproject()["project"].get("scripts", {}):
        pytest.skip("missing console script: reported by test_documented_programs_exist")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        _help_argv(kind, target), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    unknown = [o for o in options if not re.search(rf"{re.escape(o)}(?![\w-])", out.stdout)]
    assert not unknown, f"{target}: documented options missing from --help: {unknown}"


# ---------------------------------------------------------------------------------------------------
# Signature listings

_SIGNATURE = re.compile(r"^\s*(?P<name>[A-Za-z_][\w.]*)\((?P<params>.*)\)\s*(->.*|#.*)?$")


def _public(name: str):
    """The public object a listing names: ``mcc.X``, ``X`` of ``mcc.__all__``, or None."""
    parts = name.removeprefix("mcc.").split(".")
    if parts[0] not in mcc.__all__:
        return None
    obj = getattr(mcc, parts[0])
    for part in parts[1:]:
        obj = getattr(obj, part, None)
    return obj


def signature_listings() -> list[tuple[str, str, list[tuple[str, object]]]]:
    """(where, name, [(argument, default or inspect.Parameter.empty)]) of every signature line."""
    listings = []
    for block in all_blocks():
        if block.lang in _PYTHON_LANGS or block.lang in _SHELL_LANGS:
            continue
        for offset, line in enumerate(block.code.splitlines()):
            match = _SIGNATURE.match(line)
            if not match or _public(match["name"]) is None:
                continue
            try:
                function = ast.parse(f"def _f({match['params']}): pass").body[0]
            except SyntaxError:
                continue
            arguments = function.args
            positional = arguments.posonlyargs + arguments.args
            defaults = [inspect.Parameter.empty] * (len(positional) - len(arguments.defaults)) + [
                _literal(d) for d in arguments.defaults
            ]
            params = list(zip([a.arg for a in positional], defaults))
            params += [
                (a.arg, inspect.Parameter.empty if d is None else _literal(d))
                for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults)
            ]
            listings.append((f"{block.where}+{offset}", match["name"], params))
    return listings


_UNKNOWN = object()


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _UNKNOWN


def test_signature_listings_match_the_code():
    wrong = []
    for where, name, params in signature_listings():
        obj = _public(name)
        signature = inspect.signature(obj)
        actual = signature.parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in actual.values())
        for arg, default in params:
            if arg not in actual:
                if not takes_kwargs:
                    wrong.append(f"{where}: {name} has no argument {arg!r}")
                continue
            if default is inspect.Parameter.empty or default is _UNKNOWN:
                continue
            if actual[arg].default != default:
                wrong.append(
                    f"{where}: {name}({arg}=...) defaults to {actual[arg].default!r}, docs say {default!r}"
                )
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------------------------------
# The public API and the docs


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _index_claims() -> dict[str, set[str]]:
    """Backticked names of the 'subpackage' column of docs/index.md's table, per cell's modules."""
    claims: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "index.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.lstrip().startswith("|"):
            continue
        names = re.findall(r"`([^`]+)`", cells[1])
        modules = [n for n in names if re.fullmatch(r"mcc(\.\w+)*", n) and _is_module(n)]
        for name in names:
            if name not in modules and re.fullmatch(r"[A-Za-z_][\w.]*", name):
                claims.setdefault(name, set()).update(modules)
    return claims


def test_index_lists_only_real_public_names():
    wrong = []
    for name, modules in _index_claims().items():
        if "." in name and not name.startswith("mcc."):  # a file name such as metrics.json
            continue
        if "." in name:  # e.g. mcc.poly_warmup_lr
            module, _, attr = name.rpartition(".")
            try:
                found = hasattr(importlib.import_module(module), attr)
            except ImportError:
                found = False
            if not found:
                wrong.append(f"{name}: does not exist")
            continue
        if name in mcc.__all__:
            continue
        if not any(name in getattr(importlib.import_module(m), "__all__", ()) for m in modules):
            wrong.append(f"{name}: neither in mcc.__all__ nor in the __all__ of {sorted(modules)}")
    assert not wrong, "\n".join(wrong)


def test_every_public_name_is_documented():
    claims = _index_claims()
    listed = {name.rpartition(".")[2] for name in claims if "." not in name or name.startswith("mcc.")}
    pages = "\n".join(p.read_text() for p in DOC_FILES if p.name != "index.md")
    missing_index = [n for n in mcc.__all__ if n not in listed]
    missing_pages = [n for n in mcc.__all__ if not re.search(rf"`[^`]*\b{re.escape(n)}\b[^`]*`", pages)]
    assert not missing_index, f"public names missing from docs/index.md's table: {missing_index}"
    assert not missing_pages, f"public names no docs page mentions: {missing_pages}"


def test_relative_links_resolve():
    """Every relative Markdown link of README.md and docs/*.md points at a file of the repository."""
    broken = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            target = match[1].split("#", 1)[0]
            if not target or re.match(r"^[a-z][\w+.-]*:", target):  # anchors, http:, mailto:
                continue
            if not (path.parent / target).exists():
                line = text.count("\n", 0, match.start()) + 1
                broken.append(f"{path.relative_to(ROOT)}:{line}: {match[1]}")
    assert not broken, "\n".join(broken)
