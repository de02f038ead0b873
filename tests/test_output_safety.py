"""Outputs never destroy what the user did not name, and a failed or killed write leaves nothing.

- ``--force`` replaces only an empty folder or one reparam wrote for the same kind of output
  (its ``.reparam.json`` marker lists every file in it), never a run, data or other files
  nested anywhere inside;
- ``convert`` never writes into a run, fused, deploy or data folder;
- a full disk (or an I/O error) in any writer is one line naming the file, with no temp file
  and no folder left, and the previous file intact;
- a killed deploy's temp folder is removed by the next run of the same output.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from helpers import cli, make_run, write_cifar, write_folder
from reparam import files
from reparam.app.cli import main
from reparam.app.commands.convert import layouts_help
from reparam.app.deploy.pipeline import check_deploy_target
from reparam.app.folders import (
    MARKER,
    atomic_folder,
    check_replaceable,
    exclusive_lock,
    read_marker,
    write_marker,
)
from reparam.app.train.state import remove_run_files, write_log_csv
from reparam.errors import CheckpointError
from reparam.files import read_json, save_state, save_weights, write_json
from reparam.models.convert import LAYOUTS, detect_layout

TRAIN = ["train", "--model", "vgg_a0", "--data", "synthetic:32", "--epochs", "1"]
TRAIN += ["--batch-size", "16", "--image-size", "8", "--no-progress"]
TORCH_FULL = (
    "[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0; "
    "PytorchStreamWriter failed writing file data/0: file write failed"
)
SAFETENSORS_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
    'left on device" })'
)


def one_line(err: str) -> str:
    """The error line, checked to be the only error output and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Temp files and folders of atomic writes anywhere under ``folder``."""
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old", ".probe")))


@pytest.fixture
def run(tmp_path) -> Path:
    folder = tmp_path / "parent" / "run"
    make_run(folder, "vgg_a0", image_size=8, data="synthetic:32")
    return folder


def finish(run: Path) -> None:
    """Give a :func:`make_run` folder what a finished run has besides its best weights."""
    (run / "metrics.json").write_text("{}")
    (run / "log.csv").write_text("epoch,top1\n1,0.5\n")
    (run / "last.safetensors").write_bytes((run / "best.safetensors").read_bytes())


# --- --force replaces only what reparam wrote for the same kind ------------------------------


def _nested_run(target: Path) -> None:
    make_run(target / "keep" / "run", "vgg_a0", image_size=8)


def _images(target: Path) -> None:
    write_folder(target / "data" / "pets", per_class=1)


def _cifar(target: Path) -> None:
    write_cifar(target, 10, per_file=2)


def _foreign(target: Path) -> None:
    (target / "notes").mkdir(parents=True)
    (target / "notes" / "todo.txt").write_text("mine")


def _report(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "report.md").write_text("# report")
    write_marker(target, "report")


def _deploy_plus_user_file(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "deploy.json").write_text("{}")
    write_marker(target, "deploy")
    (target / "model.onnx").write_text("added later by the user")


REFUSED = {
    "a run nested inside": (_nested_run, "holds a training run"),
    "image data": (_images, "holds image data"),
    "CIFAR data": (_cifar, "holds CIFAR data"),
    "foreign files": (_foreign, "holds files reparam did not write"),
    "a report folder": (_report, "is a reparam report folder"),
    "a deploy folder with a file added": (
        _deploy_plus_user_file,
        "target/model.onnx); reparam replaces",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_deploy_force_never_replaces_a_folder_reparam_did_not_write_for_it(
    case, run, tmp_path, capsys
):
    fill, expected = REFUSED[case]
    target = tmp_path / "target"
    fill(target)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        check_deploy_target(target, force=True)
    for command in (["deploy", str(run)], ["qat", str(run), "--data", "synthetic:32"]):
        code, err = cli([*command, "--out", str(target), "--force"], capsys)
        assert code == 2 and expected in one_line(err) and "--out" in err
    assert snapshot(target) == before


@pytest.mark.parametrize("command", ["deploy", "qat"])
def test_deploy_into_the_folder_holding_its_source_run_keeps_the_run(command, run, capsys):
    before = snapshot(run)
    argv = [command, str(run), "--out", str(run.parent), "--force"]
    argv += ["--data", "synthetic:32"] if command == "qat" else []
    code, err = cli(argv, capsys)
    assert code == 2 and f"holds a training run ({run})" in one_line(err)
    assert snapshot(run) == before
    code, err = cli([command, *argv[1:2], "--out", str(run), "--force", *argv[5:]], capsys)
    assert code == 2 and "is a training run folder" in one_line(err)
    assert snapshot(run) == before


def test_a_deploy_folder_is_marked_with_its_files_and_replaced_by_the_next_deploy(run, tmp_path):
    out = tmp_path / "deployed"
    assert main(["deploy", str(run), "--out", str(out)]) == 0
    files = ["config.json", "deploy.json", "fused.safetensors"]
    assert read_marker(out) == {"kind": "deploy", "files": files}
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, *files])
    (out / "fused.safetensors").unlink()  # a file the user removed: still a deploy folder
    assert main(["deploy", str(run), "--out", str(out), "--force"]) == 0
    assert read_marker(out)["files"] == files and (out / "fused.safetensors").is_file()


def test_a_deploy_folder_written_before_markers_is_recognised_by_its_files(run, tmp_path):
    out = tmp_path / "deployed"
    assert main(["deploy", str(run), "--out", str(out)]) == 0
    (out / MARKER).unlink()  # as older versions wrote it
    assert main(["deploy", str(run), "--out", str(out), "--force"]) == 0
    assert read_marker(out)["kind"] == "deploy"
    (out / MARKER).unlink()
    (out / "mine.txt").write_text("a file of the user's")
    with pytest.raises(CheckpointError, match="did not write .*mine.txt"):
        check_deploy_target(out, force=True)


def test_an_empty_folder_is_replaced_and_a_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable(empty, "deploy")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file; --out must be a folder"):
        check_replaceable(tmp_path / "file", "deploy")


def test_the_target_is_checked_again_when_it_is_swapped_in(tmp_path):
    """A run that appears in the output while the deploy works is not deleted by the swap."""
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="holds a training run"):
        with atomic_folder(out, "deploy") as work:
            (work / "deploy.json").write_text("{}")
            make_run(out / "run", "vgg_a0")
    assert (out / "run" / "config.json").is_file() and not leftovers(tmp_path)


@pytest.mark.parametrize("fill", [_foreign, _images, _report], ids=["foreign", "data", "report"])
def test_train_force_starts_afresh_only_in_a_run_folder(fill, tmp_path, capsys):
    target = tmp_path / "target"
    fill(target)
    before = snapshot(target)
    code, err = cli([*TRAIN, "--out", str(target), "--force"], capsys)
    assert code == 2 and "not a run folder" in one_line(err) and "--out" in err
    assert snapshot(target) == before
    with pytest.raises(CheckpointError, match="not a run folder"):
        remove_run_files(target)
    assert snapshot(target) == before


def test_train_force_replaces_a_run_and_keeps_other_files_in_it(tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main([*TRAIN, "--out", str(out), "--force", "--seed", "3"]) == 0
    assert read_json(out / "config.json")["seed"] == 3 and (out / "notes.txt").is_file()


def test_report_replaces_only_a_report_folder_and_a_failed_one_leaves_nothing(
    run, tmp_path, capsys
):
    finish(run)
    out = tmp_path / "new" / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert read_marker(out)["kind"] == "report" and (out / "report.md").is_file()
    code, err = cli(["report", str(run), "--out", str(out)], capsys)
    assert code == 2 and "--force" in one_line(err)
    assert main(["report", str(run), "--out", str(out), "--force"]) == 0
    code, err = cli(["report", str(run), "--out", str(run.parent), "--force"], capsys)
    assert code == 2 and "holds a training run" in one_line(err)

    missing = tmp_path / "absent" / "report"
    code, err = cli(["report", str(tmp_path / "nothing"), "--out", str(missing)], capsys)
    assert code == 2 and "not a run folder" in one_line(err)
    assert not (tmp_path / "absent").exists() and not leftovers(tmp_path)


def test_compare_writes_only_into_a_comparison_folder(run, tmp_path, capsys):
    argv = ["deploy", "--compare", str(run), "--data", "synthetic:32", "--out"]
    code, err = cli([*argv, str(run.parent)], capsys)
    assert code == 2 and "not a comparison folder" in one_line(err)
    data = write_folder(tmp_path / "data", per_class=1)
    code, err = cli([*argv, str(data), "--force"], capsys)
    assert code == 2 and "holds image data" in one_line(err)
    assert not (run.parent / "compare.json").exists() and not (data / "deploy").exists()


# --- convert -------------------------------------------------------------------------------


@pytest.fixture
def official(tmp_path) -> Path:
    """A checkpoint in the official RepVGG-A0 training layout (10 classes)."""
    from test_convert import a0_checkpoint

    path = tmp_path / "RepVGG-A0-train.pth"
    a0_checkpoint(path)
    return path


def convert(source: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", str(source), "--model", "repvgg_a0", "--out", str(out), *extra]


def test_convert_never_writes_into_a_run_fused_deploy_or_data_folder(
    official, run, tmp_path, capsys
):
    deployed = tmp_path / "deployed"
    assert main(["deploy", str(run), "--out", str(deployed)]) == 0
    fused = tmp_path / "fused"
    fused.mkdir()
    for name in ("fused.safetensors", "config.json"):
        (fused / name).write_bytes((deployed / name).read_bytes())
    data = write_folder(tmp_path / "data", per_class=1)
    cifar = write_cifar(tmp_path / "cifar", 10, per_file=2)
    cases = {
        run: "is a training run folder",
        deployed: "is a reparam deploy folder",
        fused: "holds the config.json of a fused model",
        data: "holds image data",
        data / "train": "holds image data",
        cifar: "holds CIFAR data",
    }
    for folder, expected in cases.items():
        before = snapshot(folder)
        code, err = cli(convert(official, folder / "x.safetensors", "--force"), capsys)
        assert code == 2 and expected in one_line(err) and "--out" in err, folder
        assert snapshot(folder) == before, folder


def test_convert_replaces_its_own_output_with_force_and_a_failure_leaves_no_folder(
    official, tmp_path, capsys
):
    out = tmp_path / "a0" / "a0.safetensors"
    assert main(convert(official, out)) == 0
    assert read_json(out.parent / "config.json")["converted_from"]["layout"] == "repvgg"
    code, err = cli(convert(official, out), capsys)
    assert code == 2 and "--force" in one_line(err)
    assert main(convert(official, out, "--force")) == 0

    bad = tmp_path / "bad.pth"
    torch.save({"model": {"stem.weight": torch.zeros(1), "epoch": 3}}, bad)
    code, err = cli(convert(bad, tmp_path / "new" / "deep" / "x.safetensors"), capsys)
    assert code == 2 and "its key 'epoch' holds int, not a tensor" in one_line(err)
    assert not (tmp_path / "new").exists()


def test_convert_records_class_names_from_a_file(official, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}, the {i}th\n" for i in range(10)))
    out = tmp_path / "a0" / "a0.safetensors"
    assert main(convert(official, out, "--class-names", str(names))) == 0
    assert read_json(out.parent / "config.json")["class_names"][3] == "class 3, the 3th"
    names.write_text("".join(f"c{i}\n" for i in range(9)))
    code, err = cli(
        convert(official, tmp_path / "b" / "b.safetensors", "--class-names", str(names)), capsys
    )
    assert code == 2 and "9 class names given (--class-names)" in one_line(err)
    names.write_text("a\n\nb\n")
    code, err = cli(
        convert(official, tmp_path / "b" / "b.safetensors", "--class-names", str(names)), capsys
    )
    assert code == 2 and "line 2 is empty" in one_line(err)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_convert_help_lists_every_layout_with_an_example_key_it_detects(name):
    layout = LAYOUTS[name]
    model = {
        "repvgg": "repvgg_a0",
        "repvgg-deploy": "vgg_a0",
        "repopt-vgg": "repopt_vgg_a0",
        "repopt-vgg-hs": "repopt_vgg_a0_hs",
        "vanillanet": "vanillanet_5",
        "vanillanet-deploy": "vanillanet_5",
        "timm-repvgg": "repvgg_a0",
        "timm-repvgg-deploy": "vgg_a0",
    }[name]
    assert detect_layout({layout.example: torch.zeros(1)}, model) is layout
    line = next(line for line in layouts_help().splitlines() if line.split()[:1] == [name])
    assert layout.example in line and layout.origin in line


# --- full disk -----------------------------------------------------------------------------


def _raise(err: BaseException):
    def fail(*args, **kwargs):
        raise err

    return fail


FULL_DISK_ERRORS = {
    "ENOSPC": (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    "EDQUOT": (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
    "EIO": (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    "torch": (RuntimeError(TORCH_FULL), "No space left on device"),
    "safetensors": (SafetensorError(SAFETENSORS_FULL), "No space left on device"),
}


def _full_statvfs(real):
    """``os.statvfs`` of a full file system (what a torch write error is checked against)."""

    def statvfs(path):
        values = list(real(path))
        values[4] = 0  # f_bavail
        return os.statvfs_result(values)

    return statvfs


WRITERS = {
    "weights": (
        "save_file",
        lambda path: save_weights({"w": torch.ones(2)}, path),
    ),
    "state": ("torch.save", lambda path: save_state({"step": 1}, path)),
    "json": ("Path.write_text", lambda path: write_json({"a": 1}, path)),
    "log.csv": ("Path.write_text", lambda path: write_log_csv([{"epoch": 1}], ["epoch"], path)),
}


@pytest.mark.parametrize("error", sorted(FULL_DISK_ERRORS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_file_writer_turns_a_failed_write_into_one_line_and_leaves_nothing(
    writer, error, tmp_path, monkeypatch
):
    target, write = WRITERS[writer]
    err, reason = FULL_DISK_ERRORS[error]
    existing, new = tmp_path / "old" / "file", tmp_path / "new" / "deep" / "file"
    existing.parent.mkdir()
    existing.write_bytes(b"previous")
    if target == "save_file":
        monkeypatch.setattr(files, "save_file", _raise(err))
    elif target == "torch.save":
        monkeypatch.setattr(files.torch, "save", _raise(err))
    else:
        monkeypatch.setattr(Path, "write_text", _raise(err))
    monkeypatch.setattr(files.os, "statvfs", _full_statvfs(os.statvfs))
    for path in (existing, new):
        with pytest.raises(CheckpointError) as caught:
            write(path)
        assert str(caught.value) == f"{path}: cannot write ({reason})"
    assert existing.read_bytes() == b"previous"
    assert not (tmp_path / "new").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("error", ["ENOSPC", "torch", "safetensors"])
def test_a_full_disk_during_a_training_checkpoint_is_one_line(error, tmp_path, monkeypatch, capsys):
    from reparam.app.train import state

    err, reason = FULL_DISK_ERRORS[error]
    target = "save_file" if error == "safetensors" else "save"
    module = state if target == "save_file" else state.torch
    real, calls = getattr(module, target), {"n": 0}

    def second_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise err
        return real(*args, **kwargs)

    monkeypatch.setattr(module, target, second_fails)
    monkeypatch.setattr(files.os, "statvfs", _full_statvfs(os.statvfs))
    out = tmp_path / "run"
    code, err_text = cli([*TRAIN[:6], "2", *TRAIN[7:], "--out", str(out)], capsys)
    line = one_line(err_text)
    assert code == 2 and f"{out / 'last.safetensors'}: cannot write ({reason})" in line
    assert line.endswith("; the previous checkpoint is kept")
    assert not leftovers(out)
    assert (out / "log.csv").read_text().count("\n") == 2  # header + epoch 1


def test_a_full_disk_during_convert_is_one_line_and_writes_neither_file(
    official, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "a0" / "a0.safetensors"
    assert main(convert(official, out)) == 0
    before = snapshot(out.parent)
    monkeypatch.setattr(files, "save_file", _raise(SafetensorError(SAFETENSORS_FULL)))
    code, err = cli(convert(official, out, "--force"), capsys)
    assert code == 2 and f"{out}: cannot write (No space left on device)" in one_line(err)
    assert snapshot(out.parent) == before and not leftovers(tmp_path)
    code, err = cli(convert(official, tmp_path / "b" / "b.safetensors"), capsys)
    assert code == 2 and not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("error", ["ENOSPC", "torch"])
@pytest.mark.parametrize("command", ["deploy", "report"])
def test_a_full_disk_during_deploy_or_report_keeps_the_previous_folder(
    command, error, run, tmp_path, monkeypatch, capsys
):
    from reparam.app import report
    from reparam.app.deploy import pipeline

    finish(run)
    out = tmp_path / "out"
    assert main([command, str(run), "--out", str(out)]) == 0
    before = snapshot(out)
    full = _raise(FULL_DISK_ERRORS[error][0])
    monkeypatch.setattr(files.os, "statvfs", _full_statvfs(os.statvfs))
    if command == "deploy":
        monkeypatch.setattr(pipeline, "export_onnx", full)
    else:
        monkeypatch.setattr(report, "plot_training_curves", full)
    extra = ["--onnx"] if command == "deploy" else []
    code, err = cli([command, str(run), "--out", str(out), "--force", *extra], capsys)
    assert code == 2 and f"{out}: cannot write (No space left on device)" in one_line(err)
    assert snapshot(out) == before and not leftovers(tmp_path)
    new = tmp_path / "new" / "out"
    code, err = cli([command, str(run), "--out", str(new), *extra], capsys)
    assert code == 2 and "No space left on device" in one_line(err)
    assert not (tmp_path / "new").exists()


# --- kills and logs ------------------------------------------------------------------------


KILLED_DEPLOY = """
import os, sys
from reparam.app.deploy import pipeline
from reparam.app.cli import main

