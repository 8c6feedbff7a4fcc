"""Make an ONNX file small without changing what it computes.

In an 18k-parameter INT8 student the weights are 18 KB, and exporters and quantizers add another 13 KB:
long tensor and node names repeated at every use, per-channel zero points that are all zeros, debug
metadata, default-valued attributes and opset imports nothing uses. Each step here removes one of those
and keeps the graph's inputs, outputs and arithmetic as they are, so ONNX Runtime still fuses the same
integer kernels.
"""

import itertools
import string
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

# C90 identifiers, as the ONNX IR asks of names: a letter or underscore first, then letters, digits, underscores.
_FIRST_CHARS = string.ascii_letters + "_"
_NEXT_CHARS = string.ascii_letters + string.digits + "_"


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in its nodes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _graphs(subgraph)


def strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node stack traces and inferred shapes: they can be a fifth of a small model's
    file, and they embed this machine's source paths. ONNX Runtime re-infers shapes when it loads."""
    for graph in _graphs(model.graph):
        for node in graph.node:
            del node.metadata_props[:]
            node.ClearField("doc_string")
        del graph.value_info[:]
    return model


def compact_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``model`` in place into its smallest equivalent form and return it.

    Graph input and output names, the computation and the stored values are kept; names of everything
    in between, debug metadata and redundant constants are not.
    """
    strip_debug_info(model)
    drop_metadata(model)
    drop_unused_opsets(model)
    drop_default_attributes(model)
    drop_implied_attributes(model)
    drop_constant_zero_points(model)
    share_identical_initializers(model)
    drop_unused_initializers(model)
    shorten_names(model)
    return model


def drop_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Node names, doc strings and key/value metadata left by the exporter and quantizer (in a small student the
    torch exporter's graph signature alone is 3 KB): bookkeeping that no runtime reads."""
    del model.metadata_props[:]
    model.ClearField("doc_string")
    for graph in _graphs(model.graph):
        graph.ClearField("doc_string")
        del graph.metadata_props[:]
        for value in itertools.chain(graph.input, graph.output):
            del value.metadata_props[:]
            value.ClearField("doc_string")
        for node in graph.node:
            node.ClearField("name")
    return model


def drop_unused_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opset imports of domains no node uses (quantizers import eight); the default domain always stays."""
    used = {""} | {node.domain for graph in _graphs(model.graph) for node in graph.node}
    used |= {node.domain for function in model.functions for node in function.node}
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def drop_default_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attributes set to the default their operator's schema declares (group=1, auto_pad=NOTSET, alpha=1, ...):
    runtimes fill those in themselves. Operators without a known schema keep all theirs."""
    versions = {opset.domain: opset.version for opset in model.opset_import}
    for graph in _graphs(model.graph):
        for node in graph.node:
            try:
                schema = onnx.defs.get_schema(node.op_type, versions[node.domain], node.domain)
            except (KeyError, onnx.defs.SchemaError):
                continue
            kept = [attribute for attribute in node.attribute if not _is_default(attribute, schema)]
            del node.attribute[:]
            node.attribute.extend(kept)
    return model


def _is_default(attribute: onnx.AttributeProto, schema: onnx.defs.OpSchema) -> bool:
    declared = schema.attributes.get(attribute.name)
    if declared is None or declared.default_value.type != attribute.type:
        return False
    return onnx.helper.get_attribute_value(attribute) == onnx.helper.get_attribute_value(declared.default_value)


# Attributes of convolutions and pools whose absence the ONNX spec defines as these values, though the operator
# schemas declare no default (so drop_default_attributes keeps them).
_IMPLIED_VALUES = {"strides": 1, "dilations": 1, "pads": 0}
_WINDOW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool"}


