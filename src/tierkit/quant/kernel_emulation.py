"""Run an INT8 ONNX file the way ONNX Runtime computes it on another CPU class.

An INT8 file is judged on the machine that exports it and shipped to others. On x86 without VNNI, ONNX Runtime's
u8×s8 kernels (QLinearConv, QGemm, MatMulIntegerToFloat) add neighbouring products in saturating 16-bit lanes;
elsewhere they are exact. This module reproduces both in numpy, on top of onnx's reference evaluator, so the
accuracy a device will see can be measured on any machine.

The pairing was read off ONNX Runtime 1.32 under an emulated Haswell CPU and is checked by
tests/test_kernel_emulation.py against outputs recorded there: products are paired along the reduction axis in
channels-last order (kernel row, kernel column, input channel), per group; depthwise convolutions (one input and
one output channel per group) use a kernel that accumulates in 32 bits and never saturates.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from tierkit.runtime.cpu import X86_NO_VNNI

DOMAIN = "tierkit.emulation"
INT16_MIN, INT16_MAX = -32768, 32767
U8_MAX = 255
INTEGER_OPS = ("Conv", "Gemm", "MatMul")
REFERENCE_MIN_OPSET = 19


def pair_sums(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Products of u8 activations (..., K) and s8 weights (N, K), added in neighbouring pairs: (..., N, ceil(K/2))."""
    a = activations.astype(np.int64)
    w = weights.astype(np.int64)
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], 1), np.int64)], axis=-1)
        w = np.concatenate([w, np.zeros((w.shape[0], 1), np.int64)], axis=-1)
    products = a[..., None, :] * w
    return products[..., 0::2] + products[..., 1::2]


