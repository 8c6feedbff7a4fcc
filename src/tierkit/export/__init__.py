"""ONNX export of trained students and its verification."""

from tierkit.export.onnx import export_onnx
from tierkit.export.verify import max_output_difference, onnx_accuracy

__all__ = ["export_onnx", "max_output_difference", "onnx_accuracy"]
