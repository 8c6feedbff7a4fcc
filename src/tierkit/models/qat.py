"""Insert fake quantization into a student where ONNX Runtime will later run integer kernels.

The model is traced with torch.fx and quantizers are placed in the pattern ONNX Runtime fuses on x86:
every Conv/Linear weight quantized per channel (or per tensor); activations quantized at the model input, after each
Conv/Linear (behind its BatchNorm and ReLU; the logits too, so the head runs as QGemm), after each residual
add (behind its ReLU) and after average pooling. Data-movement ops (max-pooling, flatten, dropout) reuse the
quantizer of their input, so ONNX Runtime keeps them in INT8 instead of converting back and forth.
"""

import operator
from collections.abc import Iterator
from copy import deepcopy

import torch
from torch import fx, nn

from tierkit.errors import TierkitError
from tierkit.models.common import weights_device
from tierkit.models.fake_quant import ActivationFakeQuant, WeightFakeQuant

STAGES = ("float", "weights", "activations", "frozen")

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_PASS_THROUGH_MODULES = (nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
_AVERAGE_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_ADDS = (operator.add, torch.add)


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose weight passes through a WeightFakeQuant; same parameter names as nn.Conv2d.

    ``fold``: the per-channel factors of the batch norm that follows, which per-tensor quantization must see.
    """

    def __init__(self, *args, reduce_range: bool = False, per_channel: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quant = WeightFakeQuant(reduce_range, per_channel)

    def forward(self, x: torch.Tensor, fold: torch.Tensor | None = None) -> torch.Tensor:
        return self._conv_forward(x, self.weight_quant(self.weight, fold), self.bias)


class QuantLinear(nn.Linear):
    """A Linear whose weight passes through a WeightFakeQuant; same parameter names as nn.Linear."""

    def __init__(self, *args, reduce_range: bool = False, per_channel: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quant = WeightFakeQuant(reduce_range, per_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight_quant(self.weight), self.bias)


def _quantized_copy(module: nn.Module, reduce_range: bool, per_channel: bool) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        copy = QuantConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
            reduce_range=reduce_range,
            per_channel=per_channel,
        )
    else:
        copy = QuantLinear(
            module.in_features,
            module.out_features,
            module.bias is not None,
            reduce_range=reduce_range,
            per_channel=per_channel,
        )
    # The same Parameter objects: an optimizer built on the float model keeps training (and its state) as is.
    copy.weight, copy.bias = module.weight, module.bias
    return copy.to(module.weight.device).train(module.training)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is(gm: fx.GraphModule, node: fx.Node, kinds: tuple[type, ...], functions: tuple = ()) -> bool:
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, kinds)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in {getattr(f, "__name__", "") for f in functions}


def _is_compute(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _is(gm, node, (nn.Conv2d, nn.Linear))


def _is_pass_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _is(gm, node, _PASS_THROUGH_MODULES, (torch.flatten, torch.reshape, torch.nn.functional.max_pool2d)) or (
        node.op == "call_method" and node.target in ("view", "reshape", "flatten")
    )


def _chain_end(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """Follow a Conv/Linear/add through its only-user BatchNorm and ReLU: the tensor ONNX Runtime requantizes."""
    for kinds, functions in ((_NORMS, ()), (_ACTIVATIONS, (torch.relu, torch.nn.functional.relu))):
        users = list(node.users)
        if len(users) == 1 and _is(gm, users[0], kinds, functions):
            node = users[0]
    return node


def _untraceable(model: nn.Module, exc: Exception) -> TierkitError:
    return TierkitError(
        f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: {exc})",
        where="quantization-aware training",
        fix="keep data-dependent Python control flow out of forward(), or use post-training INT8 only "
        "(quantization.qat.enabled=false)",
    )


def _first_compute(gm: fx.GraphModule) -> fx.Node | None:
    return next((node for node in gm.graph.nodes if _is_compute(gm, node)), None)


def prepare_qat(
    model: nn.Module,
    reduce_range: bool = False,
    momentum: float = 0.01,
    per_channel: bool = True,
    float_first_layer: bool = False,
) -> fx.GraphModule:
    """``model`` traced, with fake quantizers in place, all disabled (stage "float").

    The original parameters (same objects, same names) are kept, so optimizers and float checkpoints still fit.
    ``per_channel=False`` gives each weight one scale, which the exported file stores per tensor.
    ``float_first_layer`` leaves the first Conv/Linear and its input in float, as post-training INT8 does with
    ``quantization.float_first_layer``: only its output is quantized, for the layer after it.
    """
    if is_prepared(model):
        return model
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        raise _untraceable(model, exc) from exc
    graph = gm.graph
    kept_float = _first_compute(gm) if float_first_layer else None
    # A callback prepares the model where training already put it (a GPU): the new quantizers' buffers go there too.
    device = weights_device(model)
    for node in list(graph.nodes):
        module = _module(gm, node)
        if node is kept_float:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, (QuantConv2d, QuantLinear)):
            parent, _, name = node.target.rpartition(".")
            setattr(
                gm.get_submodule(parent) if parent else gm, name, _quantized_copy(module, reduce_range, per_channel)
            )

    quantizer_of: dict[fx.Node, str] = {}
    count = 0

    def quantize_after(node: fx.Node, share: str | None = None) -> str:
        nonlocal count
        name = share
        if name is None:
            name = f"act_quant_{count}"
            count += 1
            gm.add_submodule(name, ActivationFakeQuant(momentum).to(device))
        with graph.inserting_after(node):
            quantized = graph.call_module(name, (node,))
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
        quantizer_of[node] = name
        quantizer_of[quantized] = name
        return name

    for node in list(graph.nodes):
        if node.op == "placeholder" and kept_float is None:
            quantize_after(node)
        elif _is_compute(gm, node) or _is(gm, node, (), _ADDS):
            end = _chain_end(gm, node)
            if end not in quantizer_of:
                quantize_after(end)
        elif _is(gm, node, _AVERAGE_POOLS, (torch.nn.functional.adaptive_avg_pool2d,)):
            quantize_after(node)

    for node in list(graph.nodes):
        if not _is_compute(gm, node) or node is kept_float:
            continue
        source = node.args[0]
        if source in quantizer_of:
            continue
        upstream = source
        while _is_pass_through(gm, upstream) and upstream.args and upstream.args[0] not in quantizer_of:
            upstream = upstream.args[0]
        shared = quantizer_of.get(upstream.args[0]) if _is_pass_through(gm, upstream) and upstream.args else None
        quantize_after(source, share=shared)
    if not per_channel:
        _pass_fold_factors(gm)
    graph.lint()
    gm.recompile()
    return gm


def batch_norm_factor(norm: nn.BatchNorm2d) -> torch.Tensor:
    """What folding ``norm`` into the convolution before it multiplies each output channel by."""
    factor = torch.rsqrt(norm.running_var + norm.eps)
    return factor if norm.weight is None else factor * norm.weight


def _pass_fold_factors(gm: fx.GraphModule) -> None:
    """Give each convolution followed only by a batch norm that norm's factors: export folds the norm (its running
    statistics) into the weight before quantizing it, and one scale for the whole tensor is only right for the
    folded weight."""
    for node in list(gm.graph.nodes):
        users = list(node.users)
        if not (_is(gm, node, (QuantConv2d,)) and len(users) == 1 and _is(gm, users[0], (nn.BatchNorm2d,))):
            continue
        with gm.graph.inserting_before(node):
            norm = gm.graph.get_attr(users[0].target)
            node.args = (*node.args, gm.graph.call_function(batch_norm_factor, (norm,)))


def activation_quantizers(model: nn.Module) -> Iterator[ActivationFakeQuant]:
    return (m for m in model.modules() if isinstance(m, ActivationFakeQuant))


def weight_quantizers(model: nn.Module) -> Iterator[WeightFakeQuant]:
    return (m for m in model.modules() if isinstance(m, WeightFakeQuant))


def is_prepared(model: nn.Module) -> bool:
    return any(True for _ in weight_quantizers(model))


def qat_settings(model: nn.Module) -> dict[str, float | bool] | None:
    """What prepare_qat needs to rebuild the same quantizers (None for a float model): kept in checkpoints."""
    weight = next(weight_quantizers(model), None)
    activation = next(activation_quantizers(model), None)
    if weight is None or activation is None:
        return None
    first = _first_compute(model) if isinstance(model, fx.GraphModule) else None
    return {
        "reduce_range": weight.reduce_range,
        "momentum": activation.momentum,
        "per_channel": weight.per_channel,
        "float_first_layer": first is not None and not isinstance(_module(model, first), (QuantConv2d, QuantLinear)),
    }


def qat_stage(model: nn.Module) -> str:
    """Which of STAGES the model's quantizers are in."""
    weights = [q.enabled for q in weight_quantizers(model)]
    activations = list(activation_quantizers(model))
    if not any(weights):
        return "float"
    if not any(q.enabled for q in activations):
        return "weights"
    return "frozen" if not any(q.observing for q in activations) else "activations"


def set_qat_stage(model: nn.Module, stage: str) -> None:
    """Switch quantizers: "weights" rounds weights only; "activations" adds observed activation rounding;
    "frozen" stops the observers (the caller also freezes batch-norm statistics)."""
    if stage not in STAGES:
        raise TierkitError(f"unknown QAT stage {stage!r}", where="set_qat_stage", fix=f"use one of {STAGES}")
    level = STAGES.index(stage)
    for quantizer in weight_quantizers(model):
        quantizer.enabled = level >= 1
    for quantizer in activation_quantizers(model):
        quantizer.enabled = level >= 2
        quantizer.observing = level == 2


def float_copy(model: nn.Module) -> nn.Module:
    """The same weights with every quantizer off: the FP32 model a QAT checkpoint also holds."""
    copy = deepcopy(model)
    set_qat_stage(copy, "float")
    return copy


def freeze_batch_norm(model: nn.Module) -> None:
    """Use (and stop updating) the running statistics: what the folded, deployed model computes."""
    for module in model.modules():
        if isinstance(module, _NORMS):
            module.eval()
