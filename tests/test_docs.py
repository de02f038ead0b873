"""The examples in README.md and docs/*.md work as written, so a documented call cannot break
silently.

What counts as an example
-------------------------
Code blocks are fenced (```` ``` ````) or indented by 4 spaces after a blank line.

- A **Python example** is a block fenced as ``python`` / ``py``, or any other block whose first
  non-blank line starts with ``import `` or ``from ``. It runs as written, in a fresh namespace
  of the test process (one interpreter start saved per example) whose working folder is a new
  temporary folder (so the files it writes go there).
- A **command** is a line of any other block whose first word is one of :data:`PROGRAMS` and
  whose second word, if any, looks like an argument rather than prose (:data:`ARGUMENT`), with
  ``\\``-continued lines joined, ``# comments`` dropped and ``[--optional]`` flags kept
  without their brackets.

What happens to a command
-------------------------
Every ``reparam`` command (for ``torchrun``, the part after ``-m reparam``) is parsed by the
real parser, :func:`reparam.app.cli.build_parser`, so a renamed subcommand or flag or a refused
choice fails here. It is then run end to end, exactly as written, by the console script's own
entry point, :func:`reparam.app.cli.main`, in the test process (its stdout, stderr and exit
status captured as a process's would be), unless a rule of :data:`NOT_PARSED` or :data:`PARSE_ONLY`
says otherwise (first match wins; the test id names the rule: ``README.md:57-run``,
``README.md:56-parse-only-cifar``, ``README.md:19-skip-make``) or the same command, as written,
ran in an earlier document (``ran-before``). A run must exit 0, and with ``--json`` print one
JSON value on stdout.

The commands of one document share one temporary folder, as they would in a reader's shell,
which holds a small image folder, :data:`IMAGE_FOLDER` (``train/`` and ``val/`` class folders of
PNG files), so a documented ``--data folder:images`` runs, and so does a ``reparam predict`` of
images in it. The commands of one document share that folder:
``reparam deploy runs/a0`` needs the run folder of the earlier ``reparam train ... --out
runs/a0``. A test first runs the earlier commands whose ``--out`` its arguments name (each
once per session), so any one test can run alone. Commands and examples run on one torch thread:
the test machines are small and shared.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reparam.app.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPARAM = Path(sys.executable).with_name("reparam")
PROGRAMS = ("reparam", "make", "torchrun", "srun", "python", "python3", ".venv/bin/python")
MAX_EPOCHS = 2  # a documented training run longer than this is parsed, not run
os.environ.setdefault("MPLBACKEND", "Agg")  # plots without a display
README_MAX_BYTES = 12000  # read in five minutes; the rest lives in docs/
IMAGE_FOLDER = "images"  # in every document's folder: a reader's own images, in miniature
IMAGE_CLASSES = {"cat": 40, "dog": 40}  # train images per class: more than one batch of 64
VAL_IMAGES = 4  # per class


@dataclass
class Block:
    doc: str  # path relative to the repository
    line: int  # 1-based line of the block's first line of code
    lang: str
    lines: list[str]


@dataclass
class Command:
    doc: str
    line: int
    text: str
    words: list[str]
    argv: list[str] = field(default_factory=list)  # reparam's arguments (after "reparam")
    action: str = "run"  # "run" | "parse-only" | "skip"
    rule: str = ""  # slug of the rule that decided action
    reason: str = ""
    needs: list[Command] = field(default_factory=list)  # run commands whose --out it reads

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def id(self) -> str:
        return f"{self.where}-{self.action}" + (f"-{self.rule}" if self.rule else "")


# ---------------------------------------------------------------- finding the examples

FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
ARGUMENT = re.compile(r"^(-|[\w.~'\"/$]+)")  # "reparam (package face)" is no command


def code_blocks(path: Path) -> list[Block]:
    """Fenced blocks and indented (4-space, after a blank line) blocks of one markdown file."""
    doc = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    blocks, i, after_blank = [], 0, True
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].startswith(fence.group(1)):
                j += 1
            blocks.append(Block(doc, i + 2, fence.group(2).lower(), lines[i + 1 : j]))
            i, after_blank = j + 1, False
        elif after_blank and lines[i].startswith("    ") and lines[i].strip():
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            body = [line[4:] for line in lines[i:j]]
            while not body[-1].strip():
                body.pop()
            blocks.append(Block(doc, i + 1, "", body))
            i, after_blank = j, True
        else:
            after_blank = not lines[i].strip()
            i += 1
    return blocks


def is_python(block: Block) -> bool:
    if block.lang in ("python", "py"):
        return True
    first = next((line.strip() for line in block.lines if line.strip()), "")
    return first.startswith(("import ", "from "))


def block_commands(block: Block) -> list[Command]:
    found, k = [], 0
    while k < len(block.lines):
        start, text = k, block.lines[k].strip()
        while text.endswith("\\") and k + 1 < len(block.lines):
            k += 1
            text = text[:-1].rstrip() + " " + block.lines[k].strip()
        k += 1
        words = text.split()
        if words and words[0] in PROGRAMS and (len(words) == 1 or ARGUMENT.match(words[1])):
            found.append(Command(block.doc, block.line + start, text, words))
    return found


# ---------------------------------------------------------------- the rules

Rule = tuple[str, str, Callable[[Command], bool]]


def _first(cmd: Command) -> str:
    return cmd.words[0]


def _trains_epochs(cmd: Command) -> int | None:
    """Epochs a training command runs (the recipe default 8 when it gives none), else None."""
    argv = cmd.argv
    trains = argv[:1] in (["train"], ["hypersearch"], ["demo"]) or (
        argv[:1] == ["deploy"] and "--compare" in argv
    )
    if not trains or "--list-recipes" in argv or "--help" in argv:
        return None
    for k, word in enumerate(argv):
        if word == "--epochs" and k + 1 < len(argv):
            return int(argv[k + 1])
        if word.startswith("--epochs="):
            return int(word.split("=", 1)[1])
    return 8


def _images_in_folder(cmd: Command) -> bool:
    """Every image file the command names is in :data:`IMAGE_FOLDER`."""
    images = [w for w in cmd.argv if w.lower().endswith((".png", ".jpg", ".jpeg"))]
    return bool(images) and all(_path(w).startswith(IMAGE_FOLDER + os.sep) for w in images)


#: neither parsed nor run
NOT_PARSED: list[Rule] = [
    (
        "make",
        "make builds .venv and runs the demo or the whole suite",
        lambda c: _first(c) == "make",
    ),
    ("srun", "a line of a SLURM job script", lambda c: _first(c) == "srun"),
    (
        "script",
        "a benchmark script: it re-measures for minutes",
        lambda c: _first(c) in ("python", "python3", ".venv/bin/python"),
    ),
]

#: parsed by reparam's parser, not run
PARSE_ONLY: list[Rule] = [
    ("torchrun", "starts several processes", lambda c: _first(c) == "torchrun"),
    (
        "cifar",
        "CIFAR is not in the repository",
        lambda c: any(w.startswith(("cifar10:", "cifar100:")) for w in c.argv),
    ),
    (
        "folder",
        "an image folder that is not in the repository",
        lambda c: any(w.startswith("folder:") and w != f"folder:{IMAGE_FOLDER}" for w in c.argv),
    ),
    ("bench", "timing runs take minutes", lambda c: c.argv[:1] == ["bench"]),
    (
        "qat",
        "fine-tunes for minutes; tests/test_qat.py runs reparam qat end to end",
        lambda c: c.argv[:1] == ["qat"],
    ),
    (
        "image",
        "classifies an image file of the reader's",
        lambda c: c.argv[:1] == ["predict"] and not _images_in_folder(c),
    ),
    ("resume", "continues an interrupted run", lambda c: "--resume" in c.argv),
    (
        "verify",
        "the whole equivalence suite; the unit tests run every check",
        lambda c: c.argv[:1] == ["verify"],
    ),
    (
        "long-training",
        f"trains for more than {MAX_EPOCHS} epochs (--epochs absent: 8)",
        lambda c: (_trains_epochs(c) or 0) > MAX_EPOCHS,
    ),
]


def _reparam_argv(words: list[str]) -> list[str]:
    """The arguments after ``reparam`` (or after ``-m reparam`` for torchrun), brackets off."""
    if words[0] == "torchrun":
        at = next(k for k in range(len(words) - 1) if words[k : k + 2] == ["-m", "reparam"])
        words = words[at + 1 :]
    return [w[1:-1] if w.startswith("[") and w.endswith("]") else w for w in words[1:]]


def _path(word: str) -> str:
    return os.path.normpath(word)


def _out(cmd: Command) -> str | None:
    argv = cmd.argv
    for k, word in enumerate(argv[:-1]):
        if word == "--out":
            return _path(argv[k + 1])
    return None


def classify(
    commands: list[Command], earlier: dict[tuple[str, ...], Command] | None = None
) -> list[Command]:
    """Decide, in document order, what happens to each command of one document. ``earlier``:
    the commands run in the documents before, by their arguments; one written there exactly as
    here is parsed, not run again (so are the commands that need its output)."""
    earlier = {} if earlier is None else earlier
    ran: dict[tuple[str, str], Command] = {}  # (subcommand, first argument) of run commands
    writers: list[Command] = []  # every earlier command with --out, run or not
    for cmd in commands:
        for slug, reason, applies in NOT_PARSED:
            if applies(cmd):
                cmd.action, cmd.rule, cmd.reason = "skip", slug, reason
                break
        if cmd.action == "skip":
            continue
        cmd.words = shlex.split(cmd.text, comments=True)
        cmd.argv = _reparam_argv(cmd.words)
        for slug, reason, applies in PARSE_ONLY:
            if applies(cmd):
                cmd.action, cmd.rule, cmd.reason = "parse-only", slug, reason
                break
        out = _out(cmd)
        if cmd.action == "run" and tuple(cmd.argv) in earlier:
            cmd.action, cmd.rule = "parse-only", "ran-before"
            cmd.reason = f"runs as written at {earlier[tuple(cmd.argv)].where}"
        if cmd.action == "run":
            key = (cmd.argv[0], cmd.argv[1]) if len(cmd.argv) > 1 else None
            if key and not key[1].startswith("-") and key in ran:
                cmd.action, cmd.rule = "parse-only", "repeat"
                cmd.reason = (
                    f"repeats `reparam {' '.join(key)}` of {ran[key].where} with other flags"
                )
        if cmd.action == "run":
            values = {_path(w) for w in cmd.argv[1:] if not w.startswith("-")} - {out}
            for value in values:
                writer = next(
                    (
                        w
                        for w in reversed(writers)
                        if value == _out(w) or value.startswith(_out(w) + os.sep)
                    ),
                    None,
                )
                if writer is None:
                    continue
                if writer.action != "run":
                    cmd.action, cmd.rule = "parse-only", "needs-unrun"
                    cmd.reason = f"needs {value} from {writer.where}, which is not run"
                    cmd.needs = []
                    break
                if writer not in cmd.needs:
                    cmd.needs.append(writer)
        if cmd.action == "run" and len(cmd.argv) > 1 and not cmd.argv[1].startswith("-"):
            ran.setdefault((cmd.argv[0], cmd.argv[1]), cmd)
        if out is not None:
            writers.append(cmd)
    for cmd in commands:
        if cmd.action == "run":
            earlier.setdefault(tuple(cmd.argv), cmd)
    return commands


def collect() -> tuple[list[Block], list[Command]]:
    python, commands, earlier = [], [], {}
    for path in DOCS:
        doc_commands = []
        for block in code_blocks(path):
            if is_python(block):
                python.append(block)
            else:
                doc_commands += block_commands(block)
        commands += classify(doc_commands, earlier)
    return python, commands


PYTHON_EXAMPLES, COMMANDS = collect()


# ---------------------------------------------------------------- running them


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


@contextlib.contextmanager
def _as_a_process(cwd: Path) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Run the body as a fresh process would: in ``cwd``, on one torch thread, with stdout and
    stderr captured; the test process's folder, threads and streams come back afterwards."""
    out, err = io.StringIO(), io.StringIO()
    folder, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(cwd)
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        os.chdir(folder)
        torch.set_num_threads(threads)


