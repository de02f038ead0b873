"""The generated documents are the committed results JSON rendered: docs/benchmarks.md, the
README's headline block and its copy in benchmarks/results/readme_headline.md cannot drift from
the JSON they are rendered from (``benchmarks/render.py`` and ``benchmarks/templates/``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RENDER = ROOT / "benchmarks" / "render.py"


def _render_module():
    spec = importlib.util.spec_from_file_location("bench_render", RENDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def test_docs_page_is_the_rendered_results():
    assert render.render_docs(RESULTS) == (ROOT / "docs" / "benchmarks.md").read_text()


def test_headline_file_is_the_rendered_results():
    block = render.render_headline(RESULTS)
    assert block.startswith(render.BEGIN + "\n") and block.endswith(render.END + "\n")
    assert (RESULTS / "readme_headline.md").read_text() == block


def test_readme_block_is_the_rendered_results():
    readme = (ROOT / "README.md").read_text()
    if render.BEGIN not in readme:
        pytest.skip(f"README.md has no {render.BEGIN} block to compare")
    start, end = readme.index(render.BEGIN), readme.index(render.END) + len(render.END)
    assert readme[start:end] + "\n" == render.render_headline(RESULTS)


def test_headline_rows_are_means_and_paired_int8_changes():
    cifar = {
        "rows": {
            "repopt_vgg_a0": {
                "0": {"top1": 0.40, "train_images_per_s": 100.0},
                "1": {"top1": 0.44, "train_images_per_s": 300.0},
            },
            "hs": {"0": {"top1": 0.5}},
        }
    }
    qat = {
        "rows": {
            "repopt_vgg_a0": {
                "0": {"ptq_ort_per-tensor": {"top1_fp32": 0.40, "top1_int8": 0.39}},
                "1": {
                    "ptq_ort_per-tensor": {"top1_fp32": 0.50, "top1_int8": 0.53},
                    "qat": {"top1_fp32": 0.50, "top1_int8": 0.49},
                },
            }
        }
    }
    rows = render.cifar_rows(cifar, qat)
    # top-1 40 and 44: mean 42, std sqrt(8) = 2.83; INT8 changes -1 and +3 points: +1.00 +- 2.83
    assert rows["repopt_vgg_a0"] == {
        "seeds": "2",
        "top1": "42.00 ± 2.83",
        "images_per_s": "200",
        "ptq": "+1.00 ± 2.83",
        "qat": "-1.00",  # one seed: no spread
    }
    assert rows["hs"] == {
        "seeds": "1",
        "top1": "50.00",
        "images_per_s": "-",
        "ptq": "-",
        "qat": "-",
    }
    assert render.cifar_rows(cifar, None)["repopt_vgg_a0"]["ptq"] == "-"


def test_replace_block_changes_only_between_the_markers():
    block = f"{render.BEGIN}\nnew\n{render.END}\n"
    text = f"# Title\n\nbefore\n{render.BEGIN}\nold\nrows\n{render.END}\nafter\n"
    assert render.replace_block(text, block) == f"# Title\n\nbefore\n{block}after\n"
    broken = (
        "no markers\n",
        f"{render.BEGIN}\nonly the first\n",
        f"{render.END}\n{render.BEGIN}\n",
        f"{render.BEGIN}\n{render.END}\n{render.BEGIN}\n{render.END}\n",
    )
    for text in broken:
        with pytest.raises(ValueError, match=r"^README.md: expected one '<!-- begin"):
            render.replace_block(text, block)


def test_main_writes_the_block_into_the_readme_and_refuses_a_readme_without_markers(
    tmp_path, monkeypatch, capsys
):
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("*.png", "*.md", "demo"))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{render.BEGIN}\nstale\n{render.END}\nrest\n")
    argv = ["render.py", "--results", str(results), "--docs", str(tmp_path / "docs.md")]
    argv += ["--readme", str(readme), "--no-plots"]
    monkeypatch.setattr(sys, "argv", argv)
    assert render.main() == 0
    block = (RESULTS / "readme_headline.md").read_text()
    assert readme.read_text() == f"intro\n{block}rest\n"
    assert (results / "readme_headline.md").read_text() == block
    assert (tmp_path / "docs.md").read_text() == (ROOT / "docs" / "benchmarks.md").read_text()

    readme.write_text("intro\nrest\n")
    capsys.readouterr()
    assert render.main() == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"render.py: error: {readme}: expected one '{render.BEGIN}' line followed by one '{render.END}' line where the headline table goes\n"
    )
    assert readme.read_text() == "intro\nrest\n"


def test_rendering_needs_neither_torch_nor_matplotlib():
    code = (
        "import importlib.util, json, sys\n"
        "sys.modules.update(torch=None, matplotlib=None, reparam=None)\n"
        f"spec = importlib.util.spec_from_file_location('render', {str(RENDER)!r})\n"
        "render = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(render)\n"
        f"print(json.dumps([render.render_docs(render.Path({str(RESULTS)!r})),\n"
        f"                  render.render_headline(render.Path({str(RESULTS)!r}))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    docs, headline = json.loads(out.stdout)
    assert docs == render.render_docs(RESULTS) and headline == render.render_headline(RESULTS)
