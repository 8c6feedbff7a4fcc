"""Fake-quantization modules whose forward pass simulates INT8 and whose ONNX export is Quantize/DequantizeLinear.

The layout is the one ONNX Runtime fuses into integer kernels on x86: signed symmetric weights (zero point 0, per
channel by default) and unsigned per-tensor asymmetric activations.
"""

import torch
from torch import nn

UINT8_MIN, UINT8_MAX = 0, 255
INT8_MIN, INT8_MAX = -128, 127


# torch.export cannot trace torch.fake_quantize_* (no fake-tensor kernel), so export runs through these two ops,
# which tierkit.quant.qdq translates to QuantizeLinear/DequantizeLinear pairs.
@torch.library.custom_op("tierkit::qdq_per_tensor", mutates_args=())
def qdq_per_tensor(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, UINT8_MIN, UINT8_MAX)


@qdq_per_tensor.register_fake
def _(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return torch.empty_like(x)


def _fake_quantize_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8: one scale per output channel, or a 0-d ``scale`` for the whole tensor."""
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    if scale.dim() == 0:
        return torch.fake_quantize_per_tensor_affine(weight, scale, zero_point, INT8_MIN, INT8_MAX)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, INT8_MIN, INT8_MAX)


@torch.library.custom_op("tierkit::qdq_weight", mutates_args=())
def qdq_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _fake_quantize_weight(weight, scale)


@qdq_weight.register_fake
def _(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(weight)


class WeightFakeQuant(nn.Module):
    """Symmetric INT8 of a weight tensor, one scale per output channel (or per tensor), taken from the weight itself.

    A scale from the current weight needs no observer. Per channel, it is unchanged in meaning when batch norm is
    later folded into the weight: folding multiplies each output channel by one factor, and so does the scale.
    Per tensor it is not, so the caller passes the factors (``fold``) and the grid is the folded weight's.
    ``reduce_range`` keeps values in 7 bits (±63) for x86 CPUs without VNNI, whose u8×s8 products can saturate.
    """

    def __init__(self, reduce_range: bool = False, per_channel: bool = True):
        super().__init__()
        self.enabled = False
        self.reduce_range = reduce_range
        self.per_channel = per_channel
        self.export_scale: torch.Tensor | None = None

    def get_extra_state(self) -> dict[str, bool]:
        return {"enabled": self.enabled, "reduce_range": self.reduce_range, "per_channel": self.per_channel}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        self.enabled, self.reduce_range = state["enabled"], state["reduce_range"]
        self.per_channel = state.get("per_channel", True)

    @property
    def levels(self) -> int:
        return 63 if self.reduce_range else 127

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        magnitude = weight.detach().abs()
        max_abs = magnitude.flatten(1).amax(1) if self.per_channel else magnitude.amax()
        return (max_abs / self.levels).clamp_min(1e-8).float()

    def freeze_for_export(self, weight: torch.Tensor) -> None:
        """Fix the scales as a constant, so the exported graph quantizes an initializer with constant scales."""
        self.export_scale = self.scale(weight)

    def forward(self, weight: torch.Tensor, fold: torch.Tensor | None = None) -> torch.Tensor:
        if self.export_scale is not None:
            return qdq_weight(weight, self.export_scale)
        if not self.enabled:
            return weight
        if fold is None or self.per_channel:
            return _fake_quantize_weight(weight, self.scale(weight))
        # The grid of the folded weight, mapped back: a per-channel scale of (folded scale) / |factor|.
        factor = fold.detach().abs().clamp_min(1e-8).reshape(-1, *[1] * (weight.dim() - 1))
        return _fake_quantize_weight(weight, self.scale(weight * factor) / factor.flatten())


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric UINT8 of an activation, with its range tracked by an exponential moving average.

    ``observing`` updates the range from each training batch; ``enabled`` applies the rounding. Freezing the
    observer late in QAT lets the weights settle against fixed quantization grids.
    """

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.enabled = self.observing = self.initialised = False
        self.export_qparams: tuple[float, int] | None = None
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))

    def get_extra_state(self) -> dict[str, bool]:
        return {"enabled": self.enabled, "observing": self.observing, "initialised": self.initialised}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        self.enabled, self.observing, self.initialised = state["enabled"], state["observing"], state["initialised"]

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        low, high = torch.aminmax(x.detach().float())
        if not self.initialised:
            self.min_val.copy_(low)
            self.max_val.copy_(high)
            self.initialised = True
        else:
            self.min_val.lerp_(low, self.momentum)
            self.max_val.lerp_(high, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point for the tracked range, widened to include 0 so that 0 is exact (padding, ReLU)."""
        low, high = self.min_val.clamp(max=0.0), self.max_val.clamp(min=0.0)
        scale = ((high - low) / (UINT8_MAX - UINT8_MIN)).clamp_min(1e-8)
        zero_point = (UINT8_MIN - torch.round(low / scale)).clamp(UINT8_MIN, UINT8_MAX).to(torch.int32)
        return scale.reshape(1), zero_point.reshape(1)

    def freeze_for_export(self) -> None:
        """Fix the grid as Python numbers: exporters turn those into constant Quantize/DequantizeLinear inputs."""
        scale, zero_point = self.qparams()
        self.export_qparams = (float(scale), int(zero_point))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_qparams is not None:
            return qdq_per_tensor(x, *self.export_qparams)
        if self.training and self.observing:
            self.observe(x)
        if not (self.enabled and self.initialised):
            return x
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, UINT8_MIN, UINT8_MAX)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"
