"""reparam: re-parameterized vision backbones (structural, gradient and depth re-param)."""

from .deploy.fuse import FusionError, reparameterize
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["FusionError", "__version__", "create_model", "list_models", "reparameterize"]
