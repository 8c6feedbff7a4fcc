"""ONNX Runtime sessions and latency measurement."""

from tierkit.profile.latency import measure_latency, ort_session

__all__ = ["measure_latency", "ort_session"]
