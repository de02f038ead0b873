"""Gradient re-parameterization optimizers (RepOptimizer, https://arxiv.org/abs/2205.15242).

``RepOptSGD`` / ``RepOptAdamW`` multiply each CSLA target's gradient by a constant mask
``grad_mults(model)`` derived from ``reparam.csla`` specs, so training one plain conv equals
training the imaginary multi-branch block (exactly for SGD, up to ``eps`` for AdamW).
"""

from .adamw import RepOptAdamW
from .masks import grad_mults, param_grad_mults
from .sgd import RepOptSGD

__all__ = ["RepOptAdamW", "RepOptSGD", "grad_mults", "param_grad_mults"]
