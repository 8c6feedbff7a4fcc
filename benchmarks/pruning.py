"""What physical channel removal buys: the default student unpruned, with half its channels pruned by
tierkit's StructuredPruning (KD recovery), and masked by Lightning's ModelPruning at the same weight
sparsity. Accuracy over seeds; ONNX Runtime latency at batch 1 on one thread, interleaved.

    python -m benchmarks.pruning [--seeds 1 2 3] [--target 0.5] [--work DIR] [-- extra overrides...]

Writes benchmarks/results/pruning.{json,md} (pruning_<data>.* with a data= override; any other override is
added to the name as key-value). With --work DIR every finished training stays in DIR and the same command run
again reuses it.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import hydra
import numpy as np

from benchmarks.baselines import zero_fraction
from benchmarks.common import (
    SCRATCH_STUDENT,
    add_work_option,
    command_line,
    describe,
    finished_or_train,
    over_seeds,
    results_name,
    save_results,
    spread,
)
from tierkit.models.checkpoint import load_student
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.utils.noise import silence_known_noise

VARIANTS = ("unpruned", "structured", "modelpruning")


def overrides_for(variant: str, target: float, sparsity: float | None, end_epoch: int) -> list[str]:
    if variant == "unpruned":
        return ["~callbacks.pruning"]
    if variant == "structured":
        return [f"callbacks.pruning.target={target}"]
    return [
        "~callbacks.pruning",
        "+callbacks.model_pruning._target_=lightning.pytorch.callbacks.ModelPruning",
        "+callbacks.model_pruning.pruning_fn=l1_unstructured",
        f"+callbacks.model_pruning.amount={sparsity}",
        "+callbacks.model_pruning.apply_pruning._target_=benchmarks.baselines.PruneOnceAt",
        f"+callbacks.model_pruning.apply_pruning.epoch={end_epoch}",
        "+callbacks.model_pruning.verbose=0",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--target", type=float, default=0.5, help="fraction of channels StructuredPruning removes")
    parser.add_argument("--end-epoch", type=int, default=8, help="epoch of the last pruning step (default config)")
    add_work_option(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    silence_known_noise()
    print(describe(), flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="tierkit-prune-") as tmp:
        probes = {}
        for seed in args.seeds:
            sparsity = None
            for variant in VARIANTS:
                out = (args.work or Path(tmp)) / f"{variant}-{seed}"
                variant_overrides = overrides_for(variant, args.target, sparsity, args.end_epoch)
                metrics = finished_or_train([f"seed={seed}", SCRATCH_STUDENT, *args.overrides, *variant_overrides], out)
                # The last epoch, not the best: ModelPruning's best epoch may predate its pruning.
                student, config = load_student(metrics["checkpoints"]["last"])
                shape = tuple(config.data.input_shape)
                if variant == "unpruned":
                    dense_params = metrics["student"]["params"]
                if variant == "structured":
                    # ModelPruning gets the same fraction of weights removed as physical pruning did.
                    sparsity = round(1 - metrics["student"]["params"] / dense_params, 3)
                metrics["weight_zero_fraction"] = zero_fraction(student)
                onnx_path = export_onnx(student, Path(tmp) / f"{variant}-{seed}.onnx", shape)
                metrics["onnx_bytes"] = onnx_path.stat().st_size
                session = ort_session(onnx_path, threads=1)
                metrics["ort_test_acc"] = onnx_accuracy(session, hydra.utils.instantiate(config.data))
                probes[(variant, seed)] = latency_probe(session, np.zeros((1, *shape), dtype=np.float32))
                runs[variant].append(metrics)
                print(f"seed {seed} {variant}: ORT test acc {100 * metrics['ort_test_acc']:.2f}%", flush=True)
        samples = measure_latency(probes, repeats=500, warmup=50, rounds=10)
    for variant in VARIANTS:
        for seed, metrics in zip(args.seeds, runs[variant], strict=True):
            metrics["latency_ms_p50"] = statistics.median(samples[(variant, seed)])

    def mean(variant: str, key) -> float:
        return statistics.mean(key(m) for m in runs[variant])

    base_latency = mean("unpruned", lambda m: m["latency_ms_p50"])
    base_macs = mean("unpruned", lambda m: m["student"]["macs"])
    base_acc = [m["ort_test_acc"] for m in runs["unpruned"]]
    lines = [
        f"Machine: {describe()}",
        "Command: "
        + command_line(
            "pruning", "--seeds", *map(str, args.seeds), "--target", str(args.target), overrides=args.overrides
        ),
        "",
        "| student | params | MACs | zero weights | ONNX size | latency p50 (ms) | speed-up | MACs cut "
        "| test acc in ORT (%) | vs unpruned (points) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "unpruned": "unpruned (KD)",
        "structured": f"tierkit StructuredPruning {args.target:.0%} channels (KD)",
        "modelpruning": "Lightning ModelPruning, same weight sparsity (KD)",
    }
    for variant in VARIANTS:
        acc = [m["ort_test_acc"] for m in runs[variant]]
        latency = mean(variant, lambda m: m["latency_ms_p50"])
        macs = mean(variant, lambda m: m["student"]["macs"])
        lines.append(
            f"| {names[variant]} | {runs[variant][0]['student']['params']:,} | {int(macs):,} "
            f"| {100 * mean(variant, lambda m: m['weight_zero_fraction']):.0f}% "
            f"| {mean(variant, lambda m: m['onnx_bytes']) / 1024:.0f} KiB | {latency:.4f} "
            f"| {base_latency / latency:.2f}x "
            f"| {base_macs / macs:.2f}x | {spread(acc)} "
            f"| {100 * (statistics.mean(acc) - statistics.mean(base_acc)):+.2f} |"
        )
    lines += [
        "",
        f"Each run's last checkpoint, exported to ONNX; accuracy is measured in ONNX Runtime on the test split, "
        f"{over_seeds(args.seeds)}. Latency is the median of interleaved ONNX Runtime "
        "runs (batch 1, one thread, all graph optimizations), averaged over the seeds' models.",
    ]
    save_results(results_name("pruning", args.overrides), {"runs": runs}, lines)


if __name__ == "__main__":
    main()
