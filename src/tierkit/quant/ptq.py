"""FP16 conversion and ONNX Runtime static INT8 quantization with calibration.

INT8 uses the layout ONNX Runtime fuses into integer kernels on x86 (QLinearConv, QGemm):
QDQ format, per-channel signed weights, unsigned activations.
"""

import contextlib
import hashlib
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import torch
from onnxconverter_common import float16
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from tierkit.data.base import ArrayDataModule
from tierkit.errors import TierkitError
from tierkit.onnxio.compact import compact_model
from tierkit.utils.files import atomic_write

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def calibration_samples(
    datamodule: L.LightningDataModule, num_samples: int, batch_size: int, seed: int = 0
) -> np.ndarray:
    """A seeded random subset of the training split (never the test split) for calibration.

    tierkit's own data modules draw it by index; another LightningDataModule gives the first ``num_samples`` of
    its training loader, shuffled under ``seed``.
    """
    datamodule.setup()
    if isinstance(datamodule, ArrayDataModule):
        train = datamodule.splits["train"]
        _require_a_batch(num_samples, batch_size, len(train))
        index = np.random.default_rng(seed).choice(len(train), size=min(num_samples, len(train)), replace=False)
        return torch.stack([train[int(i)][0] for i in np.sort(index)]).numpy()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        taken, available = [], 0
        for batch in datamodule.train_dataloader():
            taken.append(batch[0])
            available += len(batch[0])
            if available >= num_samples:
                break
    _require_a_batch(num_samples, batch_size, available)
    return torch.cat(taken)[:num_samples].numpy()


def _require_a_batch(num_samples: int, batch_size: int, available: int) -> None:
    if num_samples < batch_size or available < batch_size:
        raise TierkitError(
            f"calibration needs at least one batch of {batch_size} samples; asked for {num_samples}, "
            f"the training split has {available}",
            where="calibration.samples",
            fix="raise calibration.samples (e.g. 512) or lower calibration.batch_size",
        )


