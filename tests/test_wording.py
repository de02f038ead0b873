"""The code and the documents describe the software, not how it was made: no tracker or
milestone numbers ("issue 17", "Wave 2") in src/, docs/, benchmarks/ and README.md, and no "this
session" in README.md and docs/. A reference to an upstream bug is written as
``owner/repo#number`` (``uxlfoundation/oneDNN#6035``, ``open-mmlab/mmpretrain#897``) or as its
URL, and passes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACKER = re.compile(r"\b(?:issue|wave)s?[\s#:-]*\d+", re.IGNORECASE)
SESSION = re.compile(r"\bthis\s+session\b", re.IGNORECASE)


def _text_files(folder: Path) -> list[Path]:
    """Every text file under ``folder`` (UTF-8, no NUL byte), caches left out."""
    files = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            data.decode()
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def offending_lines(text: str, patterns: tuple[re.Pattern, ...]) -> list[str]:
    """``"<line>: <match>"`` for every match of ``patterns`` in ``text``."""
    return [
        f"{number}: {match.group()!r}"
        for number, line in enumerate(text.splitlines(), 1)
        for pattern in patterns
        for match in pattern.finditer(line)
    ]


def _patterns(path: Path) -> tuple[re.Pattern, ...]:
    documents = path.name == "README.md" or (ROOT / "docs") in path.parents
    return (TRACKER, SESSION) if documents else (TRACKER,)


FILES = [ROOT / "README.md"] + [
    path for folder in ("src", "docs", "benchmarks") for path in _text_files(ROOT / folder)
]


@pytest.mark.parametrize("path", FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_words_about_how_the_project_was_made(path):
    found = offending_lines(path.read_text(), _patterns(path))
    assert not found, f"{path.relative_to(ROOT)}: " + "; ".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "targets from issue 17",
        "Issue #897 in mmpretrain",
        "see issues 12 and 13",
        "issue-24",
        "Wave 2 gave reparam one-way layers",
        "WAVE-3",
        "waves 1-2",
    ],
)
def test_tracker_numbers_are_found(text):
    assert offending_lines(text, (TRACKER,)) != []


@pytest.mark.parametrize(
    "text",
    [
        "a heap corruption, uxlfoundation/oneDNN#6035",
        "pytorch/pytorch#123",
        "open-mmlab/mmpretrain#897",
        "https://github.com/open-mmlab/mmpretrain/issues/897",
        "the issue is that the fused graph differs",
        "a tissue 5 sample",
        "microwave 3",
        "a waveform of 2 periods",
    ],
)
def test_upstream_references_and_plain_words_pass(text):
    assert offending_lines(text, (TRACKER,)) == []


def test_this_session_is_found_only_in_the_documents(tmp_path):
    assert offending_lines("measured 0.93x\nin a first run this Session", (SESSION,)) == [
        "2: 'this Session'"
    ]
    assert offending_lines("each training session resumes", (SESSION,)) == []
    assert _patterns(ROOT / "docs" / "page.md") == (TRACKER, SESSION)
    assert _patterns(ROOT / "README.md") == (TRACKER, SESSION)
    assert _patterns(ROOT / "src" / "reparam" / "module.py") == (TRACKER,)


def test_a_phrase_added_to_a_file_is_found(tmp_path):
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("# Page\n\nFixed in issue 24, see oneDNN#6035.\n")
    assert _text_files(tmp_path) == [page]
    assert offending_lines(page.read_text(), (TRACKER, SESSION)) == ["3: 'issue 24'"]
