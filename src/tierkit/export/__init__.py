"""ONNX export of trained students."""

from tierkit.export.onnx import export_onnx

__all__ = ["export_onnx"]
