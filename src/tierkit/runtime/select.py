"""Pick the one shipping variant a device should run, and say why the others were turned down."""

from dataclasses import dataclass, field

from tierkit.runtime.cpu import (
    REDUCED_WEIGHT_BITS,
    TARGET_NAMES,
    UNKNOWN_CPU,
    X86_NO_VNNI,
    cpu_class,
    exact_cpu_classes,
    exact_on_target,
)
from tierkit.runtime.device import DeviceInfo

CPU = "CPUExecutionProvider"


@dataclass
class Selection:
    """The chosen variant, the latency row (hardware setting) to run it with, and why."""

    variant: dict
    setting: dict
    reason: str
    rejected: list[tuple[str, str]] = field(default_factory=list)


class NoVariantFits(ValueError):
    """No shipping variant fits the device and the app's limits; ``rejected`` holds (variant, reason) pairs."""

    def __init__(self, rejected: list[tuple[str, str]]):
        self.rejected = rejected
        reasons = " | ".join(f"{name}: {reason}" for name, reason in rejected) or "the manifest lists no variants"
        super().__init__(
            f"no shipping variant fits this device: {reasons}. Fix: relax --max-latency-ms/--max-memory-mib, "
            "check the device description, or export a variant for smaller devices"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _best_row(rows: list[dict], device: DeviceInfo, max_latency_ms: float | None) -> tuple[dict | None, str]:
    """The row to run: the fastest accelerator row if the device has that provider, else the fastest CPU row.

    Returns (row, "") or (None, why no row is usable).
    """
    usable, why_not = [], []
    for row in rows:
        provider, threads = row["providers"][0], row["intra_op_num_threads"]
        if provider not in device.providers:
            why_not.append(f"{row['hardware']} needs {provider}, device has {device.providers}")
        elif threads > device.cores:  # 0 means "all cores" and always fits
            why_not.append(
                f"{row['hardware']} needs {_count(threads, 'thread')}, device has {_count(device.cores, 'core')}"
            )
        elif max_latency_ms is not None and row["p50_ms"] > max_latency_ms:
            why_not.append(f"{row['hardware']} p50 {row['p50_ms']:g} ms > max_latency_ms {max_latency_ms:g}")
        else:
            usable.append(row)
    if not usable:
        return None, "no measured setting fits (" + "; ".join(why_not) + ")"
    accelerated = [row for row in usable if row["providers"][0] != CPU]
    return min(accelerated or usable, key=lambda row: row["p50_ms"]), ""


def _device_problems(variant: dict, device: DeviceInfo, max_memory_mib: float | None) -> list[str]:
    needs, problems = variant["device"], []
    if device.memory_mib < needs["min_memory_mib"]:
        problems.append(f"tier needs >= {needs['min_memory_mib']} MiB memory, device has {device.memory_mib} MiB")
    if device.cores < needs["min_cores"]:
        problems.append(f"tier needs >= {_count(needs['min_cores'], 'core')}, device has {device.cores}")
    if max_memory_mib is not None and variant["peak_memory_mib"] is None:
        problems.append("peak memory was not measured at export, so max_memory_mib cannot be checked")
    elif max_memory_mib is not None and variant["peak_memory_mib"] > max_memory_mib:
        problems.append(f"peak memory {variant['peak_memory_mib']:g} MiB > max_memory_mib {max_memory_mib:g}")
    return problems


def device_target(device: DeviceInfo) -> str:
    """The CPU class a device's INT8 kernels belong to, from its flags; unknown_cpu when they do not say."""
    return cpu_class(device.cpu_flags) or UNKNOWN_CPU


def _ships_for(variant: dict, target: str) -> bool:
    """Whether the variant is its tier's pick for ``target``.

    Manifests written before CPU classes were recorded have one pick per tier; its INT8 file counts as exact on
    x86 without VNNI only when it was quantized with reduced range.
    """
    if "ships_for" in variant:
        return target in variant["ships_for"]
    if not variant["ships"] or variant["precision"] != "int8":
        return variant["ships"]
    return exact_on_target(exact_cpu_classes(_weight_bits(variant)), target)


def _weight_bits(variant: dict) -> int:
    """An INT8 variant's weight bits; manifests from before they were recorded say only whether range was reduced."""
    return variant.get("weight_bits", REDUCED_WEIGHT_BITS if variant.get("reduce_range") else 8)


def _not_exact_here(variant: dict, target: str) -> str:
    bits = _weight_bits(variant)
    why = f"ships, but not for {TARGET_NAMES[target]}: its {bits}-bit INT8 weights saturate on x86 without VNNI"
    if target == UNKNOWN_CPU:
        why += ", and the device description gives no cpu_flags to rule that out (add them to allow this file)"
    elif target == X86_NO_VNNI:
        why += " (this device's flags have none of avx512_vnni, avx_vnni, amx_int8)"
    return why


def _demand(variant: dict) -> tuple[int, int]:
    return variant["device"]["min_memory_mib"], variant["device"]["min_cores"]


def select_variant(
    manifest: dict, device: DeviceInfo, max_latency_ms: float | None = None, max_memory_mib: float | None = None
) -> Selection:
    """The shipping variant of the most demanding tier the device meets, within the app's limits.

    Tiers are ranked by the device they ask for (memory, then cores): a device gets the model made for its
    class, not whichever variant scored a hair higher on a finite test split. Variants asking for the same
    device are ranked by accuracy, then by the fastest measured setting.
    Raises NoVariantFits listing every variant's rejection reasons when none fits.
    """
    for name, limit in (("max_latency_ms", max_latency_ms), ("max_memory_mib", max_memory_mib)):
        if limit is not None and not limit > 0:
            raise ValueError(f"{name} must be > 0, got {limit}. Fix: pass a positive limit or leave it out")
    fits: list[tuple[dict, dict]] = []
    rejected: list[tuple[str, str]] = []
    target = device_target(device)
    not_exact: dict[str, str] = {}
    for variant in manifest["variants"]:
        if not _ships_for(variant, target):
            if variant["ships"]:
                not_exact[variant["tier"]] = variant["name"]
                rejected.append((variant["name"], _not_exact_here(variant, target)))
            else:
                rejected.append((variant["name"], f"does not ship ({variant['why']})"))
            continue
        problems = _device_problems(variant, device, max_memory_mib)
        row, why_not = _best_row(variant["latency"], device, max_latency_ms)
        if row is None:
            problems.append(why_not)
        if problems:
            rejected.append((variant["name"], "; ".join(problems)))
        else:
            fits.append((variant, row))
    if not fits:
        raise NoVariantFits(rejected)
    fits.sort(
        key=lambda fit: (*(-need for need in _demand(fit[0])), -fit[0]["accuracy"], fit[1]["p50_ms"], fit[0]["name"])
    )
    (winner, row), others = fits[0], fits[1:]
    limits = [
        f"{name}={limit:g}"
        for name, limit in (("max_latency_ms", max_latency_ms), ("max_memory_mib", max_memory_mib))
        if limit is not None
    ]
    memory, cores = _demand(winner)
    reason = (
        f"tier {winner['tier']!r} (for devices with >= {memory} MiB and {_count(cores, 'core')}) is the most "
        f"demanding of the {len(fits)} shipping variant(s) that fit this device"
        + (f" within {', '.join(limits)}" if limits else "")
    )
    peers = [variant for variant, _ in others if _demand(variant) == _demand(winner)]
    if peers:
        reason += f"; most accurate ({winner['accuracy']:.4f}) of those asking for the same device"
        tied = [variant["name"] for variant in peers if variant["accuracy"] == winner["accuracy"]]
        if tied:
            reason += f", tied with {', '.join(tied)}: lowest p50 wins"
    if winner["tier"] in not_exact:
        reason += (
            f"; stands in for {not_exact[winner['tier']]}, whose INT8 weights are not exact on {TARGET_NAMES[target]}"
        )
    provider = row["providers"][0]
    threads = row["intra_op_num_threads"]
    reason += (
        f"; runs setting {row['hardware']!r} on {provider} ({_count(threads, 'thread') if threads else 'all cores'})"
    )
    reason += f", measured p50 {row['p50_ms']:g} ms"
    if provider != CPU:
        reason += f" (accelerator row preferred: the device has {provider})"
    return Selection(variant=winner, setting=row, reason=reason, rejected=rejected)