def drop_implied_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Strides and dilations of 1, pads of 0, and a Conv's kernel_shape when it is its stored weight's: what the
    spec assumes when they are absent (it infers kernel_shape from the weight). Exporters write all four on every
    layer, 15-20 bytes each, as much as a small layer's per-channel scales."""
    for graph in _graphs(model.graph):
        weight_dims = {init.name: list(init.dims) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in weight_dims:
                weight_dims[node.output[0]] = weight_dims[node.input[0]]
        for node in graph.node:
            if node.domain or node.op_type not in _WINDOW_OPS:
                continue
            kernel = weight_dims.get(node.input[1], [])[2:] if node.op_type == "Conv" else []
            kept = [attribute for attribute in node.attribute if not _is_implied(attribute, kernel)]
            del node.attribute[:]
            node.attribute.extend(kept)
    return model


def _is_implied(attribute: onnx.AttributeProto, kernel: list[int]) -> bool:
    if attribute.name == "kernel_shape":
        return bool(kernel) and list(attribute.ints) == kernel
    return attribute.name in _IMPLIED_VALUES and set(attribute.ints) == {_IMPLIED_VALUES[attribute.name]}


def drop_constant_zero_points(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove all-zero zero points of DequantizeLinear nodes that dequantize a stored bias or Conv weight.

    A missing zero point means zero in the stored tensor's type, so the result is the same, and ONNX Runtime
    (1.32) still fuses these into QLinearConv/QGemm. A Gemm weight without one stays float in ONNX Runtime, so
    weights of any op but Conv keep theirs. Activation Q/DQ pairs keep theirs too: ONNX Runtime matches the
    pair's zero points, and a QuantizeLinear without one would switch to uint8.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        stored, zero_point = initializers.get(node.input[0]), initializers.get(node.input[2])
        if stored is None or zero_point is None or numpy_helper.to_array(zero_point).any():
            continue
        is_bias = stored.data_type == onnx.TensorProto.INT32
        if is_bias or consumers.get(node.output[0]) == {"Conv"}:
            del node.input[2]
    return model


def share_identical_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Point every use of a duplicated constant (same type, shape and values) at its first copy.

    Initializers that are also graph inputs can be overridden by the caller, so they are never merged.
    """
    graph = model.graph
    overridable = {value.name for value in graph.input}
    first_by_content: dict[tuple, str] = {}
    replacement: dict[str, str] = {}
    for init in graph.initializer:
        if init.name in overridable or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), np.ascontiguousarray(values).tobytes())
        first = first_by_content.setdefault(key, init.name)
        if first != init.name:
            replacement[init.name] = first
    for subgraph in _graphs(graph):
        for node in subgraph.node:
            for index, name in enumerate(node.input):
                node.input[index] = replacement.get(name, name)
    return model


def drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Initializers no node or graph output reads any more (left behind by the steps above)."""
    graph = model.graph
    used = {name for subgraph in _graphs(graph) for node in subgraph.node for name in node.input}
    used |= {value.name for value in itertools.chain(graph.input, graph.output)}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _short_names(reserved: set[str]) -> Iterator[str]:
    """``a``, ``b``, ..., ``_``, ``aa``, ``ab``, ...: the shortest valid identifiers, skipping ``reserved``."""
    for length in itertools.count(1):
        for first in _FIRST_CHARS:
            for rest in itertools.product(_NEXT_CHARS, repeat=length - 1):
                name = first + "".join(rest)
                if name not in reserved:
                    yield name


def shorten_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename every tensor except the graph's inputs and outputs to the shortest free identifier.

    The most used names get the shortest ones, since each use repeats the name in the file.
    """
    graphs = list(_graphs(model.graph))
    interface = {value.name for value in itertools.chain(model.graph.input, model.graph.output)}
    uses: dict[str, int] = {}
    for graph in graphs:
        for name in itertools.chain(
            (init.name for init in graph.initializer),
            (init.values.name for init in graph.sparse_initializer),
            (value.name for value in itertools.chain(graph.input, graph.output, graph.value_info)),
            (name for node in graph.node for name in itertools.chain(node.input, node.output)),
        ):
            if name and name not in interface:
                uses[name] = uses.get(name, 0) + 1
    by_use = sorted(uses, key=lambda name: -uses[name])
    renamed = dict(zip(by_use, _short_names(interface), strict=False))

    def rename(names) -> None:
        for index, name in enumerate(names):
            names[index] = renamed.get(name, name)

    for graph in graphs:
        for init in graph.initializer:
            init.name = renamed.get(init.name, init.name)
        for sparse in graph.sparse_initializer:
            sparse.values.name = renamed.get(sparse.values.name, sparse.values.name)
        for value in itertools.chain(graph.input, graph.output, graph.value_info):
            value.name = renamed.get(value.name, value.name)
        for node in graph.node:
            rename(node.input)
            rename(node.output)
        for annotation in graph.quantization_annotation:
            annotation.tensor_name = renamed.get(annotation.tensor_name, annotation.tensor_name)
    return model
