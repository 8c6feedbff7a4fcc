"""Parameter, MAC and size counts: the numbers every compression claim is made of."""

import copy
import io
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn


def model_stats(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters, multiply-accumulates for one input, and FP32 state_dict size in bytes."""
    probe = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(probe, torch.zeros(1, *input_shape))
    buffer = io.BytesIO()
    torch.save(probe.state_dict(), buffer)
    return {"params": int(params), "macs": int(macs), "size_bytes": buffer.getbuffer().nbytes}
