"""Export a quantization-aware-trained student as a QDQ ONNX model that ONNX Runtime runs on integer kernels.

Batch norm is folded into the convolutions first (per-channel symmetric weight scales follow the fold
exactly), the fake quantizers become QuantizeLinear/DequantizeLinear pairs with the trained grids, and the
weights are stored as INT8 initializers so the file is a quarter of the float one.
"""

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxscript import ir
from onnxscript import opset18 as op
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tierkit.errors import TierkitError
from tierkit.models.fake_quant import ActivationFakeQuant
from tierkit.models.qat import QuantConv2d, QuantLinear, is_prepared
from tierkit.onnxio.compact import compact_model
from tierkit.onnxio.write import export_onnx


def _onnx_qdq_per_tensor(x: ir.Value, scale: float, zero_point: int) -> ir.Value:
    scale_value = op.Constant(value=ir.tensor(np.array(scale, dtype=np.float32)))
    zero_value = op.Constant(value=ir.tensor(np.array(zero_point, dtype=np.uint8)))
    return op.DequantizeLinear(op.QuantizeLinear(x, scale_value, zero_value), scale_value, zero_value)


def _onnx_qdq_weight(weight: ir.Value, scale: ir.Value) -> ir.Value:
    zero = op.Cast(op.Mul(scale, op.Constant(value_float=0.0)), to=onnx.TensorProto.INT8)
    if scale.shape is not None and scale.shape.rank() == 0:
        return op.DequantizeLinear(op.QuantizeLinear(weight, scale, zero), scale, zero)
    return op.DequantizeLinear(op.QuantizeLinear(weight, scale, zero, axis=0), scale, zero, axis=0)


QDQ_TRANSLATIONS = {
    torch.ops.tierkit.qdq_per_tensor.default: _onnx_qdq_per_tensor,
    torch.ops.tierkit.qdq_weight.default: _onnx_qdq_weight,
}


def fold_batch_norm(model: fx.GraphModule) -> fx.GraphModule:
    """Merge every BatchNorm that only follows a convolution into that convolution (eval-mode statistics)."""
    model = copy.deepcopy(model).eval()
    for node in list(model.graph.nodes):
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv = model.get_submodule(source.target)
        if not isinstance(conv, nn.Conv2d):
            continue
        parent, _, name = source.target.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model,
            name,
            fuse_conv_bn_eval(conv, model.get_submodule(node.target)),
        )
        # The norm's factors, passed for per-tensor QAT, are in the folded weight now.
        source.args = source.args[:1]
        node.replace_all_uses_with(source)
        model.graph.erase_node(node)
    model.graph.eliminate_dead_code()
    model.graph.lint()
    model.recompile()
    return model


def store_int8_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace QuantizeLinear(float initializer) with the quantized INT8 initializer it computes.

    Exporters emit the float weight plus a QuantizeLinear; storing the integers instead makes the file ~4x
    smaller, and the DequantizeLinear that follows is what ONNX Runtime fuses into QLinearConv/QGemm.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    replaced, kept = [], []
    for node in graph.node:
        inputs = list(node.input)
        if node.op_type != "QuantizeLinear" or not all(name in initializers for name in inputs[:3]):
            kept.append(node)
            continue
        weight, scale, zero = (numpy_helper.to_array(initializers[name]) for name in inputs[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[axis] = -1
        info = np.iinfo(zero.dtype)
        quantized = np.clip(np.round(weight / scale.reshape(shape)) + zero.reshape(shape), info.min, info.max)
        graph.initializer.append(numpy_helper.from_array(quantized.astype(zero.dtype), node.output[0]))
        replaced.append(inputs[0])
        for name in inputs:
            users[name] -= 1
    del graph.node[:]
    graph.node.extend(kept)
    unused = {name for name in replaced if users.get(name, 0) == 0}
    remaining = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    return model


def export_qat_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Write a QAT-prepared model as a QDQ ONNX file with INT8 weights; returns the path."""
    if not is_prepared(model):
        raise ValueError("export_qat_onnx needs a model prepared by tierkit.models.qat.prepare_qat")
    unobserved = [name for name, m in model.named_modules() if isinstance(m, ActivationFakeQuant) and not m.initialised]
    if unobserved:
        raise TierkitError(
            f"activation quantizers {', '.join(unobserved)} never saw data, so they have no INT8 range",
            where="QAT export",
            fix="train at least one epoch in the activations stage (callbacks.qat.activations_epoch)",
        )
    folded = fold_batch_norm(model)
    for module in folded.modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            module.weight_quant.freeze_for_export(module.weight)
        elif isinstance(module, ActivationFakeQuant):
            module.freeze_for_export()
    return export_onnx(
        folded,
        path,
        input_shape,
        translations=QDQ_TRANSLATIONS,
        post_process=lambda exported: compact_model(store_int8_weights(exported)),
    )
