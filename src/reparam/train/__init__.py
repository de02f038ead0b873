"""Training engine: recipes (:class:`TrainConfig`, presets) and :func:`fit` (**contract**).

from reparam.train import TrainConfig, fit, resolve_config
metrics = fit(resolve_config("basic", {"model": "repvgg_a0", "data": "digits", "out": "runs/a0"}))
"""

from .engine import TrainingError, fit
from .recipe import RecipeError, TrainConfig, load_recipe, parse_overrides, recipes, resolve_config

__all__ = [
    "RecipeError",
    "TrainConfig",
    "TrainingError",
    "fit",
    "load_recipe",
    "parse_overrides",
    "recipes",
    "resolve_config",
]
