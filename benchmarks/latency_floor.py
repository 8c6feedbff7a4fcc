"""How fast this CPU can go: the best multiply-accumulate rate ONNX Runtime reaches here on one thread, for a large
convolution and a large matrix product, in FP32 and in INT8 (ONNX Runtime's own static quantization).

    python -m benchmarks.latency_floor

A model of M MACs cannot run faster than M divided by the best of these rates, so a tier's batch-1 latency can be
reported as a multiple of that floor: how much of its time goes to overheads rather than arithmetic.
"""

import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.baselines import ort_default_int8
from benchmarks.common import describe
from tierkit.onnxio import export_onnx
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.utils.noise import silence_known_noise

# (module, one input without its batch axis, batch, MACs per run): large enough that arithmetic dominates.
CONV = (nn.Conv2d(64, 64, 3, padding=1), (64, 56, 56), 1, 64 * 64 * 9 * 56 * 56)
GEMM = (nn.Linear(1024, 1024, bias=False), (1024,), 256, 256 * 1024 * 1024)


def mac_rates(folder: Path, threads: int = 1, repeats: int = 50, warmup: int = 5) -> dict[str, float]:
    """MACs per second of each kernel (FP32 and INT8), from the median of ``repeats`` interleaved runs."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    probes, macs = {}, {}
    for name, (module, shape, batch, count) in {"conv": CONV, "gemm": GEMM}.items():
        inputs = rng.standard_normal((batch, *shape)).astype(np.float32)
        fp32 = export_onnx(module.eval(), folder / f"{name}_fp32.onnx", shape)
        int8 = ort_default_int8(fp32, folder / f"{name}_int8.onnx", inputs[:64] if batch > 1 else inputs)
        for precision, path in (("fp32", fp32), ("int8", int8)):
            probes[f"{name} {precision}"] = latency_probe(ort_session(path, threads=threads), inputs)
            macs[f"{name} {precision}"] = count
    times = measure_latency(probes, repeats, warmup)
    return {name: macs[name] / (statistics.median(ms) / 1000) for name, ms in times.items()}


def floor_ms(macs: int, rates: dict[str, float]) -> float:
    """The least time ``macs`` multiply-accumulates take at the best rate measured."""
    return 1000 * macs / max(rates.values())


def main() -> None:
    silence_known_noise()
    print(describe())
    with tempfile.TemporaryDirectory(prefix="tierkit-floor-") as tmp:
        rates = mac_rates(Path(tmp))
    for name, rate in rates.items():
        print(f"{name}: {rate / 1e9:.1f} GMAC/s on one thread")


if __name__ == "__main__":
    main()
