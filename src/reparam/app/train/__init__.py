"""Training: recipes (:class:`TrainConfig`, presets), the loop :func:`fit` (**contract**), run
folders (:func:`load_model`) and the Hyper-Search run (:func:`hyper_search`).

    from reparam.app.train import fit, resolve_config
    metrics = fit(resolve_config("basic", {"model": "repvgg_a0", "data": "digits", "out": "runs/a0"}))
"""

from reparam.app.train.engine import fit
from reparam.app.train.execution import execution_defaults
from reparam.app.train.hypersearch import ablation_overrides, hyper_search
from reparam.app.train.recipe import (
    TrainConfig,
    load_recipe,
    parse_overrides,
    parse_value,
    recipes,
    resolve_config,
    resume_config,
)
from reparam.errors import RecipeError, TrainingError
from reparam.saved import load_model

__all__ = [
    "RecipeError",
    "TrainConfig",
    "TrainingError",
    "ablation_overrides",
    "execution_defaults",
    "fit",
    "hyper_search",
    "load_model",
    "load_recipe",
    "parse_overrides",
    "parse_value",
    "recipes",
    "resolve_config",
    "resume_config",
]
