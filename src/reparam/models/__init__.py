"""Model families; importing this package registers them (with timm too, as ``reparam_<name>``).

- ``repvgg``: ``repvgg_*`` (RepVGG training form) and ``vgg_*`` (plain VGG, same deploy form)
- ``repopt_vgg``: ``repopt_vgg_*`` (RepOpt-VGG targets) and ``repopt_vgg_*_hs`` (Hyper-Search)
- ``repopt_ghostnet``: ``repghostnet_*`` (RepGhost), ``repopt_ghostnet_*`` and ``*_hs``
- ``reducenet``: ``reducenet*``; ``vanillanet``: ``vanillanet_*`` (depth re-param)
- ``resnet_rs``: ``resnet_rs`` and ``resnet_rs_tiny``
"""

from reparam.models import (  # noqa: F401 (registration)
    reducenet,
    repopt_ghostnet,
    repopt_vgg,
    repvgg,
    resnet_rs,
    vanillanet,
)
from reparam.models.registry import (
    TIMM_PREFIX,
    create_model,
    create_model_from_config,
    list_models,
    register_model,
)

__all__ = [
    "TIMM_PREFIX",
    "create_model",
    "create_model_from_config",
    "list_models",
    "register_model",
]
