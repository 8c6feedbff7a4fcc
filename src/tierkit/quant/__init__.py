"""Post-training quantization of exported ONNX models: FP16 and calibrated static INT8."""

from tierkit.quant.ptq import calibration_samples, convert_fp16, quantize_int8

__all__ = ["calibration_samples", "convert_fp16", "quantize_int8"]
