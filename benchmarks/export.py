"""The deployable set end to end: a 3-tier sweep, exported, checked against the tier budgets, and the
runtime's choice for three described devices.

    python -m benchmarks.export [--sweep multirun/DATE/TIME] [--export-overrides SETTING ...] [-- overrides...]

Without --sweep it first runs `python train.py -m tier=highend,midrange,lowend` with the overrides (about 5
minutes on 2 cores on mnist5k). Then it runs `python export.py run=<sweep>`, whose profiler times every model
interleaved under every hardware setting, and reads the figures from the manifest. Writes
benchmarks/results/export.{json,md} and benchmarks/results/export_pareto.png, named export_<data> when the
sweep was trained on other data than the default (read from its checkpoints, so a given --sweep is named too),
followed by any --export-overrides.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, SCRATCH_STUDENT, data_overrides_of, describe, results_name, save_results
from benchmarks.common import run_command as run
from tierkit.runtime import DeviceInfo, load_manifest, select_variant
from tierkit.runtime.cpu import exact_on_target
from tierkit.runtime.select import device_target

TIERS = "highend,midrange,lowend"
# The comparison the issue asks for: batch 1, one thread, ONNX Runtime with all graph optimizations.
REFERENCE = ("cpu_1thread", "ORT_ENABLE_ALL")
# Each described device, the app's latency limit (the p50 of a tier's shipped variant, or none) and what the
# runtime's rule says it must get: the most demanding tier whose device minimums it meets, within the limit, in a
# file that is exact on its CPU class (never full-range INT8 on x86 without VNNI).
ARM = ["fp", "asimd", "asimddp"]
X86_VNNI = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"]
X86_AVX2 = ["sse4_2", "avx", "avx2", "fma"]
DEVICES = {
    "budget phone (ARM, 1 core, 1 GiB)": ({"cores": 1, "memory_mib": 1024, "cpu_flags": ARM}, None, "lowend"),
    "mid-range phone (ARM, 2 cores, 3 GiB)": ({"cores": 2, "memory_mib": 3072, "cpu_flags": ARM}, None, "midrange"),
    "laptop with VNNI (8 cores, 16 GiB)": ({"cores": 8, "memory_mib": 16384, "cpu_flags": X86_VNNI}, None, "highend"),
    "laptop without VNNI (AVX2, 8 cores, 16 GiB)": (
        {"cores": 8, "memory_mib": 16384, "cpu_flags": X86_AVX2},
        None,
        "highend",
    ),
    "laptop with VNNI, app asks for p50 <= lowend's": (
        {"cores": 8, "memory_mib": 16384, "cpu_flags": X86_VNNI},
        "lowend",
        "within the limit",
    ),
}


def reference_row(entry: dict) -> dict:
    return next(r for r in entry["latency"] if (r["hardware"], r["graph_optimization_level"]) == REFERENCE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, help="an existing 3-tier sweep folder to export instead of training")
    parser.add_argument(
        "--export-overrides", nargs="+", default=[], help="settings for export.py (float_first_layer=true)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the sweep this trains (not with --sweep)")
    args = parser.parse_args()
    if args.sweep and args.overrides:
        parser.error("overrides go to the sweep this benchmark trains; an existing --sweep was trained already")
    scratch = Path(tempfile.mkdtemp(prefix="tierkit-bench-export-"))
    sweep = args.sweep or scratch / "multirun"
    if args.sweep is None:
        run(
            [
                sys.executable,
                "train.py",
                "-m",
                f"tier={TIERS}",
                SCRATCH_STUDENT,
                *args.overrides,
                f"hydra.sweep.dir={sweep}",
                "~callbacks.progress",
            ]
        )
    out = scratch / "export"
    run([sys.executable, "export.py", f"run={sweep}", f"output_dir={out}", *args.export_overrides])
    manifest = load_manifest(out / "manifest.json")
    teacher = manifest["teacher"]
    shipped = {v["tier"]: v for v in manifest["variants"] if v["ships"]}
    lines = [
        f"Machine: {describe()}",
        "",
        "| tier | ships | accuracy | vs teacher (points) | size | size vs teacher | p50 1 thread (ms) | speed-up "
        "vs teacher | budget p50 (ms) | budgets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| teacher | fp32 | {100 * teacher['accuracy']:.2f}% | +0.00 | {teacher['bytes'] / 1024:.1f} KiB | 1.00x | "
        f"{reference_row(teacher)['p50_ms']:.4f} | 1.00x | | reference |",
    ]
    rows = []
    for tier in TIERS.split(","):
        variant = shipped.get(tier)
        if variant is None:
            why = "; ".join(v["why"] for v in manifest["variants"] if v["tier"] == tier)
            lines.append(f"| {tier} | nothing | | | | | | | | fail: {why} |")
            rows.append({"tier": tier, "ships": None})
            continue
        p50 = reference_row(variant)["p50_ms"]
        budget_p50 = min(r["p50_ms"] for r in variant["latency"] if r["hardware"] == variant["budget_hardware"])
        row = {
            "tier": tier,
            "ships": variant["name"],
            "accuracy": variant["accuracy"],
            "drop_points": 100 * (teacher["accuracy"] - variant["accuracy"]),
            "bytes": variant["bytes"],
            "size_ratio": teacher["bytes"] / variant["bytes"],
            "p50_ms": p50,
            "speedup": reference_row(teacher)["p50_ms"] / p50,
            "budget_p50_ms": budget_p50,
            "budget_hardware": variant["budget_hardware"],
            "checks": variant["checks"],
        }
        rows.append(row)
        lines.append(
            f"| {tier} | {variant['name'].removeprefix(tier + '-')} | {100 * row['accuracy']:.2f}% | "
            f"{-row['drop_points']:+.2f} | "
            f"{row['bytes'] / 1024:.1f} KiB | 1/{row['size_ratio']:.1f} | {p50:.4f} | {row['speedup']:.1f}x | "
            f"{budget_p50:.4f} ({variant['budget_hardware']}) | "
            f"{'pass' if all(variant['checks'].values()) else 'fail'} |"
        )
    picks = []
    lines += ["", "| described device | app limit | expected | runtime picks | as expected | reason |"]
    lines.append("|---|---|---|---|---|---|")
    for label, (description, latency_of, expected) in DEVICES.items():
        limit = reference_row(shipped[latency_of])["p50_ms"] if latency_of in shipped else None
        selection = select_variant(manifest, DeviceInfo.from_dict(description), max_latency_ms=limit)
        picked = selection.variant
        if expected == "within the limit":
            as_expected = selection.setting["p50_ms"] <= limit
        else:
            as_expected = picked["tier"] == expected
        device = DeviceInfo.from_dict(description)
        as_expected = as_expected and exact_on_target(picked.get("cpu_classes", []), device_target(device))
        picks.append({"device": label, "max_latency_ms": limit, "variant": picked["name"], "as_expected": as_expected})
        lines.append(
            f"| {label} | {f'p50 <= {limit:.4f} ms' if limit else '-'} | {expected} | {picked['name']} | "
            f"{'yes' if as_expected else 'NO'} | {selection.reason} |"
        )
    lowend = next((r for r in rows if r["tier"] == "lowend" and r["ships"]), None)
    if lowend:
        lines += [
            "",
            f"lowend vs teacher: {lowend['size_ratio']:.1f}x smaller (target >= 10x), {lowend['speedup']:.1f}x faster "
            f"at batch 1 on one thread (target >= 5x), {lowend['drop_points']:.2f} points lost (target <= 1).",
        ]
    a_run = next(sweep.glob("*/checkpoints/best.ckpt")).parents[1]  # the sweep's runs share one data option
    # Export settings name their own results: export_<data>_float_first_layer-true.
    name = results_name("export", [*data_overrides_of(a_run), *args.export_overrides])
    shutil.copy(out / "pareto.png", RESULTS / f"{name}_pareto.png")
    save_results(
        name,
        {
            "sweep": str(sweep),
            "export": str(out),
            "rows": rows,
            "picks": picks,
            "skipped": manifest["profiling"]["skipped"],
        },
        lines,
    )
    print(json.dumps({"export": str(out)}))


if __name__ == "__main__":
    main()
