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


def test_compare_trains_model_names_once_and_refuses_unknown_ones(tmp_path):
    """``train_sources``: every source is checked before any training; a model name is trained
    into ``OUT/runs/NAME`` and reused the next time; run folders are used as they are."""
    from reparam.app.deploy.compare import train_sources
    from reparam.errors import UserError

    run = tmp_path / "run"
    make_run(run, name="vgg_a0", num_classes=10, image_size=8, data="synthetic:32")
    out = tmp_path / "cmp"
    schedule = {"epochs": 1, "batch_size": 16, "seed": 0}
    with pytest.raises(UserError, match="'vgg_z9' is neither a run folder/checkpoint nor"):
        train_sources([str(run), "vgg_z9"], "synthetic:32", out, schedule, image_size=8)
    assert not out.exists()
    sources = train_sources([str(run), "vgg_a0"], "synthetic:32", out, schedule, image_size=8)
    assert sources == [str(run), str(out / "runs" / "vgg_a0")]
    config = read_json(out / "runs" / "vgg_a0" / "config.json")
    assert (config["epochs"], config["batch_size"], config["image_size"]) == (1, 16, 8)
    finished = (out / "runs" / "vgg_a0" / "metrics.json").stat().st_mtime_ns
    assert train_sources(["vgg_a0"], "synthetic:32", out, schedule, image_size=8) == sources[1:]
    assert (out / "runs" / "vgg_a0" / "metrics.json").stat().st_mtime_ns == finished
