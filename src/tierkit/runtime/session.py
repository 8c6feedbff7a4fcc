"""Open the selected variant under its measured settings and run it on a batch."""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from tierkit.runtime.manifest import ManifestError, load_manifest, verify_file
from tierkit.runtime.select import Selection

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _check_model(session: ort.InferenceSession, manifest: dict, path: Path) -> None:
    """Refuse a model whose input or output does not match its manifest, so predict can trust the session's shapes."""
    spec, logits = session.get_inputs()[0], session.get_outputs()[0]
    expected = manifest["input"]
    fixed = [
        (size, want) for size, want in zip(spec.shape[1:], expected["shape"], strict=False) if isinstance(size, int)
    ]
    mismatch = (
        spec.name != expected["name"]
        or len(spec.shape) != len(expected["shape"]) + 1
        or any(size != want for size, want in fixed)
        or (isinstance(logits.shape[-1], int) and logits.shape[-1] != manifest["num_classes"])
    )
    if mismatch:
        recorded = f"{expected['name']!r} [batch, {', '.join(map(str, expected['shape']))}]"
        raise ManifestError(
            f"model takes {spec.name!r} {spec.shape} and returns {logits.shape}, "
            f"but the manifest says {recorded} and {manifest['num_classes']} classes",
            str(path),
            "keep each manifest.json with the model files of its own export, or re-export",
        )


def open_session(manifest_path: str | Path, selection: Selection) -> ort.InferenceSession:
    """An ONNX Runtime session for the selected variant with the recorded providers, threads and optimization level.

    The file is verified against its sha256 first: the manifest's accuracy and latency hold only for that file.
    """
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    path = verify_file(manifest_path.parent, selection.variant)
    setting = selection.setting
    provider = setting["providers"][0]
    if provider not in ort.get_available_providers():
        raise ValueError(
            f"setting {setting['hardware']!r} runs on {provider}, which this onnxruntime build lacks "
            f"(it has {ort.get_available_providers()}). Fix: install the onnxruntime package with {provider}, or "
            "select on the detected device instead of a described one"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = setting["intra_op_num_threads"]
    options.inter_op_num_threads = setting["inter_op_num_threads"]
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, setting["graph_optimization_level"])
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=list(setting["providers"]))
    _check_model(session, manifest, path)
    return session


def predict(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Logits of shape (batch, num_classes); refuses a batch whose shape or dtype the model does not take, an empty
    batch, and samples with NaN or infinite values."""
    spec = session.get_inputs()[0]
    inputs = np.asarray(inputs)
    want = ", ".join(map(str, spec.shape[1:]))
    shape_ok = inputs.ndim == len(spec.shape) and all(
        not isinstance(size, int) or size == got for size, got in zip(spec.shape[1:], inputs.shape[1:], strict=True)
    )
    if not shape_ok:
        fix = "add a batch axis, e.g. x[None]" if inputs.ndim == len(spec.shape) - 1 else f"reshape it to (N, {want})"
        raise ValueError(f"input has shape {inputs.shape}, but the model takes (N, {want}). Fix: {fix}")
    dtype = _NUMPY_TYPES.get(spec.type)
    if dtype is not None and inputs.dtype != dtype:
        name = np.dtype(dtype).name
        raise ValueError(
            f"input has dtype {inputs.dtype}, but the model takes {name}. Fix: convert it with x.astype('{name}')"
        )
    if len(inputs) == 0:
        raise ValueError(f"input is an empty batch, shape {inputs.shape}. Fix: pass at least one sample")
    finite = np.isfinite(inputs.reshape(len(inputs), -1)).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"input sample {int(np.argmin(finite))} holds NaN or infinite values ({int((~finite).sum())} such "
            "samples): the model's answer for them would be meaningless. Fix: clean or drop those samples"
        )
    return session.run(None, {spec.name: inputs})[0]
