"""NNCF's post-training INT8 recipes, run in OpenVINO's runtime: the Intel toolchain a user would pick instead.

Both recipes take the teacher's FP32 ONNX file as NNCF's documentation shows for ONNX models, with NNCF's
defaults: ``nncf.quantize`` on calibration samples from the training split, and
``nncf.quantize_with_accuracy_control``, which keeps layers in float until the validation split's accuracy is within
``max_drop`` of the float model's. Their files run in OpenVINO with f32 inference precision (on AMX CPUs it would
otherwise pick bf16), so accuracy and latency are those of the toolchain, not of ONNX Runtime.
"""

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import nncf
import numpy as np
import onnx
import openvino as ov

CORE = ov.Core()


def _input_name(model: onnx.ModelProto) -> str:
    return model.graph.input[0].name


def _calibration(samples: np.ndarray, input_name: str, batch_size: int = 1) -> nncf.Dataset:
    batches = np.array_split(samples, max(1, len(samples) // batch_size))
    return nncf.Dataset(batches, lambda batch: {input_name: batch})


def nncf_int8(fp32_path: Path, out_path: Path, samples: np.ndarray) -> Path:
    """``nncf.quantize`` with its defaults (mixed preset, 300 calibration samples at most), saved as ONNX."""
    model = onnx.load(str(fp32_path))
    quantized = nncf.quantize(model, _calibration(samples, _input_name(model)))
    onnx.save(quantized, str(out_path))
    return out_path


def _split_items(datamodule: L.LightningDataModule, split: str) -> list[tuple[np.ndarray, int]]:
    """Every image of ``split`` as a batch of one with its label: NNCF ranks layers by per-item scores."""
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    return [(x[None].numpy(), int(y)) for inputs, labels, *_ in loader for x, y in zip(inputs, labels, strict=True)]


def _accuracy_of_proto(model: onnx.ModelProto, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
    """What ``quantize_with_accuracy_control`` asks of a validation function: the metric and per-item scores."""
    compiled = compiled_model(CORE.read_model(model.SerializeToString()), threads=0)
    output = compiled.output(0)
    scores = [float(compiled(x)[output].argmax() == y) for x, y in items]
    return float(np.mean(scores)), scores


def nncf_int8_accuracy_control(
    fp32_path: Path, out_path: Path, samples: np.ndarray, datamodule: L.LightningDataModule, max_drop: float
) -> Path:
    """``nncf.quantize_with_accuracy_control`` with an absolute ``max_drop`` (0.01 = 1 point) on the validation
    split, saved as ONNX."""
    model = onnx.load(str(fp32_path))
    validation = nncf.Dataset(_split_items(datamodule, "val"), lambda item: {_input_name(model): item[0]})
    quantized = nncf.quantize_with_accuracy_control(
        model,
        _calibration(samples, _input_name(model)),
        validation,
        validation_fn=_accuracy_of_proto,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
    )
    onnx.save(quantized, str(out_path))
    return out_path


def compiled_model(model: str | Path | ov.Model, threads: int) -> ov.CompiledModel:
    """OpenVINO on the CPU for batch-1 latency, in f32; ``threads`` 0 lets OpenVINO choose."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return CORE.compile_model(model if isinstance(model, ov.Model) else str(model), "CPU", config)


def openvino_probe(compiled: ov.CompiledModel, batch: np.ndarray) -> Callable[[], float]:
    """A closure that runs one inference in OpenVINO and returns its wall time in milliseconds."""
    request = compiled.create_infer_request()

    def run_once() -> float:
        started = time.perf_counter()
        request.infer({0: batch})
        return 1000 * (time.perf_counter() - started)

    return run_once


def openvino_accuracy(path: Path, datamodule: L.LightningDataModule, split: str = "test") -> float:
    """Accuracy of an ONNX file run in OpenVINO on the datamodule's ``split``, batch by batch."""
    compiled = compiled_model(path, threads=0)
    request = compiled.create_infer_request()
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    correct = total = 0
    for inputs, labels, *_ in loader:
        logits = request.infer({0: inputs.numpy()})[compiled.output(0)]
        correct += int((logits.argmax(1) == labels.numpy()).sum())
        total += len(labels)
    return correct / total
