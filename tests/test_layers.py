"""The package's layers import only downward (see docs/architecture.md).

Every module's imports are read from its syntax tree, at the top level and inside functions
alike, so a lazy import cannot hide an upward dependency.
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
# matching prefix decides a module's layer (``reparam.verify`` is the pure-torch numerics that
# any layer may use; its check modules exercise the whole library, so they sit near the top).
LAYERS: list[tuple[str, ...]] = [
    ("reparam.errors",),
    ("reparam.checkpoint", "reparam.verify", "reparam.verify.core"),
    ("reparam.kernels",),
    ("reparam.csla",),
    ("reparam.fuse",),
    ("reparam.data",),
    ("reparam.models",),
    ("reparam.optim",),
    ("reparam.train",),
    ("reparam.analysis",),
    ("reparam.deploy",),
    ("reparam.bench",),
    (
        "reparam.verify.checks",
        "reparam.verify.structural",
        "reparam.verify.gradient",
        "reparam.verify.depth",
        "reparam.verify.deployment",
    ),
    ("reparam",),  # the package face: create_model, reparameterize, optim
    ("reparam.commands",),
    ("reparam.cli", "reparam.__main__"),
]


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


def test_an_upward_import_is_reported_with_its_place(tmp_path, monkeypatch):
    """The check fails, naming file, line and layers, when a model file imports deployment."""
    copy = tmp_path / "reparam"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    layers = copy / "models" / "layers.py"
    layers.write_text(layers.read_text() + "\n\ndef _later():\n    from ..deploy import export\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    problems = upward_imports(copy)
    assert len(problems) == 1
    assert "reparam/models/layers.py" in problems[0]
    assert "reparam.models.layers (layer 6) imports reparam.deploy.export (layer 10)" in problems[0]


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


@pytest.mark.parametrize("module", ["reparam", "reparam.cli"])
def test_importing_the_package_loads_no_heavy_optional_dependency(module):
    """ONNX, ONNX Runtime, matplotlib and TensorBoard load only where they are used."""
    code = (
        f"import sys, {module}; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('onnx', 'onnxruntime', 'matplotlib', 'tensorboard')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
