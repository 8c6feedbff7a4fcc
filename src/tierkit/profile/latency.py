"""Open ONNX Runtime sessions under a hardware config's settings and time them."""

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_session(
    path: str | Path,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    graph_optimization_level: str = "ORT_ENABLE_ALL",
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, graph_optimization_level)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers))


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
