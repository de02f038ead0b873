"""The `reparam` command: help everywhere, --json prints one object, bad input is one line."""

import json

import pytest

from reparam.app.cli import COMMANDS, build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: reparam" in capsys.readouterr().out


def test_verify_json_is_one_object_with_the_contract_keys(capsys):
    assert main(["verify", "repvgg_deploy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    entry = result["repvgg_deploy"]
    assert set(entry) == {"max_abs_err", "max_rel_err", "dtype", "passed"}
    assert entry["passed"] and entry["dtype"] == "float64" and entry["max_rel_err"] <= 1e-10


def test_models_json_lists_params_and_macs(capsys):
    assert main(["models", "vgg_a0", "--image-size", "32", "--num-classes", "10", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert row["model"] == "vgg_a0" and row["params"] > row["fused_params"] > 0
    assert row["macs"] == row["fused_macs"]  # BN folding adds no MACs


def test_bad_input_is_one_readable_line(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "missing"), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and err[0].startswith("reparam eval: error:")
    assert (
        main(["train", "--model", "vgg_a0", "--data", "imagenet", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "unknown data spec" in capsys.readouterr().err
