"""Post-training INT8 that misses its budget, escalated in steps, cheapest first, each measured on validation.

(a) calibration: the other calibration methods, and per-channel weights where the run had one scale per tensor;
(b) mixed precision: the layers the sensitivity analysis ranks highest get a higher precision, one at a time, while
    the rest keeps its integer kernels: 16-bit activations around INT8 weights, or float, whichever of the configured
    precisions first wins accuracy back; a layer that no precision helps stays INT8.
Quantization-aware training, the expensive step (c), is the quantization stage's to run. Every candidate is
recorded, so the run can say what each step bought and what it cost in size.
"""

import itertools
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from tierkit.conf.schema import MIXED_PRECISIONS
from tierkit.errors import TierkitError
from tierkit.onnxio import onnx_accuracy
from tierkit.quant.layer_analysis import quiet_session
from tierkit.quant.ptq import CALIBRATION_METHODS, quantize_int8
from tierkit.utils.files import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """How one post-training INT8 file is made."""

    method: str
    per_channel: bool
    float_layers: list[str] = field(default_factory=list)
    int16_layers: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.method}, {'per-channel' if self.per_channel else 'per-tensor'}"
        text += f", float: {' '.join(self.float_layers)}" if self.float_layers else ""
        return text + (f", 16-bit activations: {' '.join(self.int16_layers)}" if self.int16_layers else "")

    def with_layer(self, layer: str, precision: str) -> "Recipe":
        """This recipe with ``layer`` also given ``precision`` (one of ``MIXED_PRECISIONS``)."""
        if precision == "float":
            return Recipe(self.method, self.per_channel, [*self.float_layers, layer], list(self.int16_layers))
        return Recipe(self.method, self.per_channel, list(self.float_layers), [*self.int16_layers, layer])

    def higher_precision_layers(self) -> list[str]:
        return [*self.int16_layers, *self.float_layers]


@dataclass
class Candidate:
    recipe: Recipe
    step: str
    path: Path
    val_acc: float

    def record(self, reference_acc: float, budget: float) -> dict[str, Any]:
        drop = reference_acc - self.val_acc
        return step_record(self.step, self.recipe.describe(), self.val_acc, drop, self.path.stat().st_size, budget)


def step_record(step: str, recipe: str, val_acc: float, drop: float, size: int, budget: float) -> dict[str, Any]:
    """One measured candidate as the quantization report lists it."""
    record = {"step": step, "recipe": recipe, "val_acc": val_acc, "drop": drop, "bytes": size}
    return {**record, "meets_budget": within_budget(drop, budget)}


def within_budget(drop: float, budget: float) -> bool:
    """A drop measured on a finite split meets ``budget`` up to float rounding (74.0% - 73.0% is 1.0000000001)."""
    return drop <= budget + 1e-9


@dataclass
class Escalation:
    """The best post-training candidate found, every step measured, and whether the budget holds."""

    best: Candidate | None
    steps: list[dict[str, Any]]
    met: bool


def calibration_recipes(start: Recipe, methods: list[str]) -> list[Recipe]:
    """Step (a): every other calibration method, with the run's weight scales and with per-channel ones."""
    unknown = sorted(set(methods) - set(CALIBRATION_METHODS))
    if unknown:
        raise TierkitError(
            f"unknown calibration method(s) {unknown}",
            where="quantization.escalation.calibration_methods",
            fix=f"choose from {', '.join(CALIBRATION_METHODS)}",
        )
    scales = dict.fromkeys([start.per_channel, True])
    recipes = [Recipe(method, per_channel, list(start.float_layers)) for per_channel in scales for method in methods]
    return [r for r in recipes if (r.method, r.per_channel) != (start.method, start.per_channel)]


def check_precisions(precisions: list[str]) -> None:
    unknown = sorted(set(precisions) - set(MIXED_PRECISIONS))
    if unknown:
        raise TierkitError(
            f"unknown quantization.escalation.precisions {unknown}",
            where="quantization.escalation.precisions",
            fix=f"list some of {', '.join(MIXED_PRECISIONS)}, tried in that order for each sensitive layer "
            "(an empty list skips mixed precision)",
        )


def escalate_ptq(
    fp32: Path,
    out_path: Path,
    samples: np.ndarray,
    datamodule: L.LightningDataModule,
    start: Recipe,
    start_val_acc: float,
    reference_acc: float,
    budget: float,
    reduce_range: bool,
    batch_size: int,
    ranking: list[str],
    methods: list[str],
    max_float_layers: int,
    precisions: tuple[str, ...] = ("float",),
) -> Escalation:
    """Steps (a) then (b) from ``start`` (the configured recipe, already measured); the best candidate is written
    to ``out_path`` when it beats ``start``. ``ranking`` is the sensitivity analysis's order, most sensitive first;
    each of its layers tries ``precisions`` in order, and up to ``max_float_layers`` of them keep one."""
    check_precisions(list(precisions))
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tierkit-escalate-") as scratch:
        counter = itertools.count()

        def measure(recipe: Recipe, step: str) -> Candidate:
            path = Path(scratch) / f"candidate{next(counter)}.onnx"
            quantize_int8(
                fp32,
                path,
                samples,
                batch_size,
                recipe.method,
                reduce_range,
                recipe.per_channel,
                recipe.float_layers,
                recipe.int16_layers,
            )
            candidate = Candidate(recipe, step, path, onnx_accuracy(quiet_session(path), datamodule, "val"))
            steps.append(candidate.record(reference_acc, budget))
            log.info("INT8 %s: %s -> %.2f%% on validation", step, recipe.describe(), 100 * candidate.val_acc)
            return candidate

        def met(candidate: Candidate | None) -> bool:
            return candidate is not None and within_budget(reference_acc - candidate.val_acc, budget)

        best: Candidate | None = None  # the best candidate that beats ``start``
        for recipe in calibration_recipes(start, methods):
            candidate = measure(recipe, "calibration")
            if candidate.val_acc > (best.val_acc if best else start_val_acc):
                best = candidate
        kept = best.recipe if best else start
        kept_acc = best.val_acc if best else start_val_acc
        # Layers the configured recipe keeps in float already (float_first_layer) are neither tried nor counted.
        candidates = [layer for layer in ranking if layer not in start.float_layers]
        for layer in candidates[: 2 * max_float_layers]:
            if met(best) or len(kept.higher_precision_layers()) - len(start.float_layers) >= max_float_layers:
                break
            for precision in precisions:
                candidate = measure(kept.with_layer(layer, precision), "mixed precision")
                if candidate.val_acc > kept_acc:
                    kept, kept_acc, best = candidate.recipe, candidate.val_acc, candidate
                    break
        if best is not None:
            atomic_write(out_path, lambda tmp, source=best.path: shutil.copyfile(source, tmp))
            best.path = out_path
    return Escalation(best=best, steps=steps, met=met(best))
