"""Record and re-apply layer shapes, so a pruned model can be rebuilt from its config plus a checkpoint."""

import torch
from torch import nn

SHAPE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")


def describe_structure(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channel and feature counts of every layer that has them: plain ints, safe for weights_only loading."""
    structure = {}
    for name, module in model.named_modules():
        attrs = {a: int(getattr(module, a)) for a in SHAPE_ATTRIBUTES if isinstance(getattr(module, a, None), int)}
        if attrs:
            structure[name] = attrs
    return structure


def apply_structure(
    model: nn.Module, structure: dict[str, dict[str, int]], state_dict: dict[str, torch.Tensor]
) -> None:
    """Reshape ``model`` in place to the recorded layer sizes and the tensor shapes of ``state_dict``.

    Values are left uninitialised: the caller loads ``state_dict`` next.
    """
    for name, module in model.named_modules():
        for attr, value in structure.get(name, {}).items():
            setattr(module, attr, value)
        prefix = f"{name}." if name else ""
        for tensors in (module._parameters, module._buffers):
            for key, tensor in tensors.items():
                saved = state_dict.get(prefix + key)
                if tensor is None or saved is None or saved.shape == tensor.shape:
                    continue
                resized = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
                is_parameter = tensors is module._parameters
                tensors[key] = nn.Parameter(resized, requires_grad=tensor.requires_grad) if is_parameter else resized
