"""How far to prune a model so that it keeps a given fraction of its parameters or MACs.

Used to derive a tier's student from the teacher: the tier says "a sixteenth of the teacher", and this finds
the channel ratio that the gradual pruning callback must reach to get there, for any model torch-pruning traces.
"""

import copy
import logging

import torch
import torch_pruning as tp
from torch import nn

from tierkit.errors import TierkitError
from tierkit.prune.callback import StructuredPruning

log = logging.getLogger(__name__)

MEASURES = ("params", "macs")


def model_size(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    return {"params": int(params), "macs": int(macs)}


def ratio_for_size(
    pruning: StructuredPruning,
    model: nn.Module,
    example: torch.Tensor,
    num_classes: int,
    fraction: float,
    measure: str = "params",
) -> tuple[float, dict[str, int]]:
    """The smallest channel ratio at which ``pruning`` leaves at most ``fraction`` of ``model``'s ``measure``;
    returns it with the pruned size. Kept widths depend only on the ratio (not on which channels go), so a
    bisection over pruned copies finds it. A share out of reach (a small model whose layers cannot keep fewer than
    ``round_to`` channels) gets the furthest pruning there is, with a warning: the tier's size budget still
    decides at export whether the student ships."""
    if measure not in MEASURES:
        raise TierkitError(
            f"unknown size measure {measure!r}", where="tier.size_measure", fix=f"use one of {', '.join(MEASURES)}"
        )
    if not 0 < fraction < 1:
        raise TierkitError(
            f"size_vs_teacher={fraction} is not a fraction of the teacher",
            where="tier.size_vs_teacher",
            fix="give the share of the teacher the student keeps, e.g. 0.1 for a tenth",
        )
    goal = fraction * model_size(model, example)[measure]

    def pruned_size(ratio: float) -> dict[str, int]:
        probe = StructuredPruning(
            target=ratio,
            steps=1,
            start_epoch=0,
            end_epoch=0,
            schedule="oneshot",
            round_to=pruning.round_to,
            ignore=pruning.ignore,
        )
        trial = copy.deepcopy(model)
        probe.prune_to(trial, example, ratio, num_classes)
        return model_size(trial, example)

    low, high = 0.0, 0.99
    smallest = pruned_size(high)
    if smallest[measure] > goal:
        log.warning(
            "tier.size_vs_teacher=%s is out of reach: with channel counts in multiples of %d, pruning keeps at least "
            "%s %s of this model (%.3f of the teacher); the student is pruned that far (lower "
            "callbacks.pruning.round_to, or raise tier.size_vs_teacher, to match them)",
            fraction,
            pruning.round_to,
            f"{smallest[measure]:,}",
            measure,
            smallest[measure] / goal * fraction,
        )
        return high, smallest
    for _ in range(14):
        middle = (low + high) / 2
        if pruned_size(middle)[measure] <= goal:
            high = middle
        else:
            low = middle
    return high, pruned_size(high)