real = pipeline.save_fused
def dying(*args, **kwargs):
    real(*args, **kwargs)
    os._exit(137)  # kill -9: no finally blocks, no cleanup
pipeline.save_fused = dying
main(["deploy", sys.argv[1], "--out", sys.argv[2]])
"""


@pytest.mark.slow
def test_a_killed_deploys_temp_folder_is_removed_by_the_next_deploy(run, tmp_path, caplog):
    out = tmp_path / "deployed"
    killed = subprocess.run([sys.executable, "-c", KILLED_DEPLOY, str(run), str(out)])
    assert killed.returncode == 137 and not out.exists()
    (left,) = leftovers(tmp_path)  # the temp folder, holding the fused model
    other = tmp_path / ".deployed.v2.abcdefgh.tmp"  # another output's ("deployed.v2")
    other.mkdir()
    with caplog.at_level("INFO"):
        assert main(["deploy", str(run), "--out", str(out), "--onnx"]) == 0
    assert leftovers(tmp_path) == [other.name]
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("reparam")]
    assert f"removing {tmp_path / left}, left by an interrupted write of {out}" in logs
    assert any(str(out / "model.onnx") in line for line in logs)
    records = [p.read_text() for p in out.glob("*.json")]
    others = [line for line in logs if not line.startswith("removing")]
    assert not [text for text in others + records if ".tmp" in text]  # final paths only


def test_a_deploy_killed_between_its_renames_gets_its_previous_folder_back(run, tmp_path):
    out = tmp_path / "deployed"
    assert main(["deploy", str(run), "--out", str(out)]) == 0
    before = snapshot(out)
    os.replace(out, tmp_path / ".deployed.old")  # killed after renaming the old folder aside
    with exclusive_lock(out), pytest.raises(RuntimeError, match="stop"):
        with atomic_folder(out, "deploy"):
            raise RuntimeError("stop")
    assert snapshot(out) == before and not leftovers(tmp_path)


def test_a_deploy_that_fails_inside_its_lock_leaves_no_lock_file_or_folder(
    run, tmp_path, monkeypatch, capsys
):
    from reparam.app.deploy import pipeline
    from reparam.errors import DeployError

    monkeypatch.setattr(pipeline, "export_onnx", _raise(DeployError("export failed")))
    out = tmp_path / "new" / "deployed"
    code, err = cli(["deploy", str(run), "--out", str(out), "--onnx"], capsys)
    assert code == 2 and "export failed" in one_line(err)
    assert not (tmp_path / "new").exists()


def test_hypersearch_force_replaces_only_a_scale_file(run, tmp_path, capsys):
    before = snapshot(run)
    search = ["hypersearch", "--model", "repopt_vgg_a0", "--data", "synthetic:32", "--epochs"]
    search += ["1", "--batch-size", "16", "--image-size", "8", "--no-progress"]
    search += ["--run-dir", str(tmp_path / "hs"), "--force", "--out"]
    code, err = cli([*search, str(run / "config.json")], capsys)
    assert code == 2 and "not a reparam scale file" in one_line(err) and "--out" in err
    assert snapshot(run) == before and not (tmp_path / "hs").exists()


def test_an_error_that_is_not_a_failed_write_keeps_its_own_message(tmp_path):
    with pytest.raises(RuntimeError, match="^not a write$"):
        with atomic_folder(tmp_path / "new" / "out", "deploy"):
            raise RuntimeError("not a write")
    assert not (tmp_path / "new").exists() and not leftovers(tmp_path)
