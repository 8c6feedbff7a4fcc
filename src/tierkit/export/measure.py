"""Measure every exported model under every hardware setting: latency rows, best setting, memory and operators."""

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from tierkit.errors import TierkitError
from tierkit.profile import load_settings
from tierkit.profile.memory import peak_memory_mib
from tierkit.profile.operators import operator_profile
from tierkit.profile.variants import fastest, profile_models


def measure(
    files: dict[str, Path], entries: dict[str, dict], shape: list[int], cfg: DictConfig, hardware_dir: Path, progress
) -> list:
    """Latency rows, best setting, peak memory and operator profile for every model; returns skipped settings."""
    profiling = cfg.profiling
    levels = list(profiling.graph_optimization_levels) if profiling.graph_optimization_levels else None
    settings, skipped = load_settings(hardware_dir, list(profiling.hardware), levels)
    measured = {s.hardware for s in settings}
    for name, entry in entries.items():
        if entry.get("budget_hardware", next(iter(measured))) not in measured:
            raise TierkitError(
                f"{name}'s tier checks latency on {entry['budget_hardware']}, which is not measured here",
                where="profiling.hardware",
                fix=f"add {entry['budget_hardware']} to profiling.hardware (measured now: {sorted(measured)})",
            )
    task = progress.add_task("Profiling latency", total=len(settings))
    rows = profile_models(
        files,
        shape,
        settings,
        profiling.repeats,
        profiling.warmup,
        profiling.throughput_batch,
        profiling.throughput_repeats,
        advance=lambda label: progress.update(task, advance=1, description=f"Profiling latency ({label})"),
    )
    by_row = {(s.hardware, s.graph_optimization_level): s for s in settings}
    batch = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    task = progress.add_task("Memory and operator profiles", total=len(files))
    for name, path in files.items():
        entry = entries[name]
        entry["latency"] = rows[name]
        best = fastest(rows[name])
        setting = by_row[(best["hardware"], best["graph_optimization_level"])]
        entry["setting"] = setting.as_row()
        entry["peak_memory_mib"] = peak_memory_mib(path, setting, shape) if profiling.memory else None
        entry["operators"] = operator_profile(
            path, setting, batch, runs=profiling.operator_runs, top=profiling.top_operators
        )
        progress.advance(task)
    return skipped
