"""ONNX Runtime sessions, latency, memory and operator profiles under each hardware setting."""

from tierkit.profile.latency import measure_latency, ort_session, setting_session
from tierkit.profile.settings import HardwareSetting, load_settings

__all__ = ["HardwareSetting", "load_settings", "measure_latency", "ort_session", "setting_session"]
