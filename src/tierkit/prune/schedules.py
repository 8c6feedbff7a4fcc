"""How much of the network is pruned after each step of a gradual schedule."""

from tierkit.errors import TierkitError

SCHEDULES = ("oneshot", "linear", "cubic")


def pruning_schedule(kind: str, target: float, steps: int) -> list[float]:
    """Cumulative pruning ratio after steps 1..steps, ending at ``target``.

    ``cubic`` is Zhu & Gupta (2017): s_t = s_f * (1 - (1 - t/n)^3), pruning fast early while
    the network is redundant and gently near the end.
    """
    if kind not in SCHEDULES:
        raise TierkitError(
            f"unknown pruning schedule {kind!r}",
            where="callbacks.pruning.schedule",
            fix=f"use one of {', '.join(SCHEDULES)}",
        )
    if kind == "oneshot" or steps == 1:
        return [target]
    if kind == "linear":
        return [target * t / steps for t in range(1, steps + 1)]
    return [target * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]
