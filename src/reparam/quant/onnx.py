"""ONNX export (torch's dynamo exporter) and ONNX Runtime sessions.

Exported graphs take ``input`` ``[batch, 3, S, S]`` (batch dynamic, ``S`` fixed at export) and
return ``logits`` ``[batch, classes]``. :func:`check_onnx_vs_torch` compares ONNX Runtime with
torch on the same inputs; ``reparam deploy`` refuses a file whose relative error exceeds 1e-4.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reparam.errors import DeployError
from reparam.extras import require, require_extra
from reparam.files import first_line
from reparam.testing import CheckResult, compare

__all__ = [
    "ONNX_TOLERANCE",
    "add_metadata",
    "check_onnx_vs_torch",
    "classifier_signature",
    "export_onnx",
    "input_shape",
    "open_session",
    "quiet_exporter_logs",
    "run_session",
]

ONNX_TOLERANCE = 1e-4  # max |ort - torch| / max |torch| in float32
INPUT, OUTPUT = "input", "logits"


@contextlib.contextmanager
def quiet_exporter_logs():
    """onnxscript / onnx_ir log every optimizer pass at INFO; keep only their warnings."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: int,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export an eval-mode float32 model with a dynamic batch dimension; one self-contained file.
    A graph captured by ``torch.export`` (a converted PT2E INT8 model: its Q/DQ pairs become
    ``QuantizeLinear`` / ``DequantizeLinear``) is exported as it is.

    The exporter's progress lines go to stderr (stdout is reserved for ``--json``).
    """
    require_extra("deploy")  # torch's exporter runs onnxscript and onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(model, torch.fx.GraphModule):
        model = model.eval().float()
    example = torch.zeros(2, 3, image_size, image_size)
    with (
        contextlib.redirect_stdout(sys.stderr),
        quiet_exporter_logs(),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        # a captured graph keeps training=True (it has no .eval()); after convert_pt2e nothing in
        # it depends on the flag, so the exporter's train-mode warning does not apply
        warnings.filterwarnings("ignore", "Exporting a model while it is in training mode")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    add_metadata(path, {"image_size": str(image_size), **(metadata or {})})
    return path


def add_metadata(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Record ``metadata`` in an ONNX file's ``metadata_props``."""
    onnx = require("onnx", extra="deploy")

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def open_session(
    path: str | os.PathLike,
    threads: int | None = None,
    allow_spinning: bool = True,
    qdq_as_written: bool = False,
):
    """An ONNX Runtime CPU session; a missing or corrupted file raises :class:`DeployError`.

    ``allow_spinning=False`` lets idle intra-op threads sleep instead of spinning (for timing
    several sessions in turn on shared cores). ``qdq_as_written=True`` keeps ORT from fusing
    QuantizeLinear / DequantizeLinear pairs into integer kernels (QLinearConv, ...): the graph
    then computes what it says, in float between the Q/DQ pairs, as torch's reference does."""
    ort = require("onnxruntime", extra="deploy")
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path}: ONNX file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if qdq_as_written:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise DeployError(f"{path}: not a loadable ONNX model ({first_line(err)})") from None


def input_shape(session) -> tuple[int, int, int]:
    """``(channels, height, width)`` the session expects (batch excluded)."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise DeployError(
            f"ONNX input has shape {shape}; expected [batch, C, H, W] with fixed C, H, W"
        )
    return tuple(shape[1:])


def classifier_signature(session, source: str) -> tuple[int | None, int | None]:
    """``(fixed batch size or None, class count or None)`` of an image classifier's session,
    after checking it is one: exactly one float32 input ``[N, 3, S, S]`` with fixed ``S`` and one
    output ``[N, classes]``. Anything else (a file from another tool) is a :class:`DeployError`
    naming ``source`` and what was expected."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise DeployError(
            f"{source}: has {len(inputs)} inputs {[i.name for i in inputs]}; expected one image "
            "input [N, 3, S, S]"
        )
    shape, kind = inputs[0].shape, inputs[0].type
    if kind != "tensor(float)":
        raise DeployError(
            f"{source}: input {inputs[0].name!r} is {kind}; expected tensor(float) (float32)"
        )
    fixed = [isinstance(d, int) and d > 0 for d in shape]
    if len(shape) != 4 or shape[1] != 3 or not all(fixed[2:]) or shape[2] != shape[3]:
        raise DeployError(
            f"{source}: input {inputs[0].name!r} has shape {shape}; expected [N, 3, S, S] with "
            "a fixed image size S"
        )
    out_shape = outputs[0].shape if len(outputs) == 1 else None
    if not isinstance(out_shape, list) or len(out_shape) != 2:
        found = [(o.name, o.shape) for o in outputs]
        raise DeployError(f"{source}: outputs {found}; expected one output [N, classes]")
    classes = out_shape[1] if isinstance(out_shape[1], int) else None
    return (shape[0] if fixed[0] else None), classes


def run_session(session, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Logits for a float32 batch ``[N, C, H, W]``; a shape the model was not exported for raises
    :class:`DeployError` naming both shapes."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    expected = input_shape(session)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise DeployError(
            f"ONNX model expects inputs [N, {', '.join(map(str, expected))}], "
            f"got {list(images.shape)}: it takes images prepared at {expected[-1]} px, the size "
            "it was exported at"
        )
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def check_onnx_vs_torch(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    images: torch.Tensor,
    tolerance: float = ONNX_TOLERANCE,
) -> CheckResult:
    """ONNX Runtime vs torch on ``images`` (float32); passed when relative error <= tolerance."""
    with torch.no_grad():
        reference = model.eval().float()(images.float())
    logits = torch.from_numpy(run_session(open_session(onnx_path), images))
    return compare([(logits, reference)], tolerance)
