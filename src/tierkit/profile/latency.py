"""Open ONNX Runtime sessions under a hardware setting and time them."""

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tierkit.profile.settings import HardwareSetting


def ort_session(
    path: str | Path,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    graph_optimization_level: str = "ORT_ENABLE_ALL",
    inter_op_threads: int = 1,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, graph_optimization_level)
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=list(providers))


def setting_session(
    path: str | Path, setting: HardwareSetting, profile_prefix: str | None = None
) -> ort.InferenceSession:
    """A session configured exactly as the runtime will open it for this setting."""
    return ort_session(
        path,
        threads=setting.intra_op_num_threads,
        providers=setting.providers,
        graph_optimization_level=setting.graph_optimization_level,
        inter_op_threads=setting.inter_op_num_threads,
        profile_prefix=profile_prefix,
    )


def latency_probe(session: ort.InferenceSession, batch: np.ndarray) -> Callable[[], float]:
    """A closure that runs one inference and returns its wall time in milliseconds."""
    name = session.get_inputs()[0].name

    def run_once() -> float:
        started = time.perf_counter()
        session.run(None, {name: batch})
        return 1000 * (time.perf_counter() - started)

    return run_once


def measure_latency(
    probes: dict[str, Callable[[], float]], repeats: int = 200, warmup: int = 20, rounds: int = 5
) -> dict[str, list[float]]:
    """Time every probe ``repeats`` times after ``warmup`` runs, interleaving them round by round.

    Interleaving spreads machine drift over all candidates alike, so their ratios stay honest.
    """
    for probe in probes.values():
        for _ in range(warmup):
            probe()
    samples: dict[str, list[float]] = {name: [] for name in probes}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, probe in probes.items():
            samples[name] += [probe() for _ in range(per_round)]
    return samples
