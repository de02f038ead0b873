"""The library and the application, each in layers that import only downward (see
docs/architecture.md).

Every module's imports are read from its syntax tree, at the top level and inside functions
alike, so a lazy import cannot hide an upward dependency. The library (``reparam`` outside
``reparam.app``) never imports the application, and the application imports no private
(``_name``) name of the library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import reparam

PACKAGE = Path(reparam.__file__).parent

# bottom to top; a module may import from its own layer and the layers below it. The longest
# matching prefix decides a module's layer.
LIBRARY: list[tuple[str, ...]] = [
    ("reparam.errors", "reparam.compat"),
    ("reparam.files", "reparam.testing", "reparam.extras"),
    ("reparam.kernels",),
    ("reparam.csla",),
    ("reparam.fuse",),
    ("reparam.data",),
    ("reparam.models",),
    ("reparam.optim",),
    ("reparam.analysis",),
    ("reparam.quant",),
    ("reparam.saved",),
    ("reparam",),  # the package face: create_model, reparameterize, optim, load
]
APPLICATION: list[tuple[str, ...]] = [
    ("reparam.app",),
    ("reparam.app.folders", "reparam.app.dataspec", "reparam.app.converted"),
    ("reparam.app.train",),
    ("reparam.app.plots", "reparam.app.report"),
    ("reparam.app.deploy",),
    ("reparam.app.bench",),
    ("reparam.app.verify", "reparam.app.demo"),
    ("reparam.app.commands",),
    ("reparam.app.cli", "reparam.__main__"),
]
LAYERS = LIBRARY + APPLICATION


def in_application(module: str) -> bool:
    return layer_of(module) >= len(LIBRARY)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix of ``module``."""
    best, best_length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every ``reparam`` import in the file, anywhere."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import optim``: the names may be modules themselves
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return [(module, line) for module, line in found if module.split(".")[0] == "reparam"]


def resolve(module: str) -> str:
    """``reparam.models.create_model`` -> ``reparam.models`` (the longest importable prefix)."""
    parts = module.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    raise AssertionError(f"cannot resolve {module}")


def upward_imports(root: Path = PACKAGE) -> list[str]:
    """``"path:line: a (layer i) imports b (layer j > i)"`` for every upward import."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path)
        for module, line in imported_modules(path):
            target = resolve(module)
            if layer_of(target) > layer_of(importer):
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {importer} (layer "
                    f"{layer_of(importer)}) imports {target} (layer {layer_of(target)})"
                )
    return problems


def test_no_module_imports_from_a_layer_above_it():
    problems = upward_imports()
    assert not problems, "upward imports:\n" + "\n".join(problems)


def copy_package(tmp_path: Path) -> Path:
    copy = tmp_path / "reparam"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    return copy


@pytest.mark.parametrize(
    ("module", "added", "message"),
    [
        (
            "models/layers.py",
            "from reparam.saved import load",
            "reparam.models.layers (layer 6) imports reparam.saved (layer 10)",
        ),
        (
            "fuse.py",
            "from reparam.app.cli import main",
            "reparam.fuse (layer 4) imports reparam.app.cli (layer 20)",
        ),
        (
            "app/train/engine.py",
            "from reparam.app.deploy import pipeline",
            "reparam.app.train.engine (layer 14) imports reparam.app.deploy.pipeline (layer 16)",
        ),
    ],
)
def test_an_upward_import_is_reported_with_its_place(tmp_path, monkeypatch, module, added, message):
    """The check fails, naming file, line and layers, when a module imports from above it: a
    model file importing saved models, the library importing the application (even lazily)."""
    copy = copy_package(tmp_path)
    path = copy / module
    path.write_text(path.read_text() + f"\n\ndef _later():\n    {added}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    problems = upward_imports(copy)
    assert len(problems) == 1
    assert f"reparam/{module}" in problems[0]
    assert message in problems[0]


def private_library_imports(root: Path = PACKAGE) -> list[str]:
    """``"path:line: name"`` for every private library name the application imports."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        if not in_application(module_name(path)):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reparam"):
                if in_application(resolve(node.module)):
                    continue
                problems += [
                    f"{path.relative_to(root.parent)}:{node.lineno}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.endswith("__")
                ]
    return problems


def test_the_application_imports_only_public_library_names():
    problems = private_library_imports()
    assert not problems, "private names imported by the application:\n" + "\n".join(problems)


def test_a_private_import_by_the_application_is_reported(tmp_path, monkeypatch):
    copy = copy_package(tmp_path)
    path = copy / "app" / "train" / "engine.py"
    path.write_text(path.read_text() + "\n\ndef _later():\n    from reparam.kernels import _x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    assert [p.rsplit(": ", 1)[1] for p in private_library_imports(copy)] == ["reparam.kernels._x"]


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize("module", ["reparam", "reparam.app.cli"])
def test_importing_the_package_loads_no_heavy_optional_dependency(module):
    """ONNX, ONNX Runtime, matplotlib and TensorBoard load only where they are used."""
    code = (
        f"import sys, {module}; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('onnx', 'onnxruntime', 'matplotlib', 'tensorboard')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