def saturating_dot(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``activations @ weights.T`` as x86 without VNNI computes it: each pair clipped to int16, then summed."""
    return np.clip(pair_sums(activations, weights), INT16_MIN, INT16_MAX).sum(axis=-1)


def risky_pairs(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(output, pair) indices of weight pairs that some u8 input can push out of int16: the only ones that saturate."""
    w = weights.astype(np.int64)
    if w.shape[1] % 2:
        w = np.concatenate([w, np.zeros((w.shape[0], 1), np.int64)], axis=1)
    positive = np.maximum(w[:, 0::2], 0) + np.maximum(w[:, 1::2], 0)
    negative = np.minimum(w[:, 0::2], 0) + np.minimum(w[:, 1::2], 0)
    return np.nonzero((U8_MAX * positive > INT16_MAX) | (U8_MAX * negative < INT16_MIN))


def integer_matmul(activations: np.ndarray, weights: np.ndarray, saturate: bool, block: int = 8192) -> np.ndarray:
    """``activations @ weights.T`` over raw u8 and s8 integers, exact or as x86 without VNNI computes it.

    The exact product is one float64 matmul (exact for these magnitudes). Saturation only changes the pairs
    ``risky_pairs`` finds, so only those are recomputed, ``block`` rows at a time, in float32 (exact: a pair's sum
    is below 2**17), and added up per output.
    """
    out = activations.astype(np.float64) @ weights.T.astype(np.float64)
    rows, pairs = risky_pairs(weights) if saturate else (np.empty(0, int), np.empty(0, int))
    if not len(rows):
        return out
    w = weights.astype(np.float32)
    k = w.shape[1]
    first_index, second_index = 2 * pairs, np.minimum(2 * pairs + 1, k - 1)
    first_weight = w[rows, first_index]
    second_weight = np.where(2 * pairs + 1 < k, w[rows, second_index], 0).astype(np.float32)
    outputs, starts = np.unique(rows, return_index=True)  # risky_pairs lists them grouped by output, in order
    first_weight, second_weight = first_weight[:, None], second_weight[:, None]
    for start in range(0, len(activations), block):
        columns = np.ascontiguousarray(activations[start : start + block].T, dtype=np.float32)  # (K, rows)
        sums = columns[first_index]
        sums *= first_weight
        second = columns[second_index]
        second *= second_weight
        sums += second
        correction = np.clip(sums, INT16_MIN, INT16_MAX, out=second)
        correction -= sums
        out[start : start + block, outputs] += np.add.reduceat(correction, starts, axis=0).T
    return out


def _channels_last_patches(x: np.ndarray, kernel: tuple[int, int], strides, dilations) -> np.ndarray:
    """(B, OH, OW, kh·kw·C) patches of a padded (B, C, H, W) input, in the order ONNX Runtime reduces over."""
    kh, kw = kernel
    _, _, height, width = x.shape
    out_h = (height - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (width - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    taps = [
        x[
            :,
            :,
            i * dilations[0] : i * dilations[0] + strides[0] * (out_h - 1) + 1 : strides[0],
            j * dilations[1] : j * dilations[1] + strides[1] * (out_w - 1) + 1 : strides[1],
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps, axis=1).transpose(0, 3, 4, 1, 2).reshape(x.shape[0], out_h, out_w, -1)


def _per_output(scale: np.ndarray, count: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (count,))


class IntegerConv(OpRun):
    """QLinearConv's arithmetic: u8 input (padded with its zero point) times s8 weight, float scales and bias."""

    op_domain = DOMAIN

    def _run(
        self,
        xq,
        x_scale,
        x_zero,
        wq,
        w_scale,
        bias=None,
        group=1,
        pads=None,
        strides=None,
        dilations=None,
        kernel_shape=None,
        saturate=0,
    ):
        if wq.ndim == 3:  # a 1-D convolution is the 2-D one on a height-1 input (ONNX Runtime computes it so)
            (y,) = self._run(
                xq[:, :, None],
                x_scale,
                x_zero,
                wq[:, :, None],
                w_scale,
                bias,
                group,
                [0, pads[0], 0, pads[1]] if pads else None,
                [1, *strides] if strides else None,
                [1, *dilations] if dilations else None,
                None,
                saturate,
            )
            return (y[:, :, 0],)
        out_channels, group_channels, kh, kw = wq.shape
        pads = pads or [0, 0, 0, 0]
        strides, dilations = strides or [1, 1], dilations or [1, 1]
        zero = int(np.asarray(x_zero).reshape(-1)[0]) if x_zero is not None else 0
        x = np.pad(
            xq.astype(np.int64),
            ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
            constant_values=zero,
        )
        per_group = out_channels // group
        depthwise = group_channels == 1 and per_group == 1
        outputs = []
        for g in range(group):
            patches = _channels_last_patches(
                x[:, g * group_channels : (g + 1) * group_channels], (kh, kw), strides, dilations
            )
            weights = wq[g * per_group : (g + 1) * per_group].transpose(0, 2, 3, 1).reshape(per_group, -1)
            flat = patches.reshape(-1, patches.shape[-1])
            acc = integer_matmul(flat, weights, bool(saturate) and not depthwise)
            acc -= zero * weights.astype(np.int64).sum(axis=1)
            outputs.append(acc.reshape(*patches.shape[:3], per_group))
        acc = np.concatenate(outputs, axis=-1).transpose(0, 3, 1, 2)
        scale = float(np.asarray(x_scale)) * _per_output(w_scale, out_channels)
        y = acc * scale.reshape(1, -1, 1, 1)
        if bias is not None:
            y = y + bias.reshape(1, -1, 1, 1)
        return (y.astype(np.float32),)


class IntegerGemm(OpRun):
    """QGemm / MatMulIntegerToFloat arithmetic for ``x @ W`` (MatMul) or ``x @ W.T`` (Gemm with transB)."""

    op_domain = DOMAIN

    def _run(self, xq, x_scale, x_zero, wq, w_scale, bias=None, trans_b=0, saturate=0):
        weights = wq if trans_b else wq.T  # (N, K)
        zero = int(np.asarray(x_zero).reshape(-1)[0]) if x_zero is not None else 0
        flat = xq.reshape(-1, xq.shape[-1]).astype(np.int64)
        acc = integer_matmul(flat, weights, bool(saturate))
        acc -= zero * weights.astype(np.int64).sum(axis=1)
        y = acc * (float(np.asarray(x_scale)) * _per_output(w_scale, weights.shape[0]))
        if bias is not None:
            y = y + bias
        return (y.reshape(*xq.shape[:-1], weights.shape[0]).astype(np.float32),)


class MaxPool(OpRun):
    """MaxPool over (B, C, H, W) with numpy windows: the reference evaluator's loops over pixels are far too slow."""

    def _run(
        self,
        x,
        auto_pad=None,
        ceil_mode=0,
        dilations=None,
        kernel_shape=None,
        pads=None,
        storage_order=0,
        strides=None,
    ):
        if x.ndim == 3:  # 1-D windows as 2-D ones of height 1
            (y,) = self._run(
                x[:, :, None],
                auto_pad,
                ceil_mode,
                dilations and [1, *dilations],
                [1, *kernel_shape],
                pads and [0, pads[0], 0, pads[1]],
                storage_order,
                strides and [1, *strides],
            )
            return (y[:, :, 0],)
        if (auto_pad not in (None, "NOTSET")) or (dilations and set(dilations) != {1}) or x.ndim != 4:
            raise NotImplementedError("emulated MaxPool handles 1-D and 2-D windows with explicit pads only")
        kernel, strides = list(kernel_shape), list(strides or [1, 1])
        pads = list(pads or [0, 0, 0, 0])
        for axis in range(2):  # ceil_mode: one more window where the last one would run past the edge
            size = x.shape[2 + axis] + pads[axis] + pads[axis + 2]
            steps = (size - kernel[axis]) / strides[axis]
            outputs = int(np.ceil(steps) if ceil_mode else np.floor(steps)) + 1
            pads[axis + 2] += max(0, (outputs - 1) * strides[axis] + kernel[axis] - size)
        fill = np.finfo(x.dtype).min if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
        padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
        windows = np.lib.stride_tricks.sliding_window_view(padded, tuple(kernel), axis=(2, 3))
        return (windows[:, :, :: strides[0], :: strides[1]].max(axis=(-2, -1)),)


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        types[info.name] = info.type.tensor_type.elem_type
    return types


def _attribute(node: onnx.NodeProto, name: str, default=None):
    attribute = next((a for a in node.attribute if a.name == name), None)
    return default if attribute is None else helper.get_attribute_value(attribute)


def integer_layers(model: onnx.ModelProto) -> list[tuple[int, onnx.NodeProto, onnx.NodeProto]]:
    """(layer's node index, input DequantizeLinear, weight DequantizeLinear) of every layer on u8×s8 kernels."""
    types = _element_types(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {init.name for init in model.graph.initializer}
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in INTEGER_OPS or len(node.input) < 2:
            continue
        source, weight = producers.get(node.input[0]), producers.get(node.input[1])
        if not (source and weight and source.op_type == weight.op_type == "DequantizeLinear"):
            continue
        if types.get(source.input[0]) != onnx.TensorProto.UINT8:
            continue
        if weight.input[0] not in initializers or types.get(weight.input[0]) != onnx.TensorProto.INT8:
            continue
        if node.op_type == "Gemm" and (_attribute(node, "transA", 0) or _attribute(node, "alpha", 1.0) != 1.0):
            continue
        layers.append((index, source, weight))
    return layers


def weight_bits(path: str | Path) -> int:
    """Bits the INT8 weights of a file use: 7 when every weight lies in −64…64 (ONNX Runtime's reduced range, where
    two products of 255 still fit in int16), else 8."""
    model = onnx.load(str(path))
    weights = {layer[2].input[0] for layer in integer_layers(model)}
    values = [numpy_helper.to_array(init) for init in model.graph.initializer if init.name in weights]
    if not values:
        raise ValueError(f"{path} has no layer on integer kernels, so it has no INT8 weights")
    low = min(int(v.min()) for v in values)
    high = max(int(v.max()) for v in values)
    return 7 if low >= -64 and high <= 64 else 8


def emulating_model(model: onnx.ModelProto, saturate: bool) -> onnx.ModelProto:
    """The same graph with every u8×s8 layer replaced by its integer emulation."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    replacements = {}
    for index, source, weight in integer_layers(model):
        node = model.graph.node[index]
        x_zero = source.input[2] if len(source.input) > 2 else ""
        w_scale = weight.input[1]
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        inputs = [source.input[0], source.input[1], x_zero, weight.input[0], w_scale, *bias]
        if node.op_type == "Conv":
            attributes = {
                name: _attribute(node, name)
                for name in ("group", "pads", "strides", "dilations", "kernel_shape")
                if _attribute(node, name) is not None
            }
            replacement = helper.make_node(
                "IntegerConv", inputs, list(node.output), domain=DOMAIN, saturate=int(saturate), **attributes
            )
        else:
            trans_b = _attribute(node, "transB", 0) if node.op_type == "Gemm" else 0
            replacement = helper.make_node(
                "IntegerGemm", inputs, list(node.output), domain=DOMAIN, saturate=int(saturate), trans_b=trans_b
            )
        replacements[index] = replacement
    nodes = [replacements.get(index, node) for index, node in enumerate(model.graph.node)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            # The reference evaluator only implements QuantizeLinear/DequantizeLinear from opset 19 on; the
            # integer ops a QDQ file uses mean the same from opset 13 on.
            opset.version = max(opset.version, REFERENCE_MIN_OPSET)
    return model


class _Input:
    def __init__(self, name: str):
        self.name = name


class EmulatedSession:
    """An INT8 file run as ONNX Runtime runs it on ``cpu_class``, with the ``run``/``get_inputs`` calls of a session.

    Slow next to ONNX Runtime (numpy, one layer at a time): for measuring accuracy, never for timing.
    """

    def __init__(self, path: str | Path, cpu_class: str, chunk: int = 64):
        model = onnx.load(str(path))
        if not integer_layers(model):
            raise ValueError(f"{path} has no layer on integer kernels: there is nothing to emulate")
        self.cpu_class = cpu_class
        self.chunk = chunk
        self._evaluator = ReferenceEvaluator(
            emulating_model(model, saturate=cpu_class == X86_NO_VNNI), new_ops=[IntegerConv, IntegerGemm, MaxPool]
        )
        self._inputs = [_Input(name) for name in self._evaluator.input_names]

    def get_inputs(self) -> list[_Input]:
        return self._inputs

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (name, batch), *_ = feeds.items()
        parts = [
            self._evaluator.run(output_names, {name: batch[start : start + self.chunk]})
            for start in range(0, len(batch), self.chunk)
        ]
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]