def _exit_status(code: object) -> int:
    return code if isinstance(code, int) else (0 if code is None else 1)


def _run_reparam(cmd: Command, cwd: Path) -> subprocess.CompletedProcess[str]:
    with _as_a_process(cwd) as (out, err):
        try:
            status = main(cmd.argv)
        except SystemExit as exit_info:
            status = _exit_status(exit_info.code)
    return subprocess.CompletedProcess(cmd.argv, status, out.getvalue(), err.getvalue())


def write_image_folder(root: Path) -> None:
    """``root/train/<class>/<i>.png`` and ``root/val/<class>/<i>.png``: 16x16 RGB noise, each
    class its own brightness."""
    generator = np.random.default_rng(0)
    for level, (name, count) in enumerate(IMAGE_CLASSES.items()):
        for split, images in (("train", count), ("val", VAL_IMAGES)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(images):
                pixels = generator.integers(0, 128, (16, 16, 3)) + 127 * level
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


class Workspace:
    """One document's temporary folder (with :data:`IMAGE_FOLDER` in it) and the results of the
    commands already run in it."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[int, subprocess.CompletedProcess[str]] = {}
        write_image_folder(root / IMAGE_FOLDER)

    def run(self, cmd: Command) -> subprocess.CompletedProcess[str]:
        for dependency in cmd.needs:
            result = self.run(dependency)
            assert result.returncode == 0, (
                f"{cmd.where} needs {dependency.where} ({dependency.text}), which failed "
                f"(exit {result.returncode}):\n{_tail(result.stderr)}"
            )
        if cmd.line not in self.done:
            self.done[cmd.line] = _run_reparam(cmd, self.root)
        return self.done[cmd.line]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Callable[[str], Workspace]:
    spaces: dict[str, Workspace] = {}

    def get(doc: str) -> Workspace:
        if doc not in spaces:
            spaces[doc] = Workspace(tmp_path_factory.mktemp(re.sub(r"\W", "_", doc)))
        return spaces[doc]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", PYTHON_EXAMPLES, ids=[f"{b.doc}:{b.line}-python" for b in PYTHON_EXAMPLES]
)
def test_python_example_runs(block, tmp_path):
    code = compile("\n".join(block.lines), f"{block.doc}:{block.line}", "exec")
    with _as_a_process(tmp_path) as (_, err):
        try:
            exec(code, {"__name__": "__main__"})
        except SystemExit as exit_info:
            assert _exit_status(exit_info.code) == 0, (
                f"{block.doc}:{block.line}: exit {exit_info.code}"
            )
        except Exception:
            pytest.fail(
                f"{block.doc}:{block.line}: the example failed:\n{_tail(traceback.format_exc())}"
                f"\n{_tail(err.getvalue())}"
            )


@pytest.mark.parametrize(
    "cmd",
    [
        pytest.param(c, id=c.id, marks=pytest.mark.slow if c.action == "run" else ())
        for c in COMMANDS
    ],
)
def test_command(cmd, workspace, capsys):
    if cmd.action == "skip":
        pytest.skip(f"{cmd.where}: {cmd.reason}")
    try:
        build_parser().parse_args(cmd.argv)
    except SystemExit as exit_info:
        assert exit_info.code == 0, (
            f"{cmd.where}: reparam's parser refuses `{cmd.text}`:\n{capsys.readouterr().err}"
        )
    if cmd.action == "parse-only":
        return
    assert REPARAM.is_file(), f"no console script {REPARAM}: pip install -e ."
    result = workspace(cmd.doc).run(cmd)
    assert result.returncode == 0, (
        f"{cmd.where}: `{cmd.text}` failed (exit {result.returncode}):\n{_tail(result.stderr)}"
    )
    if "--json" in cmd.argv:
        json.loads(result.stdout)


def test_the_readme_has_examples_of_each_kind():
    """Guards the extraction itself: a changed markdown style must not silently find nothing."""
    readme = [c for c in COMMANDS if c.doc == "README.md"]
    assert any(b.doc == "README.md" for b in PYTHON_EXAMPLES)
    assert {"run", "parse-only", "skip"} <= {c.action for c in readme}
    assert any(c.argv[:1] == ["train"] and c.action == "run" for c in readme)
    assert all(c.argv or c.action == "skip" for c in COMMANDS)


def test_the_readme_is_short():
    """The README is read in five minutes; everything else has its page under docs/."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md has {size} bytes, more than {README_MAX_BYTES}"


def test_the_readme_takes_an_image_folder_to_an_int8_file():
    """The README's command-line path runs end to end on an image folder, to an INT8 file."""
    readme = [c for c in COMMANDS if c.doc == "README.md" and c.action == "run"]
    train = [c for c in readme if c.argv[:1] == ["train"] and f"folder:{IMAGE_FOLDER}" in c.argv]
    assert train, "no README command trains on the image folder"
    assert any(c.argv[:1] == ["deploy"] and "--int8" in c.argv for c in readme)


def test_a_command_that_ran_in_an_earlier_document_is_parsed_only():
    """The same command, as written, in a later document is not run again, and neither is what
    needs its output; another command of the same subcommand still runs."""

    def doc(name: str, *lines: str) -> list[Command]:
        return [Command(name, k, line, line.split()) for k, line in enumerate(lines, 1)]

    earlier: dict[tuple[str, ...], Command] = {}
    train = "reparam train --model vgg_a0 --data digits --epochs 1 --out runs/a"
    classify(doc("a.md", train), earlier)
    later = classify(
        doc(
            "b.md",
            train,
            "reparam deploy runs/a --out deploy/a",
            "reparam train --model vgg_a0 --data digits --epochs 1 --out runs/b",
        ),
        earlier,
    )
    assert [(c.action, c.rule) for c in later] == [
        ("parse-only", "ran-before"),
        ("parse-only", "needs-unrun"),
        ("run", ""),
    ]
    assert later[0].reason == "runs as written at a.md:1"
