"""The CPU execution policy: which precision and memory format a run takes when its recipe leaves
them unset (:func:`execution_defaults`), and what is known to go wrong on the path it took
(:func:`execution_warnings`).
"""

from __future__ import annotations

import torch

from reparam.compat import cpu_has_native_bf16

__all__ = [
    "BF16_MIN_IMAGE_SIZE",
    "FP32_NHWC_CRASH_SIZE",
    "execution_defaults",
    "execution_warnings",
]

# below this input size a /32 network's last stride-2 convolution sees a 1x1 input, where
# oneDNN's bf16 weight gradient of a strided k > 1 convolution returns garbage (see below)
BF16_MIN_IMAGE_SIZE = 32
# from this input size FP32 channels-last training of RepVGG crashes in oneDNN (see the warning)
FP32_NHWC_CRASH_SIZE = 128


def execution_defaults(device: str, image_size: int) -> dict[str, bool]:
    """``amp`` and ``channels_last`` for a recipe that leaves both unset (an explicit ``amp``
    sets ``channels_last`` with it, so FP32 never defaults to channels-last): both on for a CPU with
    native bf16 (AVX512-BF16 or AMX) and images of at least :data:`BF16_MIN_IMAGE_SIZE` pixels,
    off elsewhere (FP32, NCHW).

    On such a CPU, bf16 autocast with channels-last tensors is the fastest training path measured
    for RepOpt-VGG-A0, RepVGG-A0 and VGG-A0 (``benchmarks/cpu_paths.py``, FP32's images/s:
    2.8-3.2x at 224 px, 1.4x at 64 px, a tie at 32 px but for RepVGG's 1.07-1.10x), with
    CIFAR-10 top-1 within the seed noise of FP32 for all three (3 seeds, Welch's t-test). CPUs
    without native bf16 emulate it, and CUDA is not measured here, so those keep FP32. Smaller
    images keep FP32 because in torch 2.14's oneDNN the bf16 weight gradient of a stride-2
    convolution with a kernel larger than 1 and a 1x1 input holds garbage (up to 1e38, different
    on every call; ``Conv2d(64, 64, 3, 2, 1)`` on a ``[8, 64, 1, 1]`` input shows it), which made
    16 px runs diverge."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    fast = on_cpu and cpu_has_native_bf16() and image_size >= BF16_MIN_IMAGE_SIZE
    return {"amp": fast, "channels_last": fast}


def execution_warnings(device: str, image_size: int, amp: bool, channels_last: bool) -> list[str]:
    """What is known to go wrong on this execution path (``fit`` logs each once); none on CUDA."""
    if "cuda" in device:
        return []
    warnings = []
    if amp and image_size < BF16_MIN_IMAGE_SIZE:
        warnings.append(
            f"amp at {image_size} px: below {BF16_MIN_IMAGE_SIZE} px, oneDNN's bf16 "
            "weight gradients of stride-2 convolutions on 1x1 inputs hold garbage and runs "
            "can diverge (see reparam.app.train.execution_defaults); --no-amp trains in FP32"
        )
    if channels_last and not amp and image_size >= FP32_NHWC_CRASH_SIZE:
        warnings.append(
            f"FP32 channels-last at {image_size} px: oneDNN's FP32 NHWC weight gradient "
            "of a 1x1 stride-2 convolution on 3 input channels corrupts the heap and kills "
            f"RepVGG runs from {FP32_NHWC_CRASH_SIZE} px (uxlfoundation/oneDNN#6035); "
            "--no-channels-last trains in FP32 NCHW"
        )
    return warnings
