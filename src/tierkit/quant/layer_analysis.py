"""Which layer breaks INT8: per-layer signal-to-quantization-noise ratios and accuracy effects.

For every weighted layer (Conv, Gemm, MatMul) of a float model quantized as tierkit quantizes it:
- weight SQNR: the float weights against their INT8 round trip;
- output SQNR: the layer's output in the INT8 model against the float model's, on calibration samples (it carries
  the error of every layer before it, which is how a user meets it);
- drop when quantized alone: validation accuracy lost when only this layer is INT8;
- gain when left in float: validation accuracy won back when every layer but this one is INT8.
The last one is what mixed precision acts on: the layers that win most back are the ones worth keeping in float.
SQNRs come from ONNX Runtime's own QDQ debugging tools (``qdq_loss_debug``), run unfused, as those tools run.
"""

import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization.qdq_loss_debug import (
    compute_weight_error,
    create_weight_matching,
    modify_model_output_intermediate_tensors,
)
from rich.progress import track
from torch import nn

from tierkit.errors import TierkitError
from tierkit.onnxio import onnx_accuracy
from tierkit.quant.ptq import WEIGHTED_OPS, prepare_for_quantization, quantize_prepared

ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Mul"}
DEQUANTIZED_SUFFIX = "_DequantizeLinear_Output"
# Outputs added by modify_model_output_intermediate_tensors end in this suffix.
SAVED_SUFFIX = "_ReshapedSavedOutput"


@dataclass
class LayerSensitivity:
    """One weighted layer's quantization error and its effect on validation accuracy (fractions, not points)."""

    layer: str
    op_type: str
    weight_shape: list[int]
    module: str | None = None
    weight_sqnr_db: float | None = None
    output_sqnr_db: float | None = None
    drop_alone: float | None = None
    gain_left_float: float | None = None


@dataclass
class SensitivityReport:
    """Every weighted layer of one model, and the accuracies the effects are counted from."""

    model: str
    float_val_acc: float
    int8_val_acc: float
    settings: dict[str, Any]
    layers: list[LayerSensitivity] = field(default_factory=list)
    # An INT8 file the analysis was asked about, and its own validation accuracy (it may have been made otherwise).
    int8_file: str | None = None
    int8_file_val_acc: float | None = None

    def ranked(self) -> list[LayerSensitivity]:
        """Most sensitive first: the larger of the accuracy a layer costs alone and the accuracy it wins back in
        float, then the lowest output SQNR (which alone orders layers when accuracy effects were not measured)."""

        def key(entry: LayerSensitivity) -> tuple[float, float]:
            effect = max(entry.drop_alone or 0.0, entry.gain_left_float or 0.0)
            return -effect, entry.output_sqnr_db if entry.output_sqnr_db is not None else math.inf

        return sorted(self.layers, key=key)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ranking"] = [entry.layer for entry in self.ranked()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityReport":
        """A report read back from its JSON file (the ranking is recomputed, not read)."""
        fields = {key: value for key, value in data.items() if key not in ("layers", "ranking")}
        return cls(**fields, layers=[LayerSensitivity(**entry) for entry in data["layers"]])


def quiet_session(path: Path, optimization: str = "ORT_ENABLE_ALL") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-noise ratio in decibels from summed squares; an exact match is capped at 200 dB."""
    if noise_power <= 0:
        return 200.0
    return 10 * math.log10(max(signal_power, 1e-30) / noise_power)


def weighted_layers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [node for node in graph.node if node.op_type in WEIGHTED_OPS]


def layer_outputs(graph: onnx.GraphProto, node: onnx.NodeProto, hops: int = 3) -> list[str]:
    """The layer's output, then the outputs of the activation functions that follow it alone.

    The quantizer drops the Relu/Clip after a layer (the INT8 kernel clamps instead), so a layer's output may exist
    in the INT8 model only after its activation.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for other in graph.node:
        for name in other.input:
            consumers.setdefault(name, []).append(other)
    names = [node.output[0]]
    for _ in range(hops):
        following = consumers.get(names[-1], [])
        if len(following) != 1 or following[0].op_type not in ACTIVATIONS:
            break
        names.append(following[0].output[0])
    return names


def weight_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    return {node.name: shapes.get(node.input[1], []) for node in weighted_layers(graph)}


