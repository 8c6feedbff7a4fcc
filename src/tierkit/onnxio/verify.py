"""Check an exported model: does ONNX Runtime compute what PyTorch did, and how accurate is it there?"""

import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tierkit.errors import TierkitError


def max_output_difference(model: nn.Module, session: ort.InferenceSession, inputs: torch.Tensor) -> float:
    """Largest absolute logit difference between PyTorch and ONNX Runtime on ``inputs``."""
    with torch.no_grad():
        expected = model.eval()(inputs).numpy()
    actual = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    return float(np.abs(actual - expected).max())


def onnx_accuracy(session: ort.InferenceSession, datamodule: L.LightningDataModule, split: str = "test") -> float:
    """Accuracy of the ONNX model on the datamodule's ``val`` or ``test`` split, run in ONNX Runtime."""
    datamodule.setup()
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    name = session.get_inputs()[0].name
    correct = total = 0
    for batch in loader:
        inputs, labels = batch[0], batch[1]
        logits = session.run(None, {name: inputs.numpy()})[0]
        correct += int((logits.argmax(1) == labels.numpy()).sum())
        total += len(labels)
    return correct / total


# ONNX Runtime fuses a float Conv/Gemm/MatMul with its activation into these contrib ops: still float compute.
FLOAT_COMPUTE_OPS = {
    "Conv",
    "Gemm",
    "MatMul",
    "ConvTranspose",
    "FusedConv",
    "FusedGemm",
    "FusedMatMul",
    "NhwcFusedConv",
}


def float_compute_ops(session_path: str | Path) -> list[str]:
    """Float Conv/Gemm/MatMul nodes left after ONNX Runtime's graph optimizations.

    An INT8 model that still has them runs those layers in float: the quantization did not take.
    """
    with tempfile.TemporaryDirectory(prefix="tierkit-optimized-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(session_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    return [node.op_type for node in graph.node if node.op_type in FLOAT_COMPUTE_OPS]


def check_onnx(path: str | Path) -> Path:
    """Refuse a file that breaks the ONNX spec (onnx.checker with shape inference) before anything measures it."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TierkitError(
            f"{path} is not a valid ONNX model: {str(exc).splitlines()[0]}",
            where=str(path),
            fix="report this model: the converter that wrote it produced an invalid graph",
        ) from exc
    return Path(path)
