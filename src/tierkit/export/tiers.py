"""Tier budgets checked on measurements, and the one variant per tier that ships."""

from tierkit.profile.variants import fastest
from tierkit.runtime.cpu import CPU_CLASSES, SHIPPING_TARGETS, TARGET_NAMES, exact_on_target

BUDGET_KEYS = ("max_drop_vs_teacher", "max_size_kib", "max_latency_ms")


def budget_latency(variant: dict) -> dict:
    """The variant's fastest row on the hardware its tier's latency budget is checked on."""
    return fastest(variant["latency"], variant["budget_hardware"])


def budget_checks(
    budgets: dict, drop: float | None, kib: float, p50: float | None, hardware: str
) -> dict[str, tuple[bool | None, str]]:
    """Each budget (accuracy, size, latency): whether it holds (None: not measured) and the words that say so."""
    allowed = budgets["max_drop_vs_teacher"]
    checks: dict[str, tuple[bool | None, str]] = {}
    if drop is None:
        checks["accuracy"] = (None, "accuracy drop not measured (no teacher to compare with)")
    else:
        # Slack for rounding: accuracies reach here as float32 metrics (about 1e-7 off) as well as exact counts, so
        # a drop of exactly the budget must not fail on that. 1e-6 is under one image of any split below 1M images.
        passed = drop <= allowed + 1e-6
        checks["accuracy"] = (
            passed,
            f"accuracy drop {100 * drop:.2f} {'<=' if passed else '>'} {100 * allowed:.2f} points vs the teacher",
        )
    passed = kib <= budgets["max_size_kib"]
    checks["size"] = (passed, f"size {kib:.1f} {'<=' if passed else '>'} {budgets['max_size_kib']:g} KiB")
    if p50 is None:
        checks["latency"] = (None, f"latency not measured on {hardware}")
    else:
        passed = p50 <= budgets["max_latency_ms"]
        checks["latency"] = (
            passed,
            f"p50 {p50:.4f} {'<=' if passed else '>'} {budgets['max_latency_ms']:g} ms on {hardware}",
        )
    return checks


def check_budgets(variant: dict, reference_accuracy: float) -> list[str]:
    """Fill ``variant['checks']`` (accuracy, size, latency: pass or fail) and return why each failed."""
    drop = reference_accuracy - variant["accuracy"]
    p50 = budget_latency(variant)["p50_ms"]
    variant["accuracy_drop"] = round(drop, 6)
    checks = budget_checks(variant["budgets"], drop, variant["bytes"] / 1024, p50, variant["budget_hardware"])
    variant["checks"] = {name: passed for name, (passed, _) in checks.items()}
    return [words for passed, words in checks.values() if not passed]


def _exact_classes(variant: dict) -> list[str]:
    return variant.get("cpu_classes", list(CPU_CLASSES))


def _pick(candidates: list[dict], tolerance: float) -> dict:
    """The fastest of ``candidates`` on their budget hardware, or, among those within ``tolerance`` of its p50 (the
    timing noise of one machine), the most accurate on the validation split, then the smallest."""
    best = min(budget_latency(v)["p50_ms"] for v in candidates)
    tied = [v for v in candidates if budget_latency(v)["p50_ms"] <= best * (1 + tolerance)]
    return max(tied, key=lambda v: (v.get("val_accuracy", 0.0), -v["bytes"], -budget_latency(v)["p50_ms"]))


def _ms(variant: dict) -> str:
    return f"{budget_latency(variant)['p50_ms']:.4f} ms"


def _beaten_by(winner: dict, variant: dict, fastest: dict, tolerance: float) -> str:
    """Why ``variant``, which passes every budget, does not ship where ``winner`` does."""
    hardware = winner["budget_hardware"]
    times = f"{_ms(winner)} vs {_ms(variant)}"
    if budget_latency(variant)["p50_ms"] > budget_latency(fastest)["p50_ms"] * (1 + tolerance):
        return f"{winner['name']} is faster on {hardware} ({times})"
    ours, theirs = (100 * v.get("val_accuracy", 0.0) for v in (winner, variant))
    if ours > theirs:
        accuracy = f"more accurate on validation ({ours:.2f}% vs {theirs:.2f}%)"
    else:
        slower = budget_latency(winner)["p50_ms"] > budget_latency(variant)["p50_ms"]
        accuracy = f"as accurate on validation ({ours:.2f}%)" + (" and smaller" if slower else "")
    return f"{winner['name']} is as fast on {hardware} (within {100 * tolerance:g}%: {times}) and {accuracy}"


def choose_shipping(variants: list[dict], reference_accuracy: float, latency_tolerance: float = 0.0) -> None:
    """Mark the variants each tier ships and set every variant's ``why``.

    Among the variants of a tier that pass all its budgets and use a precision the tier allows, the one with the
    lowest p50 on the tier's budget hardware ships (``ships``): for very small models FP32 can beat INT8, so it is
    measured, not assumed. p50s within ``latency_tolerance`` (a fraction) of the fastest count as equally fast,
    and the most accurate of those on the validation split ships, so timing noise does not pick a less accurate
    file. ``ships_for`` lists the CPU classes each variant is the tier's pick for: where the winner is not exact
    (full-range INT8 on x86 without VNNI, or a device that does not say its CPU), the pick among the passing
    variants that are exact there stands in. A tier where nothing passes ships nothing, and says why.
    """
    for tier in dict.fromkeys(v["tier"] for v in variants):
        members = [v for v in variants if v["tier"] == tier]
        passing = []
        for variant in members:
            failures = check_budgets(variant, reference_accuracy)
            variant["ships"] = False
            variant["ships_for"] = []
            if variant["precision"] not in variant["allowed_precisions"]:
                variant["why"] = f"tier {tier} does not ship {variant['precision']} (allowed: " + (
                    ", ".join(variant["allowed_precisions"]) + ")"
                )
            elif failures:
                variant["why"] = "fails its budget: " + "; ".join(failures)
            else:
                passing.append(variant)
        if not passing:
            continue
        passing.sort(key=lambda v: (budget_latency(v)["p50_ms"], v["bytes"]))
        for target in SHIPPING_TARGETS:
            exact = [v for v in passing if exact_on_target(_exact_classes(v), target)]
            if exact:
                _pick(exact, latency_tolerance)["ships_for"].append(target)
        winner = _pick(passing, latency_tolerance)
        winner["ships"] = True
        hardware = winner["budget_hardware"]
        fastest = passing[0]
        others = ", ".join(f"{v['name']} {_ms(v)}" for v in passing if v is not winner)
        if winner is fastest:
            winner["why"] = (
                f"passes every budget and is the fastest of {len(passing)} that do on {hardware} "
                f"(p50 {_ms(winner)}" + (f"; {others})" if others else ")")
            )
        else:
            winner["why"] = (
                "passes every budget and is the most accurate on validation "
                f"({100 * winner.get('val_accuracy', 0):.2f}%) of those within {100 * latency_tolerance:g}% "
                f"of the fastest on {hardware} "
                f"(p50 {_ms(winner)}; {others})"
            )
        for variant in passing:
            if variant is winner:
                continue
            beaten = _beaten_by(winner, variant, fastest, latency_tolerance)
            if variant["ships_for"]:
                missing = ", ".join(TARGET_NAMES[t] for t in variant["ships_for"])
                variant["why"] = (
                    f"passes every budget and ships for {missing}, where {winner['name']} is not exact "
                    f"({winner.get('weight_bits', 8)}-bit INT8 weights saturate on x86 without VNNI); elsewhere "
                    + beaten
                )
            else:
                variant["why"] = "passes every budget, but " + beaten