def output_sqnrs(float_path: Path, int8_path: Path, samples: np.ndarray, batch_size: int) -> dict[str, float]:
    """SQNR of every float tensor the two models share, accumulated over ``samples`` batch by batch."""
    sums: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tierkit-sqnr-") as scratch:
        sessions = []
        for name, path in (("float", float_path), ("int8", int8_path)):
            augmented = Path(scratch) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            sessions.append(quiet_session(augmented, "ORT_DISABLE_ALL"))
        input_name = sessions[0].get_inputs()[0].name
        for batch in np.array_split(samples, max(1, len(samples) // batch_size)):
            outputs = []
            for session in sessions:
                names = [out.name for out in session.get_outputs()]
                values = dict(zip(names, session.run(None, {input_name: batch}), strict=True))
                outputs.append({n[: -len(SAVED_SUFFIX)]: v for n, v in values.items() if n.endswith(SAVED_SUFFIX)})
            reference, quantized = outputs[0], after_dequantization(outputs[1])
            for tensor in reference.keys() & quantized.keys():
                signal, noise = sums.setdefault(tensor, [0.0, 0.0])
                difference = reference[tensor].astype(np.float64) - quantized[tensor]
                sums[tensor] = [
                    signal + float(np.square(reference[tensor], dtype=np.float64).sum()),
                    noise + float(np.square(difference).sum()),
                ]
    return {tensor: sqnr_db(signal, noise) for tensor, (signal, noise) in sums.items()}


def after_dequantization(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An INT8 model's tensors as the next layer sees them: a quantized tensor's value after its DequantizeLinear.

    Where the quantizer folded an activation into the INT8 kernel, the layer's raw output carries the activation's
    name, and only the dequantized value has the activation applied (the uint8 range clamps it).
    """
    seen = dict(values)
    for name, value in values.items():
        if name.endswith(DEQUANTIZED_SUFFIX):
            seen[name[: -len(DEQUANTIZED_SUFFIX)]] = value
    return seen


def weight_sqnrs(prepared: Path, int8_path: Path) -> dict[str, float]:
    """SQNR of each quantized weight tensor, keyed by its float name (ONNX Runtime's matching and formula)."""
    return compute_weight_error(create_weight_matching(str(prepared), str(int8_path)))


def torch_module_names(model: nn.Module, shapes: dict[str, list[int]]) -> dict[str, str]:
    """The PyTorch module behind each ONNX layer, when the model's Conv/Linear modules line up with the graph's
    weighted layers one to one in order and shape (true of feed-forward models); otherwise nothing."""
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]
    if len(modules) != len(shapes):
        return {}
    names = {}
    for (layer, shape), (module_name, module) in zip(shapes.items(), modules, strict=True):
        if sorted(shape) != sorted(module.weight.shape):
            return {}
        names[layer] = module_name
    return names


def analyse_layers(
    fp32_path: Path,
    datamodule: L.LightningDataModule,
    samples: np.ndarray,
    batch_size: int = 64,
    method: str = "minmax",
    reduce_range: bool = False,
    per_channel: bool = True,
    accuracy_effects: bool = True,
    module: nn.Module | None = None,
    show_progress: bool = True,
) -> SensitivityReport:
    """Quantize ``fp32_path`` as tierkit does and measure every weighted layer (see the module's docstring).

    ``samples`` calibrate and feed the SQNRs; accuracies are on the validation split. With ``accuracy_effects``
    each layer is quantized twice more (alone, and left out), which is most of the cost.
    """
    settings = {"method": method, "reduce_range": reduce_range, "per_channel": per_channel, "samples": len(samples)}
    with tempfile.TemporaryDirectory(prefix="tierkit-sensitivity-") as scratch:
        folder = Path(scratch)
        prepared = folder / "prepared.onnx"
        layers = prepare_for_quantization(fp32_path, prepared)
        if not layers:
            raise TierkitError(
                f"{fp32_path} has no Conv, Gemm or MatMul layer, so there is nothing to quantize or rank",
                where=str(fp32_path),
                fix="pass a model with convolution or linear layers",
            )

        def quantize(name: str, **layer_choice: Sequence[str]) -> Path:
            return quantize_prepared(
                prepared,
                folder / f"{name}.onnx",
                samples,
                batch_size,
                method,
                reduce_range,
                per_channel,
                **layer_choice,
            )

        def val_acc(path: Path) -> float:
            return onnx_accuracy(quiet_session(path), datamodule, "val")

        int8 = quantize("int8")
        report = SensitivityReport(
            model=str(fp32_path), float_val_acc=val_acc(prepared), int8_val_acc=val_acc(int8), settings=settings
        )
        graph = onnx.load(str(prepared)).graph
        shapes = weight_shapes(graph)
        modules = torch_module_names(module, shapes) if module is not None else {}
        weights = weight_sqnrs(prepared, int8)
        outputs = output_sqnrs(prepared, int8, samples, batch_size)
        for node in weighted_layers(graph):
            report.layers.append(
                LayerSensitivity(
                    layer=node.name,
                    op_type=node.op_type,
                    weight_shape=shapes[node.name],
                    module=modules.get(node.name),
                    weight_sqnr_db=weights.get(node.input[1]),
                    output_sqnr_db=next((outputs[t] for t in layer_outputs(graph, node) if t in outputs), None),
                )
            )
        if accuracy_effects:
            for entry in track(report.layers, "INT8 sensitivity, layer by layer", disable=not show_progress):
                alone = val_acc(quantize(f"alone-{entry.layer}", only_layers=[entry.layer]))
                left_out = val_acc(quantize(f"float-{entry.layer}", float_layers=[entry.layer]))
                entry.drop_alone = report.float_val_acc - alone
                entry.gain_left_float = left_out - report.int8_val_acc
    return report
