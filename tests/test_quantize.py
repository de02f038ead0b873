"""ORT static INT8 quantization: calibration methods, granularity, float first/last, bad data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import reparam
from reparam.analysis.quant_stats import sqnr_db
from reparam.errors import DeployError
from reparam.models.layers import RepVGGBlock
from reparam.models.vggnet import VGGNet
from reparam.quant.onnx import export_onnx, open_session, run_session
from reparam.quant.ort import QuantSettings, calibrate, quantize_onnx, tensor_ranges
from reparam.testing import randomize_batchnorm_


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A fused 6-conv RepVGG (random BN statistics) at 16x16 and 48 calibration images."""
    torch.manual_seed(0)
    model = VGGNet(
        lambda s: RepVGGBlock(s.in_channels, s.out_channels, s.stride, s.groups),
        depths=(1, 2, 1, 1),
        widths=(8, 16, 16, 24),
        num_classes=10,
    )
    fused = reparam.reparameterize(randomize_batchnorm_(model).eval())
    folder = tmp_path_factory.mktemp("quant")
    path = export_onnx(fused, folder / "fp32.onnx", 16)
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)).numpy()
    return path, images, folder


def _weight_scales(path) -> list[np.ndarray]:
    """Scales of the DequantizeLinear nodes that feed a Conv/Gemm weight, in graph order."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq_by_output = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    scales = []
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in dq_by_output:
            scales.append(inits[dq_by_output[node.input[1]].input[1]])
    return scales


def _differing(ranges, reference) -> list[str]:
    return [n for n in reference if not np.allclose(ranges[n], reference[n], rtol=1e-4, atol=0)]


class ImageBatches:
    """ORT ``CalibrationDataReader``: ``{input_name: images[i : i + size]}`` until exhausted
    (equal batches: ORT's histogram calibrators fail on a smaller last one)."""

    def __init__(self, input_name: str, images: np.ndarray, size: int):
        assert len(images) % size == 0
        self.batches = iter(
            [{input_name: images[i : i + size]} for i in range(0, len(images), size)]
        )

    def get_next(self) -> dict | None:
        return next(self.batches, None)


@pytest.mark.slow
def test_entropy_is_a_real_histogram_search(tiny):
    """ORT's default Entropy calibrator (what quantize_static builds: 128 bins, 128 quantized bins)
    returns the MinMax ranges on every tensor; ours (2048 bins) clips several of them, always
    inside the MinMax range. Percentile clips inside MinMax too."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    path, images, folder = tiny
    minmax = tensor_ranges(calibrate(path, images, QuantSettings(calibration="minmax")))
    entropy = tensor_ranges(calibrate(path, images, QuantSettings(calibration="entropy")))
    percentile = tensor_ranges(
        calibrate(path, images, QuantSettings(calibration="percentile", percentile=99.0))
    )
    fallback = create_calibrator(
        path,
        None,
        augmented_model_path=str(folder / "aug.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
    )
    fallback.collect_data(ImageBatches("input", images, 16))
    fallback = tensor_ranges(fallback.compute_data())

    assert set(entropy) == set(minmax) == set(fallback)
    assert _differing(fallback, minmax) == []  # the silent MinMax
    assert len(_differing(entropy, minmax)) >= 3, entropy
    assert len(_differing(percentile, minmax)) >= 3, percentile
    for name, (low, high) in minmax.items():
        for method in (entropy, percentile):
            assert low - 1e-6 <= method[name][0] <= method[name][1] <= high + 1e-6


@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel"])
def test_int8_model_runs_and_tracks_fp32(tiny, granularity):
    path, images, folder = tiny
    out = folder / f"int8_{granularity}.onnx"
    done = quantize_onnx(path, out, images, QuantSettings(granularity=granularity, calib_images=32))
    assert done["calib_images_used"] == 32 and done["float_nodes"] == []
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    scales = _weight_scales(out)
    assert len(scales) == 7  # stem + 5 convs + fc
    conv_scales = [s.size for s in scales[:-1]]
    assert (
        all(n == 1 for n in conv_scales)
        if granularity == "per-tensor"
        else all(n > 1 for n in conv_scales)
    )
    reference = run_session(open_session(path), images)
    quantized = run_session(open_session(out), images)
    assert sqnr_db(reference, quantized) > 15.0  # 8-bit: far from noise, far from exact
    assert not np.array_equal(reference, quantized)


def test_keep_first_last_float(tiny):
    path, images, folder = tiny
    out = folder / "int8_fl.onnx"
    done = quantize_onnx(
        path, out, images, QuantSettings(keep_first_last_float=True, calib_images=16)
    )
    assert len(done["float_nodes"]) == 2
    graph = onnx.load(str(out)).graph
    computes = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    initializers = {i.name for i in graph.initializer}
    assert computes[0].input[1] in initializers and computes[-1].input[1] in initializers  # float
    assert all(n.input[1] not in initializers for n in computes[1:-1])  # dequantized int8


def test_calibration_data_of_wrong_shape_is_a_clear_error(tiny):
    path, images, folder = tiny
    with pytest.raises(
        DeployError, match=r"calibration data has shape \[4, 3, 32, 32\].*\[N, 3, 16, 16\]"
    ):
        quantize_onnx(
            path, folder / "x.onnx", np.zeros((4, 3, 32, 32), np.float32), QuantSettings()
        )
    with pytest.raises(DeployError, match="calibration data has shape"):
        calibrate(path, np.zeros((4, 16, 16), np.float32), QuantSettings())


def test_settings_are_validated():
    with pytest.raises(DeployError, match="granularity"):
        QuantSettings(granularity="per-row")
    with pytest.raises(DeployError, match="calibration"):
        QuantSettings(calibration="kl")
    with pytest.raises(DeployError, match="num_bins"):
        QuantSettings(num_bins=128)
