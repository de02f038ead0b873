"""Presets as files, the config schema and its one-line errors naming the field path."""

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from reparam.app.cli import main
from reparam.app.train import (
    RecipeError,
    TrainConfig,
    load_recipe,
    parse_overrides,
    recipes,
    resolve_config,
    resume_config,
)
from reparam.app.train import recipe as recipe_module
from reparam.models.resnet_rs import RESNET_RS_IMAGE_SIZES

ROOT = Path(__file__).resolve().parents[1]


def preset_files() -> dict[str, dict]:
    return {f.stem: yaml.safe_load(f.read_text()) for f in recipe_module.PRESETS.glob("*.yaml")}


def test_every_preset_file_validates_with_its_fields_typed_as_written():
    """Each file resolves, cites its source, and holds values of its fields' own types (YAML
    reads ``1e-6`` as text and ``1.0e-6`` as a number: the first would pass only as coerced)."""
    files = preset_files()
    assert set(files) == set(recipes())
    for name, data in files.items():
        assert isinstance(data["source"], str) and data["source"], name
        assert resolve_config(name, {"device": "cpu"}).recipe == name
        for field, value in data.items():
            if field not in ("source", "recipe"):
                annotation = TrainConfig.model_fields[field].rebuild_annotation()
                TypeAdapter(annotation).validate_python(value, strict=True)


def test_resnet_rs_presets_use_the_model_files_resolution():
    for depth, size in RESNET_RS_IMAGE_SIZES.items():
        fields = recipes()[f"resnet-rs{depth}"]["fields"]
        assert fields["model_kwargs"] == {"depth": depth} and fields["image_size"] == size


def test_presets_ship_as_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["reparam.app.train"]
    package = Path(recipe_module.__file__).parent
    assert recipe_module.PRESETS == package / "presets"
    assert {p.name for p in package.glob("presets/*.yaml")} == {
        p.name for pattern in shipped for p in package.glob(pattern)
    }


@pytest.fixture
def presets(tmp_path, monkeypatch) -> Path:
    """A writable copy of the preset folder that the recipe functions read instead."""
    folder = tmp_path / "presets"
    shutil.copytree(recipe_module.PRESETS, folder)
    monkeypatch.setattr(recipe_module, "PRESETS", folder)
    return folder


@pytest.mark.parametrize(
    "name, line, expected",
    [
        (
            "basic",
            "epochs: abc",
            "recipe 'basic': config field 'epochs' is 'abc'; expected an integer",
        ),
        (
            "resnet-rs50",
            "betas: [0.9, 2.0]",
            "recipe 'resnet-rs50': config field 'betas.1' is 2.0; expected a value < 1",
        ),
        (
            "resnet-rs101",  # reaches resnet-rs101 through the preset it extends
            "optimizer: lars",
            "recipe 'resnet-rs101': config field 'optimizer' is 'lars'; expected one of 'sgd', "
            "'adamw' or 'lamb'",
        ),
        ("repvgg", "recipe: nope", "preset 'repvgg': 'recipe' must name a preset ("),
        ("repvgg", "recipe: repvgg", "preset 'repvgg': 'recipe' extends itself (repvgg -> repvgg)"),
        (
            "resnet-rs101",
            "recipe: resnet-rs101",
            "preset 'resnet-rs50': 'recipe' extends itself "
            "(resnet-rs101 -> resnet-rs50 -> resnet-rs101)",
        ),
    ],
)
def test_a_tampered_preset_names_its_field_path(presets, name, line, expected):
    base = name if name != "resnet-rs101" else "resnet-rs50"
    with (presets / f"{base}.yaml").open("a") as file:
        file.write(f"{line}\n")
    with pytest.raises(RecipeError) as caught:
        resolve_config(name)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


def test_a_preset_without_its_source_is_refused(presets):
    (presets / "mine.yaml").write_text("epochs: 3\n")
    with pytest.raises(RecipeError, match=r"mine\.yaml: a preset needs a 'source'"):
        load_recipe("basic")


def test_a_tampered_config_json_names_the_file_and_the_field(tmp_path):
    """An edited run folder fails on resume with one line, not on some later step."""
    saved = {**TrainConfig(device="cpu").to_dict(), "class_names": ["a", "b"]}
    (tmp_path / "config.json").write_text(json.dumps({**saved, "lr_per_256": "abc"}))
    with pytest.raises(RecipeError) as caught:
        resume_config(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'config.json'}: config field 'lr_per_256' is 'abc'; expected a number"
    )
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert resume_config(tmp_path) == TrainConfig(device="cpu", resume=True)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "config field 'epochs' is 0; expected a value >= 1"),
        ({"lr": "abc"}, "config field 'lr' is 'abc'; expected a number"),
        ({"lr": float("inf")}, "config field 'lr' is inf; expected a finite number"),
        ({"betas": (0.9,)}, "config field 'betas' is (0.9,); expected 2 comma-separated numbers"),
        ({"mean": [0.5, "x", 0.5]}, "config field 'mean.1' is 'x'; expected a number"),
        ({"model_kwargs": 3}, "config field 'model_kwargs' is 3; expected a mapping such as"),
        ({"accum_steps": 3}, "config field 'accum_steps' is 3; expected a value that divides"),
        ({"device": "tpu"}, "config field 'device' is 'tpu'; expected auto, cpu, cuda or cuda:N"),
        ({"nope": 1, "zz": 2}, "unknown config keys ['nope', 'zz']; known keys: ['accum_steps'"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(values, message):
    with pytest.raises(RecipeError) as caught:
        TrainConfig(**values)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_command_line_text_is_typed_by_the_schema():
    values = parse_overrides(
        ["betas=0.8,0.9", "mean=none", "model_kwargs={depth: 50}", "amp=off", "lr=null"]
    )
    config = resolve_config("basic", {**values, "device": "cpu"})
    assert (config.betas, config.model_kwargs, config.amp, config.lr) == (
        (0.8, 0.9),
        {"depth": 50},
        False,
        None,
    )
    assert config.mean == TrainConfig(device="cpu").mean  # none: the data spec's


def test_list_recipes_prints_the_presets_and_with_json_the_schema(capsys):
    assert main(["train", "--list-recipes"]) == 0
    assert json.loads(capsys.readouterr().out) == recipes()
    assert main(["train", "--list-recipes", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing == {"recipes": recipes(), "schema": TrainConfig.model_json_schema()}
    fields = listing["schema"]["properties"]
    assert set(fields) == set(TrainConfig.model_fields)
    assert fields["epochs"] == {"default": 8, "minimum": 1, "title": "Epochs", "type": "integer"}
    assert fields["optimizer"]["enum"] == ["sgd", "adamw", "lamb"]
