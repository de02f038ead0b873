"""Why a fused model quantizes well or badly: weight statistics and SQNR.

RepVGG's fused weights are known to lose accuracy under post-training INT8 quantization
(QARepVGG, https://arxiv.org/abs/2212.01593; RepOptimizer, https://arxiv.org/abs/2205.15242);
these figures measure the weight properties behind it.

Per fused conv (and the final linear layer), over the weight ``W`` ``[C_out, C_in/g, k, k]``:

- ``std``, ``absmax``, ``max_over_std = absmax / std``;
- ``excess_kurtosis = E[(w - mean)^4] / var^2 - 3`` (0 for a Gaussian; outliers make it large);
- ``channel_absmax_spread = max_c absmax(W_c) / min_c absmax(W_c)`` (what per-tensor scales suffer);
- ``centre_std``, ``surround_std`` and their ratio (the centre tap carries the folded identity and
  1x1 branches, QARepVGG); ``None`` for 1x1 kernels;
- ``sqnr_per_tensor_db`` / ``sqnr_per_channel_db``: ``10 log10(sum W^2 / sum (W - Q(W))^2)`` with
  ``Q`` symmetric int8 fake quantization, scale ``absmax / 127`` (ORT's int8 weight scheme).

Scaling all weights by a constant changes none of the scale-free figures (max/std, kurtosis,
spread, SQNR), which is the point: the weight std itself does not decide INT8 accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["fake_quant_int8", "layer_stats", "output_metrics", "sqnr_db", "weight_stats"]


def fake_quant_int8(weight: Tensor, per_channel: bool) -> Tensor:
    """Symmetric int8 quantize-dequantize: ``clamp(round(w / s), -127, 127) * s`` with
    ``s = absmax / 127`` over the whole tensor or per output channel (dim 0)."""
    if per_channel:
        absmax = weight.abs().reshape(weight.shape[0], -1).amax(dim=1)
        absmax = absmax.reshape(-1, *([1] * (weight.dim() - 1)))
    else:
        absmax = weight.abs().amax()
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


def sqnr_db(reference: Tensor | np.ndarray, approximation: Tensor | np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (ref - approx)^2)`` in dB (``inf`` when identical)."""
    reference = torch.as_tensor(reference, dtype=torch.float64)
    noise = (reference - torch.as_tensor(approximation, dtype=torch.float64)).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def layer_stats(weight: Tensor) -> dict:
    """The per-layer figures of the module docstring for one weight tensor (float64 maths)."""
    w = weight.detach().to(torch.float64)
    flat = w.flatten()
    std = flat.std(unbiased=False).item()
    absmax = flat.abs().max().item()
    centred = flat - flat.mean()
    var = centred.pow(2).mean().item()
    channel_absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    stats = {
        "shape": list(w.shape),
        "std": std,
        "absmax": absmax,
        "max_over_std": absmax / std if std > 0 else math.inf,
        "excess_kurtosis": centred.pow(4).mean().item() / var**2 - 3.0 if var > 0 else 0.0,
        "channel_absmax_spread": (channel_absmax.max() / channel_absmax.min()).item()
        if channel_absmax.min() > 0
        else math.inf,
        "centre_std": None,
        "surround_std": None,
        "centre_over_surround_std": None,
        "sqnr_per_tensor_db": sqnr_db(w, fake_quant_int8(w, per_channel=False)),
        "sqnr_per_channel_db": sqnr_db(w, fake_quant_int8(w, per_channel=True)),
    }
    if w.dim() == 4 and w.shape[-1] > 1:
        k = w.shape[-1]
        centre_mask = torch.zeros(w.shape[-2:], dtype=torch.bool)
        centre_mask[k // 2, k // 2] = True
        centre = w[..., centre_mask].flatten()
        surround = w[..., ~centre_mask].flatten()
        stats["centre_std"] = centre.std(unbiased=False).item()
        stats["surround_std"] = surround.std(unbiased=False).item()
        stats["centre_over_surround_std"] = (
            stats["centre_std"] / stats["surround_std"] if stats["surround_std"] > 0 else math.inf
        )
    return stats


def weight_stats(model: nn.Module) -> list[dict]:
    """:func:`layer_stats` for every ``Conv2d`` and ``Linear`` of a fused model, in module order."""
    return [
        {"name": name, "kind": type(module).__name__, **layer_stats(module.weight)}
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def output_metrics(reference_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """End to end: ``output_sqnr_db`` of ``logits`` against the FP32 ``reference_logits``, top-1 of
    both (fractions), and ``top1_agreement`` (fraction of images where both predict the same class)."""
    reference_pred, pred = reference_logits.argmax(1), logits.argmax(1)
    return {
        "output_sqnr_db": sqnr_db(reference_logits, logits),
        "top1_fp32": float((reference_pred == labels).mean()),
        "top1_int8": float((pred == labels).mean()),
        "top1_agreement": float((reference_pred == pred).mean()),
        "n_images": int(len(labels)),
    }
