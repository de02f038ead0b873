"""Model families; importing this package registers them (with timm too, as ``reparam_<name>``)."""

from . import repvgg  # noqa: F401  (registers repvgg_* and vgg_*)
from .registry import TIMM_PREFIX, create_model, list_models, register_model

__all__ = ["TIMM_PREFIX", "create_model", "list_models", "register_model"]
