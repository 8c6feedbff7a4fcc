"""ONNX files in and out: a module written as a compact single-file model, checked, and scored in ONNX Runtime.

Low in the house because quantization, export and the stages all make and judge ONNX files.
"""

from tierkit.onnxio.verify import max_output_difference, onnx_accuracy
from tierkit.onnxio.write import export_onnx

__all__ = ["export_onnx", "max_output_difference", "onnx_accuracy"]
