"""reparam: re-parameterized vision backbones (structural, gradient and depth re-param).

The package face (**contract**)::

    import reparam
    model = reparam.create_model("repopt_vgg_a0", num_classes=10)   # also timm: "reparam_<name>"
    opt = reparam.optim.RepOptSGD(model, lr=0.1, momentum=0.9, weight_decay=4e-5)
    fused = reparam.reparameterize(model.eval())
    model, preprocessing, class_names = reparam.load("runs/a0")    # a run or fused folder

Importing it registers every model with timm; it loads no ONNX, ONNX Runtime, matplotlib or
TensorBoard (those are imported where they are used).
"""

from reparam import optim
from reparam.errors import FusionError
from reparam.fuse import prepare_for_deploy, reparameterize
from reparam.models import create_model, list_models
from reparam.saved import load

__version__ = "0.1.0"
__all__ = [
    "FusionError",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "optim",
    "prepare_for_deploy",
    "reparameterize",
]
