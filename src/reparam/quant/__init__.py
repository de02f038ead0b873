"""Deployment of fused models: ONNX export checked in ONNX Runtime (:mod:`reparam.quant.onnx`),
INT8 post-training quantization of an ONNX file with ONNX Runtime (:mod:`reparam.quant.ort`) and
torchao's PT2E quantization of a torch model (:mod:`reparam.quant.pt2e`).

The submodules import their optional dependencies (``onnx``, ``onnxruntime``, ``torchao``), so
this package face imports none of them.
"""
