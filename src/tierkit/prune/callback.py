"""StructuredPruning: a Lightning callback that removes whole channels and neurons in gradual steps."""

import copy
import fnmatch
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch_pruning as tp
from lightning import Callback
from torch import nn

from tierkit.errors import TierkitError
from tierkit.models.common import weights_device
from tierkit.models.structure import apply_structure, describe_structure
from tierkit.prune.schedules import pruning_schedule
from tierkit.prune.surgery import (
    check_same_structure_on_all_ranks,
    forget_best_checkpoints,
    rebuild_optimizers,
    rewrap_distributed,
)

log = logging.getLogger(__name__)

IMPORTANCES = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
}
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
MODES = ("fixed", "budget")


def output_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@contextmanager
def preserved_mode(model: nn.Module) -> Iterator[None]:
    """torch-pruning traces the model in eval mode; put back whatever mode training had it in."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def step_epochs(start_epoch: int, end_epoch: int, steps: int) -> list[int]:
    """The distinct epochs, evenly spread from ``start_epoch`` to ``end_epoch``, that ``steps`` steps fall on."""
    return sorted({round(start_epoch + i * (end_epoch - start_epoch) / max(steps - 1, 1)) for i in range(steps)})


class StructuredPruning(Callback):
    """Prune the student from ``start_epoch`` to ``end_epoch`` in ``steps`` steps up to ``target``.

    ``target`` is the fraction of channels (neurons) removed from every prunable layer. Removal is physical
    (torch-pruning's dependency graph keeps residual adds and depthwise convs consistent), so the model gets
    smaller and faster, not just sparse. Distillation keeps running, so the teacher guides recovery between
    steps. The classifier head and layers matching ``ignore`` (globs over module names) are never pruned.
    """

    def __init__(
        self,
        target: float = 0.5,
        start_epoch: int = 2,
        end_epoch: int = 8,
        steps: int = 4,
        schedule: str = "cubic",
        importance: str = "l2",
        round_to: int | None = 8,
        ignore: list[str] | tuple[str, ...] = (),
        mode: str = "fixed",
        max_drop: float | None = None,
        margin: float = 0.0025,
        patience: int = 3,
        retries: int = 2,
    ):
        super().__init__()
        if mode not in MODES:
            raise TierkitError(
                f"unknown pruning mode {mode!r}", where="callbacks.pruning.mode", fix=f"use one of {', '.join(MODES)}"
            )
        if mode == "budget" and (max_drop is None or not max_drop - margin > 0):
            raise TierkitError(
                f"budget pruning needs an accuracy budget above its margin; got max_drop={max_drop}, margin={margin}",
                where="callbacks.pruning.max_drop (by default tier.budgets.max_drop_vs_teacher)",
                fix="give the largest validation drop against the teacher as a positive fraction, e.g. 0.01",
            )
        if retries < 0:
            raise TierkitError(
                f"pruning retries={retries} is negative",
                where="callbacks.pruning.retries",
                fix="give how many extra steps budget pruning may try after a rollback, e.g. 2 (0: none)",
            )
        if not 0 < target < 1:
            raise TierkitError(
                f"pruning target {target} is outside (0, 1)",
                where="callbacks.pruning.target",
                fix="give the fraction of channels to remove, e.g. 0.5; drop the callback with ~callbacks.pruning",
            )
        if steps < 1 or start_epoch < 0 or end_epoch < start_epoch:
            raise TierkitError(
                f"pruning steps={steps} from epoch {start_epoch} to {end_epoch} is not a schedule",
                where="callbacks.pruning",
                fix="use steps >= 1 and 0 <= start_epoch <= end_epoch",
            )
        if importance not in IMPORTANCES:
            raise TierkitError(
                f"unknown pruning importance {importance!r}",
                where="callbacks.pruning.importance",
                fix=f"use one of {', '.join(IMPORTANCES)}",
            )
        self.target, self.schedule, self.importance = target, schedule, importance
        self.ratios = pruning_schedule(schedule, target, steps)
        self.epochs = step_epochs(start_epoch, end_epoch, steps)
        if len(self.epochs) < len(self.ratios):
            raise TierkitError(
                f"{steps} pruning steps do not fit between epochs {start_epoch} and {end_epoch}",
                where="callbacks.pruning",
                fix="widen the epoch range or use fewer steps",
            )
        # Set by fit_to_run: what changed so the schedule ends inside the run, for the run's record.
        self.fitted: str | None = None
        self.round_to, self.ignore = round_to, list(ignore)
        self.mode, self.max_drop, self.margin, self.patience = mode, max_drop, margin, patience
        # Budget mode: the student before the latest step (to roll back to), epochs waited for recovery, whether
        # the last step has been judged, and why the schedule stopped early.
        self.snapshot: dict[str, Any] | None = None
        # Budget mode after a rollback: the smallest share known to break the budget, and the extra steps taken
        # halfway between it and the largest share that held.
        self.retries, self.retried = retries, 0
        self.too_far: float | None = None
        self.waited = 0
        self.checked_last = False
        self.stopped: str | None = None
        self.steps_done = 0
        self.history: list[dict[str, Any]] = []
        # Output width of every prunable layer before pruning: each step's goal is relative to these,
        # so rounding never compounds across steps.
        self.original_widths: dict[str, int] = {}

    def protected_layers(self, student: nn.Module, num_classes: int) -> list[nn.Module]:
        """The classifier head (the last Linear producing the class logits) and every ``ignore`` match."""
        named = dict(student.named_modules())
        heads = [m for m in named.values() if isinstance(m, nn.Linear) and m.out_features == num_classes]
        protected = heads[-1:]
        for pattern in self.ignore:
            matches = [m for name, m in named.items() if name and fnmatch.fnmatch(name, pattern)]
            if not matches:
                raise TierkitError(
                    f"pruning ignore pattern {pattern!r} matches no module of {type(student).__name__}",
                    where="callbacks.pruning.ignore",
                    fix="use globs over module names, e.g. 'features.0.*' (print(model) lists them)",
                )
            protected += matches
        return protected

    def fit_to_run(self, max_epochs: int) -> None:
        """Make the schedule end inside a run of ``max_epochs`` epochs, and say so.

        A schedule whose last step falls after the run's end would stop part-way (a lowend run pruned 29% instead
        of 50%) and still call itself that tier. Its steps are moved earlier instead, keeping one epoch after the
        last step for recovery where the run has room; fewer distinct epochs mean fewer, larger steps to the same
        target. A run that ends before the first step is left unpruned, with a warning.
        """
        last_epoch = max_epochs - 1
        if self.epochs[-1] <= last_epoch:
            return
        start = self.epochs[0]
        if start > last_epoch:
            self.fitted = f"no pruning: the first step is at epoch {start}, the run has {max_epochs} epoch(s)"
            log.warning(
                "Pruning never runs: its first step is at epoch %d but trainer.max_epochs=%d, so the student stays "
                "unpruned (raise trainer.max_epochs, or set callbacks.pruning.start_epoch/end_epoch)",
                start,
                max_epochs,
            )
            self.ratios, self.epochs = [], []
            return
        before = self.epochs
        self.place_steps(start, max(start, last_epoch - 1))
        self.fitted = f"schedule moved from epochs {before} to {self.epochs} to end within {max_epochs} epochs"
        log.warning(
            "Pruning %s (trainer.max_epochs=%d): the target %.0f%% is still reached, with less recovery between "
            "steps; set callbacks.pruning.end_epoch below trainer.max_epochs to choose the schedule yourself",
            self.fitted,
            max_epochs,
            100 * self.target,
        )

    def place_steps(self, start: int, end: int) -> None:
        """Spread the steps over epochs ``start`` to ``end``; fewer distinct epochs mean fewer, larger steps to the
        same target."""
        self.epochs = step_epochs(start, end, len(self.ratios))
        self.ratios = pruning_schedule(self.schedule, self.target, len(self.epochs))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training if the student cannot be pruned as configured."""
        if stage != "fit":
            return
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            self.fit_to_run(trainer.max_epochs)
        student, example = self._student_and_example(trainer, pl_module)
        if self.mode == "budget" and getattr(pl_module, "teacher", None) is None:
            raise TierkitError(
                "budget pruning compares the student with the teacher on validation, but this run distils from no "
                "teacher (distill.alpha=0)",
                where="callbacks.pruning.mode",
                fix="use callbacks.pruning.mode=fixed, or distil from a teacher",
            )
        self.protected_layers(student, pl_module.num_classes)
        self._remember_widths(student)
        try:
            with preserved_mode(student):
                tp.DependencyGraph().build_dependency(student, example_inputs=example)
        except Exception as exc:
            raise TierkitError(
                f"torch-pruning cannot trace {type(student).__name__}: {type(exc).__name__}: {exc}",
                where="model.student",
                fix="keep the modules it cannot handle out of pruning (callbacks.pruning.ignore=['block3.*'], globs "
                "over module names), or drop pruning with ~callbacks.pruning",
            ) from exc
        # A trial run to the final ratio on a copy, so a model that pruning breaks fails now, not epochs later.
        trial = StructuredPruning(self.target, 0, 0, 1, "oneshot", "l2", self.round_to, self.ignore)
        trial.prune_to(copy.deepcopy(student), example, self.target, pl_module.num_classes)

    def _student_and_example(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[nn.Module, torch.Tensor]:
        """The example input goes where the student's weights are: in ``setup`` Lightning has not yet moved the
        module to the accelerator, although ``pl_module.device`` already names it."""
        shape = trainer.datamodule.input_shape
        device = weights_device(pl_module.student) or pl_module.device
        return pl_module.student, torch.zeros(1, *shape, device=device)

    def check_epoch(self) -> int | None:
        """Budget mode: the epoch at whose start the last step's result is judged, one step's spacing after it."""
        if not self.epochs:
            return None
        if self.retried:
            return self.epochs[-1] + 1
        gap = self.epochs[-1] - self.epochs[-2] if len(self.epochs) > 1 else 1
        return self.epochs[-1] + max(1, gap)

    def within_budget(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Budget mode, when a step (or the check after the last one) is due: may pruning go on?

        A pruned student past the budget gets up to ``patience`` more epochs of recovery (the step waits); after
        that the latest step is rolled back and, while ``retries`` are left, a step halfway back is tried at once
        (``try_between``: True); otherwise pruning stops. An unpruned student past it moves the schedule later
        instead (``postpone``). Before the first validation there is nothing to judge, and pruning goes on.
        """
        metrics = trainer.callback_metrics
        if "val/teacher_acc" not in metrics or "val/acc" not in metrics:
            return True
        drop = float(metrics["val/teacher_acc"]) - float(metrics["val/acc"])
        if drop <= self.max_drop - self.margin:
            self.waited = 0
            return True
        if self.steps_done == 0:
            self.postpone(trainer, drop)
            return False
        if self.waited < self.patience:
            self.waited += 1
            log.info(
                "Budget pruning: the student is %.2f points under the teacher on validation (allowed %.2f); "
                "waiting for it to recover (%d/%d)",
                100 * drop,
                100 * (self.max_drop - self.margin),
                self.waited,
                self.patience,
            )
            return False
        kept_steps = self.steps_done - 1
        reached = self.share_after(kept_steps)
        judged = f"{100 * drop:.2f} points under the teacher on validation after {self.patience} epoch(s) of patience"
        self.too_far = self.ratios[kept_steps]
        broke = f"after pruning {100 * self.too_far:.0f}% the student was {judged} {self._allowed()}"
        self.restore(trainer, pl_module, reached)
        if self.try_between(trainer, pl_module, kept_steps, broke):
            return True
        self.stopped = f"{broke}: rolled back to {100 * reached:.0f}% and stopped{self._searched()}"
        log.warning("Budget pruning: %s", self.stopped)
        return False

    def share_after(self, steps: int) -> float:
        """The share of channels the first ``steps`` steps of the schedule prune (0 before any)."""
        return self.ratios[steps - 1] if steps else 0.0

    def try_between(self, trainer: L.Trainer, pl_module: L.LightningModule, kept_steps: int, why: str) -> bool:
        """Budget mode: plan one more step, due now, halfway from the share the first ``kept_steps`` steps reached
        to the smallest share that broke the budget.

        The schedule's steps are coarse (a cubic schedule's first step can remove a third of the channels), so a
        rollback alone can leave far more of the model than the budget needs. Bisecting the gap finds a smaller
        student that still holds. Not tried when no retries are left, when the halfway share keeps the same
        channels after rounding, or when the run has no room left for the step, its check and its patience.
        """
        reached = self.share_after(kept_steps)
        if self.too_far is None or self.retried >= self.retries:
            return False
        middle = (reached + self.too_far) / 2
        pruned = self.pruned_layer_names(pl_module.student, pl_module.num_classes)
        widths = [self.original_widths.get(name, 0) for name in pruned]
        if all(self.kept_width(w, middle) == self.kept_width(w, reached) for w in widths):
            return False
        epoch = trainer.current_epoch
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 2 + self.patience > trainer.max_epochs:
            return False
        self.retried += 1
        self.ratios = [*self.ratios[:kept_steps], middle]
        self.epochs = [*self.epochs[:kept_steps], epoch]
        self.steps_done, self.waited = kept_steps, 0
        log.warning(
            "Budget pruning: %s; trying %.0f%% now, halfway from %.0f%% (retry %d/%d)",
            why,
            100 * middle,
            100 * reached,
            self.retried,
            self.retries,
        )
        return True

    def _searched(self) -> str:
        if not self.retried:
            return ""
        return f" ({self.retried} retr{'y' if self.retried == 1 else 'ies'} halfway back after a rollback)"

    def _held(self) -> str:
        return f"{100 * self.ratios[-1]:.0f}% held the budget on validation"

    def _allowed(self) -> str:
        return f"(budget {100 * self.max_drop:.2f}, margin {100 * self.margin:.2f})"

    def postpone(self, trainer: L.Trainer, drop: float) -> None:
        """Budget mode, before the first step: move the schedule an epoch later instead of giving up on the student.

        A student trained from scratch is far under its teacher in its first epochs; judging it then would keep it
        unpruned for good. Nothing is pruned yet, so waiting costs nothing: the steps move to start next epoch,
        keeping their spacing, or closer together so that the last one still leaves an epoch of recovery inside
        the run. A student still past the budget when no step fits any more is kept unpruned.
        """
        epoch = trainer.current_epoch
        start, span = epoch + 1, self.epochs[-1] - self.epochs[0]
        end = start + span
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            end = min(end, trainer.max_epochs - 2)
        if end < start:
            self.stopped = (
                f"the unpruned student was still {100 * drop:.2f} points under the teacher on validation at the start "
                f"of epoch {epoch} {self._allowed()}, too late for a pruning step and its recovery: it is kept unpruned"
            )
            log.warning("Budget pruning: %s", self.stopped)
            return
        self.place_steps(start, end)
        log.info(
            "Budget pruning: the unpruned student is %.2f points under the teacher on validation (allowed %.2f); "
            "pruning starts when it is within, now at epoch %d at the earliest (steps at epochs %s)",
            100 * drop,
            100 * (self.max_drop - self.margin),
            start,
            self.epochs,
        )

    def restore(self, trainer: L.Trainer, pl_module: L.LightningModule, ratio: float) -> None:
        """Put back the student saved before the latest step, and let training go on with it."""
        student = pl_module.student
        apply_structure(student, self.snapshot["structure"], self.snapshot["state"])
        student.load_state_dict(self.snapshot["state"])
        check_same_structure_on_all_ranks(trainer, student)
        rewrap_distributed(trainer)
        rebuild_optimizers(trainer)
        forget_best_checkpoints(trainer)
        _, example = self._student_and_example(trainer, pl_module)
        self._log_step(trainer, pl_module, student, example, ratio, event="rolled back")

    def step_due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether a pruning step runs at the start of this epoch. Budget mode judges the student first: before each
        step, and one step's spacing after the last one (then a held step may lead to one more, ``try_between``)."""
        epoch = trainer.current_epoch
        if self.steps_done < len(self.ratios):
            if epoch < self.epochs[self.steps_done]:
                return False
            return self.mode != "budget" or self.within_budget(trainer, pl_module)
        if not (self.mode == "budget" and not self.checked_last and self.epochs and epoch >= self.check_epoch()):
            return False
        held = self.within_budget(trainer, pl_module)
        if held and self.steps_done == len(self.ratios):
            self.checked_last = not self.try_between(trainer, pl_module, self.steps_done, self._held())
            if self.checked_last and self.too_far is not None:
                self.stopped = (
                    f"stopped at {100 * self.ratios[-1]:.0f}%, which held the budget on validation where "
                    f"{100 * self.too_far:.0f}% had not{self._searched()}"
                )
                log.warning("Budget pruning: %s", self.stopped)
        return self.steps_done < len(self.ratios)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped is not None or not self.step_due(trainer, pl_module):
            return
        if self.mode == "budget":
            self.snapshot = {
                "structure": describe_structure(pl_module.student),
                "state": {k: v.detach().clone() for k, v in pl_module.student.state_dict().items()},
            }
        student, example = self._student_and_example(trainer, pl_module)
        goal = self.ratios[self.steps_done]
        if self.importance == "taylor":
            self._accumulate_gradients(trainer, pl_module)
        self.prune_to(student, example, goal, pl_module.num_classes)
        student.zero_grad(set_to_none=True)
        self.steps_done += 1
        check_same_structure_on_all_ranks(trainer, student)
        rewrap_distributed(trainer)
        rebuild_optimizers(trainer)
        forget_best_checkpoints(trainer)
        self._log_step(trainer, pl_module, student, example, goal)

    def prune_to(self, student: nn.Module, example: torch.Tensor, goal: float, num_classes: int) -> None:
        """Remove channels in place until every prunable layer keeps its share at cumulative ratio ``goal``."""
        self._remember_widths(student)
        with preserved_mode(student):
            protected = self.protected_layers(student, num_classes)
            pruner = tp.pruner.BasePruner(
                student,
                example,
                importance=IMPORTANCES[self.importance](),
                pruning_ratio=0.0,
                pruning_ratio_dict=self.step_ratios(student, goal, protected),
                ignored_layers=protected,
            )
            pruner.step()
            student.eval()
            try:
                with torch.no_grad():
                    student(example)
            except RuntimeError as exc:
                raise TierkitError(
                    f"after pruning, {type(student).__name__} no longer runs ({str(exc).splitlines()[0]}): "
                    "torch-pruning could not follow every dependency between its layers, as happens when data "
                    "leaves autograd (.numpy(), .item(), Python loops over values) or goes through custom ops",
                    where="callbacks.pruning",
                    fix="keep the layers around that code out of pruning (callbacks.pruning.ignore=['name.*'], globs "
                    "over module names), or drop pruning with ~callbacks.pruning",
                ) from exc

    def removed_fraction(self, student: nn.Module, num_classes: int) -> float:
        """The share of the pruned layers' original channels that is gone: what rounding left of the goal."""
        names = self.pruned_layer_names(student, num_classes)
        original = sum(self.original_widths.get(name, 0) for name in names)
        now = sum(output_width(m) for n, m in student.named_modules() if n in names)
        return 1 - now / original if original else 0.0

    def pruned_layer_names(self, student: nn.Module, num_classes: int) -> set[str]:
        """The prunable layers whose channels pruning may remove: all but the classifier head and ``ignore``."""
        protected = {id(m) for m in self.protected_layers(student, num_classes)}
        return {n for n, m in student.named_modules() if isinstance(m, PRUNABLE) and id(m) not in protected}

    def _remember_widths(self, student: nn.Module) -> None:
        if not self.original_widths:
            self.original_widths = {
                name: output_width(m) for name, m in student.named_modules() if isinstance(m, PRUNABLE)
            }

    def retarget(self, target: float) -> None:
        """Prune to ``target`` instead, on the same epochs and schedule shape (a size found for the tier)."""
        self.target = target
        self.ratios = pruning_schedule(self.schedule, target, len(self.ratios))

    def kept_width(self, original: int, goal: float) -> int:
        """Channels a layer keeps at cumulative ratio ``goal``: rounded to ``round_to``, never below it."""
        unit = self.round_to or 1
        return max(unit, round(original * (1 - goal) / unit) * unit)

    def step_ratios(self, student: nn.Module, goal: float, protected: list[nn.Module]) -> dict[nn.Module, float]:
        """Per-layer fraction of the *current* channels to remove so each layer lands on its kept width."""
        ratios = {}
        for name, module in student.named_modules():
            if not isinstance(module, PRUNABLE) or module in protected:
                continue
            current = output_width(module)
            kept = min(current, self.kept_width(self.original_widths.get(name, current), goal))
            if kept < current:
                # torch-pruning keeps int(current * (1 - ratio)) channels; the half keeps float error out.
                ratios[module] = 1 - (kept + 0.5) / current
        return ratios

    def _accumulate_gradients(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Taylor importance needs gradients of the training loss: one batch provides them."""
        x, y, *_ = next(iter(trainer.datamodule.train_dataloader()))
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        pl_module.student.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(pl_module.student(x), y).backward()

    def _log_step(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        student: nn.Module,
        example: torch.Tensor,
        goal: float,
        event: str = "pruned",
    ) -> None:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(student, example)
        kept = {name: output_width(m) for name, m in student.named_modules() if isinstance(m, PRUNABLE)}
        removed = self.removed_fraction(student, pl_module.num_classes)
        record = {
            "step": self.steps_done,
            "event": event,
            "epoch": trainer.current_epoch,
            "ratio": goal,
            "removed": removed,
            "params": int(params),
            "macs": int(macs),
            "kept": kept,
        }
        self.history.append(record)
        if not trainer.is_global_zero:
            return
        log.info(
            "Pruning step %d/%d at epoch %d (%s): %.1f%% of channels asked, %.1f%% removed after rounding to "
            "multiples of %d; %s params, %s MACs",
            self.steps_done,
            len(self.ratios),
            trainer.current_epoch,
            event,
            100 * goal,
            100 * removed,
            self.round_to or 1,
            f"{int(params):,}",
            f"{int(macs):,}",
        )
        log.debug("Channels kept per layer: %s", kept)
        metrics = {"prune/ratio": goal, "prune/removed": removed, "prune/params": float(params)}
        metrics["prune/macs"] = float(macs)
        metrics.update({f"prune/kept/{name}": float(n) for name, n in kept.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "ratios": self.ratios,
            "epochs": self.epochs,
            "history": self.history,
            "original_widths": self.original_widths,
            "snapshot": self.snapshot,
            "waited": self.waited,
            "checked_last": self.checked_last,
            "stopped": self.stopped,
            "retried": self.retried,
            "too_far": self.too_far,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("ratios"), state_dict.get("epochs")
        if saved[0] is not None and saved != (self.ratios, self.epochs):
            # The run committed to its schedule (fitted to its own trainer.max_epochs); a resume finishes that one.
            log.warning(
                "Resuming with the checkpoint's pruning schedule (epochs %s, shares %s), not this config's (%s, %s)",
                saved[1],
                [round(r, 3) for r in saved[0]],
                self.epochs,
                [round(r, 3) for r in self.ratios],
            )
            self.ratios, self.epochs = list(saved[0]), list(saved[1])
        self.steps_done = min(state_dict["steps_done"], len(self.ratios))
        self.history = state_dict.get("history", [])
        self.original_widths = state_dict.get("original_widths", self.original_widths)
        self.snapshot, self.stopped = state_dict.get("snapshot"), state_dict.get("stopped")
        self.waited, self.checked_last = state_dict.get("waited", 0), state_dict.get("checked_last", False)
        self.retried, self.too_far = state_dict.get("retried", 0), state_dict.get("too_far")
