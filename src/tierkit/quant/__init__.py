"""Quantization: post-training FP16/INT8 of ONNX models, and quantization-aware training with QDQ export."""

from tierkit.quant.callback import QuantizationAwareTraining
from tierkit.quant.ptq import calibration_samples, convert_fp16, quantize_int8

__all__ = ["QuantizationAwareTraining", "calibration_samples", "convert_fp16", "quantize_int8"]
