"""The repository stands alone: no file points at design documents that live outside it.

The method is documented in ``docs/method.md``; code, docs and tests cite its sections instead.
"""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from parts so that this file does not match itself.
_NAMES = ["METHOD", "API", "STYLE"]
FORBIDDEN = re.compile("|".join(re.escape(n + ".md") for n in _NAMES) + "|" + re.escape(".." + "/shared"))

SKIP_DIRS = {".git", ".venv", ".ci", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files; a plain walk when git is unavailable."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
        return [ROOT / n for n in names if not set(Path(n).parts) & SKIP_DIRS]
    return [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and not set(p.relative_to(ROOT).parts) & SKIP_DIRS
        and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)
    ]


def _text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):  # deleted in the work tree, or a submodule
        return None
    if b"\0" in data[:8192]:  # binary (images, checkpoints)
        return None
    return data.decode("utf-8", errors="replace")


def test_pattern_matches_what_it_should():
    assert FORBIDDEN.search("see " + "METHOD" + ".md section 2")
    assert FORBIDDEN.search("../.." + "/shared/design/")
    assert not FORBIDDEN.search("see docs/method.md section 2")


def test_no_file_points_outside_the_repository():
    files = _repository_files()
    if len(files) < 10:
        pytest.skip("not run from a source checkout")
    hits = []
    for path in files:
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, "cite docs/method.md sections instead:\n" + "\n".join(hits)


def test_method_doc_has_the_cited_sections():
    text = (ROOT / "docs" / "method.md").read_text()
    titles = [
        "1 The network",
        "2 One training step",
        "3 The exact shortcuts (fast path)",
        "4 Inference and evaluation",
        "5 Published numbers",
        "6 Data layouts",
        "7 Published code vs paper: the two presets",
        "8 The regularised loss (rloss)",
    ]
    headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")]
    for title in titles:
        number, name = title.split(" ", 1)
        assert f"{number}. {name}" in headings, (title, headings)


def test_wheel_builds_without_warnings_and_stands_alone(tmp_path):
    """Build the wheel from a copy of the sources: no deprecation warnings, metadata complete, no
    member that points outside the package, and nothing written into the package folder."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("needs setuptools>=77 (license expressions)")
    files = _repository_files()
    if len(files) < 10:
        pytest.skip("not run from a source checkout")
    src = tmp_path / "src"
    for path in files:
        if path.is_file():
            target = src / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    package_before = sorted(p.relative_to(src) for p in (src / "mcc").rglob("*"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(tmp_path / "whl"),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert not re.search(r"deprecat", log, re.IGNORECASE), log
    assert sorted(p.relative_to(src) for p in (src / "mcc").rglob("*")) == package_before

    (wheel,) = (tmp_path / "whl").glob("mcc_wsss-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert any(n.endswith("licenses/LICENSE") for n in names), names
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        for name in names:
            assert not FORBIDDEN.search(archive.read(name).decode("utf-8", errors="replace")), name
    assert "License-Expression: MIT" in metadata
    for label in ("Homepage", "Source", "Documentation", "Issues", "Paper"):
        assert f"Project-URL: {label}, https://" in metadata, label
    assert "Classifier: License ::" not in metadata