class CalibrationBatches(CalibrationDataReader):
    """Feeds ``samples`` to ONNX Runtime's calibrator in batches of about ``batch_size``."""

    def __init__(self, samples: np.ndarray, batch_size: int, input_name: str):
        self.batches = iter(np.array_split(samples, max(1, len(samples) // batch_size)))
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def samples_digest(samples: np.ndarray) -> str:
    """Digest of the calibration inputs, so two INT8 files can be told apart by the data they calibrated on."""
    return hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()


# ONNX ops with weights: the layers quantization analysis ranks and mixed precision may leave in float.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def label_layers(model: onnx.ModelProto) -> list[str]:
    """Name every node of ``model`` in place and return the weighted layers' names in graph order.

    Exported files carry no node names (they are compacted), so layers are named by position: ``conv0``, ``conv1``,
    ..., ``gemm6``. The same float file always gives the same names, which is what lets a report's layer name or a
    ``float_layers`` list made from one INT8 run apply to the next.
    """
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in WEIGHTED_OPS:
            node.name = f"{node.op_type.lower()}{len(layers)}"
            layers.append(node.name)
        else:
            node.name = f"{node.op_type.lower()}_n{index}"
    return layers


def first_layer(fp32_path: str | Path) -> list[str]:
    """The name ``label_layers`` gives the first weighted layer of a float file (``conv0``), as a ``float_layers``
    list; empty for a model without weighted layers."""
    return label_layers(onnx.load(str(fp32_path)))[:1]


def prepare_for_quantization(fp32_path: str | Path, out_path: Path) -> list[str]:
    """Write ``fp32_path`` with its layers named and ONNX Runtime's pre-processing applied (shape inference,
    constant folding) to ``out_path``; returns the weighted layers' names."""
    model = onnx.load(str(fp32_path))
    layers = label_layers(model)
    named = out_path.with_name(f"{out_path.stem}-named.onnx")
    onnx.save(model, str(named))
    quant_pre_process(str(named), str(out_path), skip_symbolic_shape=True)
    named.unlink()
    return layers


def float_group(graph: onnx.GraphProto, layers: Sequence[str]) -> list[str]:
    """``layers`` and every node that feeds only them (activation functions, gates, reshapes), back to the
    previous weighted layers.

    Leaving a layer in float only keeps its input unquantized when what computes that input stays float too: a
    SwiGLU gate ``silu(W1 x) * (W3 x)`` quantized on its own would still round the heavy-tailed product before W2.
    """
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.name)
    constants = {init.name for init in graph.initializer}
    group = set(layers)
    frontier = [name for node in graph.node if node.name in group for name in node.input if name not in constants]
    while frontier:
        tensor = frontier.pop()
        producer = producers.get(tensor)
        if producer is None or producer.op_type in WEIGHTED_OPS or producer.name in group:
            continue
        if consumers.get(tensor, set()) <= group:
            group.add(producer.name)
            frontier += [name for name in producer.input if name and name not in constants]
    return [node.name for node in graph.node if node.name in group]


def check_method(method: str) -> None:
    if method not in CALIBRATION_METHODS:
        raise TierkitError(
            f"unknown calibration method {method!r}",
            where="calibration.method",
            fix=f"use one of {', '.join(CALIBRATION_METHODS)}",
        )


def quantize_prepared(
    prepared: Path,
    out_path: Path,
    samples: np.ndarray,
    batch_size: int = 64,
    method: str = "minmax",
    reduce_range: bool = False,
    per_channel: bool = True,
    float_layers: Sequence[str] = (),
    only_layers: Sequence[str] | None = None,
    int16_layers: Sequence[str] = (),
) -> Path:
    """ONNX Runtime's static QDQ quantization of a model from ``prepare_for_quantization``, names kept.

    ``float_layers`` stay in float with the nodes that feed only them (mixed precision, see ``float_group``);
    ``int16_layers`` keep INT8 weights but get 16-bit activations, in and out, with the same nodes;
    ``only_layers``, when given, are the only ones quantized.
    """
    check_method(method)
    graph = onnx.load(str(prepared)).graph
    extra_options = {"CalibTensorRangeSymmetric": False, "QuantizeBias": False}
    if int16_layers:
        extra_options["TensorQuantOverrides"] = {
            tensor: [{"quant_type": QuantType.QUInt16}] for tensor in activation_tensors(graph, int16_layers)
        }
    input_name = graph.input[0].name
    # The histogram calibrators (percentile, entropy) print their progress to stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared),
            str(out_path),
            CalibrationBatches(samples, batch_size, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            nodes_to_exclude=float_group(graph, float_layers) if float_layers else [],
            nodes_to_quantize=list(only_layers or []),
            extra_options=extra_options,
        )
    return out_path


def activation_tensors(graph: onnx.GraphProto, layers: Sequence[str]) -> list[str]:
    """The activations ``layers`` read and write, with those of the nodes that feed only them (``float_group``):
    what 16-bit activations widen. Weights and biases are initializers and stay as they are."""
    group = set(float_group(graph, layers))
    constants = {init.name for init in graph.initializer}
    tensors = {
        name
        for node in graph.node
        if node.name in group
        for name in [*node.input, *node.output]
        if name and name not in constants
    }
    return sorted(tensors)


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    samples: np.ndarray,
    batch_size: int = 64,
    method: str = "minmax",
    reduce_range: bool = False,
    per_channel: bool = True,
    float_layers: Sequence[str] = (),
    int16_layers: Sequence[str] = (),
) -> Path:
    """Static INT8 (QDQ, per-channel weights, uint8 activations) calibrated on ``samples``.

    ``per_channel=False`` gives each weight tensor one scale: a few bytes smaller, but layers whose channels differ
    in range (depthwise convolutions) lose precision. ``float_layers`` (names from ``label_layers``) stay in float,
    with the nodes that feed only them: mixed precision, for the layers whose quantization costs the most accuracy.
    ``int16_layers`` keep INT8 weights and get 16-bit activations instead (the file moves to opset 21): the other
    mixed precision, a smaller file than float layers; ONNX Runtime's CPU kernels compute those layers, and the ones
    writing their 16-bit inputs, in float.

    The quantizer's output is compacted (short names, no metadata, no all-zero weight zero points): for a small student
    that overhead is a third of the file. Biases stay float, as in tierkit's QAT export: ONNX Runtime's
    WeightBiasQuantization turns them into INT32 at load, with the scale (input scale x weight scale) the quantizer
    would have stored and the same values up to one rounding unit, so a stored INT32 copy would only add those
    per-channel scales and a DequantizeLinear per layer.
    """
    check_method(method)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="tierkit-ptq-") as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            layers = prepare_for_quantization(fp32_path, prepared)
            for where, named in (("float_layers", float_layers), ("int16_layers", int16_layers)):
                unknown = sorted(set(named) - set(layers))
                if unknown:
                    raise TierkitError(
                        f"{where} names {unknown}, which {fp32_path} does not have",
                        where=f"quantization.{where}",
                        fix=f"name layers of this model: {', '.join(layers)}",
                    )
            quantize_prepared(
                prepared,
                tmp,
                samples,
                batch_size,
                method,
                reduce_range,
                per_channel,
                float_layers,
                int16_layers=int16_layers,
            )
        onnx.save(compact_model(onnx.load(str(tmp))), str(tmp))
        onnx.checker.check_model(str(tmp))

    return atomic_write(out_path, write)


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """Half-precision weights and compute, float32 inputs and outputs kept for callers."""
    model = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    return atomic_write(out_path, lambda tmp: onnx.save(model, str(tmp)))
