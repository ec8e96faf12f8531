"""Every command-line program of the repository: each option has help text, and each shows its default.

The programs are run in-process up to their ``parse_args`` call, which is intercepted to inspect the
parser (nothing else runs). Flags (``store_true`` and the like) need help text only: their default is
"off".
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    str(path.relative_to(ROOT))
    for folder in ("examples", "benchmarks")
    for path in (ROOT / folder).glob("*.py")
    if "ArgumentParser(" in path.read_text()
)
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "mcc").rglob("*.py")
    if "ArgumentParser(" in path.read_text() and "__main__" in path.read_text()
)
FIRST_ARGUMENTS = {"mcc.cli.train": ["voc"]}  # programs that take a positional argument before options


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _intercept(monkeypatch) -> None:
    def parse(self, args=None, namespace=None):
        if self.add_help:  # helper parsers (e.g. a --config pre-pass) are built with add_help=False
            raise _Parsed(self)
        return original(self, args, namespace)

    original = argparse.ArgumentParser.parse_known_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse)


def _parser_of(kind: str, target: str, monkeypatch) -> argparse.ArgumentParser:
    _intercept(monkeypatch)
    monkeypatch.setattr(sys, "argv", [target, *FIRST_ARGUMENTS.get(target, []), "--help"])
    try:
        if kind == "script":
            monkeypatch.syspath_prepend(str((ROOT / target).parent))
            monkeypatch.delitem(sys.modules, "common", raising=False)  # examples/ and benchmarks/ differ
            runpy.run_path(str(ROOT / target), run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=False)
    except _Parsed as parsed:
        return parsed.parser
    raise AssertionError(f"{target} did not parse a command line")


def _problems(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue  # internal (e.g. set by a parent process), not shown
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            problems.append(f"{name}: no help text")
            continue
        if action.nargs == 0 or not action.option_strings or action.required:
            continue  # a flag ("off" unless given), a positional argument or a required option
        if "default" not in formatter._expand_help(action).lower():
            problems.append(f"{name}: help does not show the default")
    return problems


def _param(kind: str, target: str):
    return pytest.param(kind, target, id=target)


@pytest.mark.parametrize(
    ("kind", "target"), [_param("script", s) for s in SCRIPTS] + [_param("module", m) for m in MODULES]
)
def test_every_option_has_help_text_and_shows_its_default(kind, target, monkeypatch):
    problems = _problems(_parser_of(kind, target, monkeypatch))
    assert not problems, f"{target}: " + "; ".join(problems)


def test_the_check_finds_missing_help_and_defaults():
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", default=1)
    parser.add_argument("--b", default=2, help="no value shown")
    parser.add_argument("--c", default=3, help="shown (default: %(default)s)")
    parser.add_argument("--flag", action="store_true", help="a flag")
    parser.add_argument("--out", required=True, help="a required option")
    parser.add_argument("--hidden", default=4, help=argparse.SUPPRESS)
    assert _problems(parser) == ["--a: no help text", "--b: help does not show the default"]
    assert {"mcc.cli.evaluate", "mcc.cli.pseudo_labels", "mcc.cli.train"} <= set(MODULES)
    assert "examples/evaluate.py" not in SCRIPTS  # wrappers hold no parser of their own
