"""``reparam deploy --compare``: identical INT8 settings for every model, one PTQ table."""

from __future__ import annotations

import json

import pytest

from helpers import make_run
from reparam.app.cli import main
from reparam.files import read_json


@pytest.mark.slow
def test_compare_run_folders_prints_the_table(tmp_path, capsys):
    sources = []
    for name in ("repvgg_a0", "vgg_a0"):
        make_run(tmp_path / name, name=name, data="synthetic:40")
        sources.append(str(tmp_path / name))
    argv = [
        "deploy",
        "--compare",
        *sources,
        "--calib-data",
        "synthetic:40",
        "--out",
        str(tmp_path / "cmp"),
        "--image-size",
        "16",
        "--calib-images",
        "8",
        "--granularity",
        "per-tensor",
        "--latency-repeats",
        "1",
        "--latency-batch",
        "2",
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "per-tensor weights, minmax calibration on 8 images" in table
    assert "| repvgg_a0 |" in table and "| vgg_a0 |" in table
    result = read_json(tmp_path / "cmp" / "compare.json")
    assert [r["model"] for r in result["rows"]] == ["repvgg_a0", "vgg_a0"]
    assert result["settings"]["calib_images"] == 8
    assert json.dumps(result)  # plain JSON all the way down
    assert main(["deploy", "--compare", *sources, "--out", str(tmp_path / "x")]) == 2
    assert "--compare needs --data" in capsys.readouterr().err
