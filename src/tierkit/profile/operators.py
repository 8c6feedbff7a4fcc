"""Where a model spends its time: ONNX Runtime's per-operator profile, summed by operator type."""

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from tierkit.profile.latency import setting_session
from tierkit.profile.settings import HardwareSetting


def operator_profile(
    path: str | Path, setting: HardwareSetting, batch: np.ndarray, runs: int = 100, warmup: int = 10, top: int = 5
) -> list[dict]:
    """The ``top`` operator types by time per inference, each with its share of all operator time.

    The first ``warmup`` runs are left out of the sums: they pay one-off allocation costs.
    """
    with tempfile.TemporaryDirectory(prefix="tierkit-ort-profile-") as scratch:
        session = setting_session(path, setting, profile_prefix=str(Path(scratch) / "ort"))
        name = session.get_inputs()[0].name
        for _ in range(warmup + runs):
            session.run(None, {name: batch})
        trace = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((event for event in trace if event.get("name") == "model_run"), key=lambda e: e["ts"])
    cutoff = model_runs[warmup - 1]["ts"] + model_runs[warmup - 1]["dur"] if warmup else 0
    total_us: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < cutoff:
            continue
        op = event["args"]["op_name"]
        total_us[op] += event["dur"]
        nodes[op].add(event["name"])
    everything = sum(total_us.values()) or 1.0
    ranked = sorted(total_us, key=total_us.get, reverse=True)[:top]
    return [
        {
            "op": op,
            "nodes": len(nodes[op]),
            "us_per_run": round(total_us[op] / runs, 3),
            "share": round(total_us[op] / everything, 4),
        }
        for op in ranked
    ]
