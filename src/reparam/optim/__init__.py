"""Gradient re-parameterization optimizers (RepOptimizer, https://arxiv.org/abs/2205.15242).

``RepOptSGD`` / ``RepOptAdamW`` multiply each CSLA target's gradient by a constant mask
``grad_mults(model)`` derived from ``reparam.csla`` specs, so training one plain conv equals
training the imaginary multi-branch block (exactly for SGD, up to ``eps`` for AdamW). They store
the masks factored (per output channel and tap, plus the identity diagonal) and apply them in a
cache-blocked in-place update; ``optimizer.grad_mult(param)`` shows a mask in full.
"""

from reparam.optim.adamw import RepOptAdamW
from reparam.optim.masks import grad_mults, param_grad_mults
from reparam.optim.sgd import RepOptSGD

__all__ = ["RepOptAdamW", "RepOptSGD", "grad_mults", "param_grad_mults"]
