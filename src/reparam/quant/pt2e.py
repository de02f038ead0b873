"""INT8 on PyTorch's own stack: torchao's PT2E flow with ONNX Runtime's QDQ scheme.

``torch.export`` captures the model (dynamic batch), ``prepare_pt2e`` (PTQ) or
``prepare_qat_pt2e`` (QAT) inserts observers / fake quantizers where torchao's
``X86InductorQuantizer`` annotates (convs, linears and their ReLU, pooling, adds),
``convert_pt2e`` folds BN and writes quantize / dequantize pairs, and torch's dynamo ONNX exporter
(:func:`reparam.quant.onnx.export_onnx`) turns those into ``QuantizeLinear`` /
``DequantizeLinear``: the same QDQ form as the ORT path.

Scheme, chosen to equal :mod:`reparam.quant.ort` (not the quantizer's own default of
histogram activations and [-128, 127] weights): activations uint8, asymmetric, per tensor,
min/max range (which always includes 0); weights int8 symmetric in [-127, 127], per tensor or per
output channel; biases float. QAT uses torch's default fake quantizer
(``FusedMovingAvgObsFakeQuantize``: moving-average min/max, straight-through gradients) and trains
each conv-BN pair with the BN folded into the fake-quantized weight.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import fx, nn

from reparam.errors import DeployError
from reparam.extras import require

logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time notice
require("torchao", extra="qat")  # importing this module without torchao: one line naming the extra
from torchao.quantization.pt2e import (  # noqa: E402
    FusedMovingAvgObsFakeQuantize,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from torchao.quantization.pt2e.quantize_pt2e import (  # noqa: E402
    convert_pt2e,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec  # noqa: E402
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (  # noqa: E402
    X86InductorQuantizer,
)

__all__ = [
    "capture",
    "int8_quantizer",
    "prepare_qat",
    "ptq",
    "quantize_qat",
    "set_training",
]


def int8_quantizer(granularity: str, qat: bool) -> X86InductorQuantizer:
    """The quantizer of the module docstring's scheme; ``granularity`` of the weight scales:
    ``"per-tensor"`` or ``"per-channel"``."""
    per_channel = granularity == "per-channel"
    if qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
        observer = (
            MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
        )
        weight_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=observer)
    else:
        act_ctr = MinMaxObserver
        weight_ctr = PerChannelMinMaxObserver if per_channel else MinMaxObserver
    activations = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=255,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=act_ctr,
    )
    weights = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=weight_ctr,
    )
    config = QuantizationConfig(activations, activations, weights, None, is_qat=qat)
    return X86InductorQuantizer().set_global(config)


def capture(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """``torch.export`` of ``model`` in its current train / eval mode, batch dimension dynamic;
    parameter names are kept (so RepOpt grad mults still find their weights)."""
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    except Exception as err:  # export raises many internal types for untraceable models
        raise DeployError(
            f"{type(model).__name__}: torch.export cannot capture it for PT2E quantization "
            f"({str(err).splitlines()[0]})"
        ) from None


def ptq(
    fused: nn.Module, images: np.ndarray, granularity: str, batch_size: int = 32
) -> fx.GraphModule:
    """Post-training quantization of an eval-mode model: min/max observed on ``images``
    (float32 ``[N, C, H, W]``, the ORT path's calibration images), then converted."""
    example = torch.from_numpy(np.ascontiguousarray(images[:2], dtype=np.float32))
    prepared = prepare_pt2e(capture(fused.eval(), example), int8_quantizer(granularity, qat=False))
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            prepared(torch.from_numpy(np.asarray(images[start : start + batch_size], np.float32)))
    return convert_pt2e(prepared)


def prepare_qat(model: nn.Module, example: torch.Tensor, granularity: str) -> fx.GraphModule:
    """The train-mode graph of ``model`` with fake quantizers, ready for fine-tuning."""
    return prepare_qat_pt2e(capture(model.train(), example), int8_quantizer(granularity, qat=True))


def set_training(prepared: fx.GraphModule, training: bool) -> fx.GraphModule:
    """Train / eval mode of a captured graph (BN and dropout; ``.train()`` does not reach them)."""
    if training:
        return move_exported_model_to_train(prepared)
    return move_exported_model_to_eval(prepared)


def quantize_qat(prepared: fx.GraphModule) -> fx.GraphModule:
    """The quantized (reference q/dq) model of a fine-tuned :func:`prepare_qat` graph, BN folded,
    in eval mode (torchao's ``convert_pt2e``)."""
    return convert_pt2e(set_training(prepared, False))
