"""Optional dependencies: without any extra, the library and ``reparam train`` work, and a
feature that needs a missing extra ends in one line naming ``pip install 'reparam[<extra>]'``.

The subprocess tests hide every package of every extra behind an import hook (as a venv with
``pip install reparam`` alone would lack them); the in-process tests hide one package with a
``None`` entry in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import reparam
from reparam.errors import ReparamError
from reparam.extras import EXTRAS, MissingExtraError, install_command, require, require_extra

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(reparam.__file__).resolve().parents[1]
HIDDEN = sorted({package for packages in EXTRAS.values() for package in packages})

# `python -c` prelude: every extra's packages are missing (import raises ModuleNotFoundError,
# importlib.util.find_spec finds nothing)
NO_EXTRAS = textwrap.dedent(
    f"""
    import sys

    HIDDEN = {HIDDEN!r}
    sys.modules.update(dict.fromkeys(HIDDEN))
    """
)


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", NO_EXTRAS + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


MARK = "-- deploy --"


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory):
    """One process with no extra installed: the library face, a one-epoch ``reparam train`` on
    digits, then ``reparam deploy RUN --int8`` (its stderr after the line ``MARK``)."""
    root = tmp_path_factory.mktemp("no-extras")
    done = python(
        f"""
        import torch
        import reparam
        from reparam.app.cli import main
        from reparam.testing import rel_err

        x = torch.randn(4, 3, 16, 16)
        target = reparam.create_model("repopt_vgg_a0", num_classes=3)
        optimizer = reparam.optim.RepOptSGD(target, lr=0.1, momentum=0.9, nesterov=True)
        target(x).logsumexp(1).mean().backward()
        optimizer.step()
        model = reparam.create_model("repvgg_a0", num_classes=3).eval()
        fused = reparam.reparameterize(model)
        with torch.no_grad():
            print("fused rel_err", float(rel_err(fused(x), model(x))))
        code = main(
            ["train", "--model", "resnet_rs_tiny", "--data", "digits", "--epochs", "1",
             "--image-size", "8", "--batch-size", "256", "--workers", "0", "--threads", "1",
             "--out", "run", "--no-progress"]
        )
        print("train", code, "loaded", sorted(m for m in HIDDEN if sys.modules[m] is not None))
        print({MARK!r}, file=sys.stderr, flush=True)
        print("deploy", main(["deploy", "run", "--int8", "--data", "digits", "--out", "d"]))
        """,
        root,
    )
    assert done.returncode == 0, done.stderr
    before, _, after = done.stderr.partition(MARK + "\n")
    return root, done.stdout.splitlines(), before, after


def test_the_library_and_reparam_train_work_without_any_extra(without_extras):
    root, stdout, stderr, _ = without_extras
    assert float(stdout[0].split()[-1]) < 1e-5  # float32 fusion
    assert stdout[1] == "train 0 loaded []"
    assert json.loads((root / "run" / "metrics.json").read_text())["epochs"] == 1
    assert len((root / "run" / "log.csv").read_text().splitlines()) == 2  # header, epoch 1
    assert not any(p.name.startswith("events.out") for p in (root / "run").iterdir())
    warnings = [line for line in stderr.splitlines() if "TensorBoard" in line]
    assert warnings == [
        "WARNING reparam.app.train.engine: TensorBoard events are not written: "
        "tensorboard is not installed; pip install 'reparam[tb]'"
    ], stderr


def test_deploy_int8_without_the_deploy_extra_is_one_line_naming_it(without_extras):
    root, stdout, _, stderr = without_extras
    assert stdout[2] == "deploy 2"
    assert stderr == "reparam deploy: error: onnx is not installed; pip install 'reparam[deploy]'\n"
    assert not (root / "d").exists()


def test_a_missing_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as caught:
        require("onnxruntime", extra="deploy")
    assert str(caught.value) == "onnxruntime is not installed; pip install 'reparam[deploy]'"
    assert isinstance(caught.value, ReparamError) and isinstance(caught.value, ImportError)
    with pytest.raises(MissingExtraError, match=r"^onnxruntime is not installed"):
        require_extra("deploy")  # onnx first (installed here), then onnxruntime
    with pytest.raises(MissingExtraError, match=r"^nosuchpackage is not installed; .*\[tb\]'$"):
        require("nosuchpackage.submodule", extra="tb")  # the package is named, not the module
    assert require("json", extra="deploy") is __import__("json")
    with pytest.raises(ValueError, match="unknown extra 'onnx'"):
        require("onnx", extra="onnx")


def test_a_package_that_fails_to_import_is_told_apart_from_a_missing_one(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg.py").write_text("import a_dependency_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError) as caught:
        require("brokenpkg", extra="plots")
    assert str(caught.value) == (
        "brokenpkg cannot be imported (No module named 'a_dependency_that_is_not_there'); "
        "pip install 'reparam[plots]'"
    )


def test_plots_without_matplotlib(monkeypatch):
    from reparam.app.plots import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"^matplotlib is not installed; .*\[plots\]'$"):
        pyplot()


def test_pt2e_and_qat_without_torchao(monkeypatch, tmp_path):
    from reparam.app.deploy.pipeline import deploy
    from reparam.app.deploy.qat import qat
    from reparam.quant.ort import QuantSettings

    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.delitem(sys.modules, "reparam.quant.pt2e", raising=False)
    expected = r"^torchao is not installed; pip install 'reparam\[qat\]'$"
    with pytest.raises(MissingExtraError, match=expected):
        import reparam.quant.pt2e  # noqa: F401
    with pytest.raises(MissingExtraError, match=expected):  # before the source is read
        deploy(tmp_path / "missing", tmp_path / "d", int8=True, settings=QuantSettings("pt2e"))
    with pytest.raises(MissingExtraError, match=expected):
        qat(tmp_path / "missing", "digits", tmp_path / "q")
    assert not (tmp_path / "d").exists() and not (tmp_path / "q").exists()


def test_the_extras_are_the_ones_pyproject_declares():
    """``pip install reparam`` brings no package of an extra; ``[all]`` brings every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    distribution = {"sklearn": "scikit-learn"}  # import name -> distribution name

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requirements}

    for extra, packages in EXTRAS.items():
        assert names(optional[extra]) == {distribution.get(p, p) for p in packages}, extra
    assert optional["all"] == [f"reparam[{','.join(EXTRAS)}]"]
    assert "reparam[all]" in optional["dev"]
    assert not names(project["dependencies"]) & names(sum(optional.values(), []))
    assert install_command("tb") == "pip install 'reparam[tb]'"


def test_the_bundled_digits_are_scikit_learns_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    from reparam.data.datasets import digits

    source = sklearn_datasets.load_digits()
    images = np.round(source.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_val, y_train, y_val = train_test_split(
        images, source.target, test_size=0.2, stratify=source.target, random_state=0
    )
    train_images, train_labels, val_images, val_labels, names = digits()
    for ours, theirs in ((train_images, x_train), (val_images, x_val)):
        assert ours.dtype == torch.uint8 and ours.shape[1] == 3
        assert torch.equal(ours, torch.from_numpy(theirs).unsqueeze(1).expand(-1, 3, -1, -1))
    for ours, theirs in ((train_labels, y_train), (val_labels, y_val)):
        assert ours.dtype == torch.int64 and torch.equal(ours, torch.from_numpy(theirs))
    assert names == [str(d) for d in range(10)]
