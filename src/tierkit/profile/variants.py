"""Measure every exported model under every hardware setting, side by side."""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tierkit.profile.latency import latency_probe, measure_latency, setting_session
from tierkit.profile.settings import HardwareSetting


def latency_row(setting: HardwareSetting, single_ms: list[float], batch_ms: list[float], batch: int) -> dict:
    """One manifest latency row: batch-1 percentiles and the throughput measured at ``batch``."""
    p50, p90, p99 = np.percentile(single_ms, [50, 90, 99])
    return {
        **setting.as_row(),
        "p50_ms": round(float(p50), 5),
        "p90_ms": round(float(p90), 5),
        "p99_ms": round(float(p99), 5),
        "throughput_per_s": round(batch * 1000 / float(np.median(batch_ms)), 1),
        "throughput_batch": batch,
        "repeats": len(single_ms),
    }


def profile_models(
    files: dict[str, Path],
    shape: list[int],
    settings: list[HardwareSetting],
    repeats: int,
    warmup: int,
    throughput_batch: int,
    throughput_repeats: int,
    advance: Callable[[str], None] = lambda _: None,
) -> dict[str, list[dict]]:
    """Latency rows per model name, one per setting; within a setting all models are timed interleaved.

    ``advance`` is called once per setting (for a progress bar).
    """
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, *shape)).astype(np.float32)
    many = rng.standard_normal((throughput_batch, *shape)).astype(np.float32)
    rows: dict[str, list[dict]] = {name: [] for name in files}
    for setting in settings:
        sessions = {name: setting_session(path, setting) for name, path in files.items()}
        single_ms = measure_latency({name: latency_probe(s, single) for name, s in sessions.items()}, repeats, warmup)
        batch_ms = measure_latency(
            {name: latency_probe(s, many) for name, s in sessions.items()}, throughput_repeats, warmup=2
        )
        for name in files:
            rows[name].append(latency_row(setting, single_ms[name], batch_ms[name], throughput_batch))
        advance(setting.label)
    return rows


def fastest(rows: list[dict], hardware: str | None = None) -> dict:
    """The row with the lowest batch-1 p50, among ``hardware``'s rows when it is given."""
    candidates = [row for row in rows if hardware is None or row["hardware"] == hardware]
    return min(candidates, key=lambda row: row["p50_ms"])
