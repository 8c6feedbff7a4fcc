import functools
import logging
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from scripted_gap import TeacherAhead
from torch import nn

from tierkit.data import SyntheticDataModule
from tierkit.distill import DistillationModule
from tierkit.errors import TierkitError
from tierkit.models import SmallCNN
from tierkit.models.build import build_model
from tierkit.models.structure import describe_structure
from tierkit.onnxio import export_onnx
from tierkit.profile import ort_session
from tierkit.prune import StructuredPruning, pruning_schedule
from tierkit.utils.model_stats import model_stats

from test_models import ZOO

SHAPE = (1, 16, 16)


@pytest.mark.parametrize("kind", ["oneshot", "linear", "cubic"])
def test_schedules_end_at_target_and_grow(kind):
    ratios = pruning_schedule(kind, 0.6, 4)
    assert ratios[-1] == pytest.approx(0.6)
    assert ratios == sorted(ratios)
    assert len(ratios) == (1 if kind == "oneshot" else 4)


def test_cubic_schedule_prunes_most_early():
    cubic, linear = pruning_schedule("cubic", 0.5, 4), pruning_schedule("linear", 0.5, 4)
    assert cubic[0] > linear[0]
    assert cubic[0] == pytest.approx(0.5 * (1 - 0.75**3))


def test_kept_widths_follow_the_original_width_without_compounding():
    pruning = StructuredPruning(target=0.5, round_to=8)
    assert [pruning.kept_width(64, g) for g in (0.1, 0.3, 0.5)] == [56, 48, 32]
    assert pruning.kept_width(12, 0.5) == 8, "never below one rounding unit"
    assert StructuredPruning(target=0.5, round_to=None).kept_width(12, 0.5) == 6


def test_unknown_schedule_is_refused():
    with pytest.raises(TierkitError, match="schedule"):
        pruning_schedule("exponential", 0.5, 3)


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5, -0.1])
def test_target_outside_open_interval_is_refused(target):
    with pytest.raises(TierkitError, match=r"outside \(0, 1\)"):
        StructuredPruning(target=target)


def _data():
    return SyntheticDataModule(input_shape=list(SHAPE), num_classes=4, mean=[0.5], std=[0.3], num_samples=96)


def _module(student):
    return DistillationModule(
        student=student,
        teacher=SmallCNN(SHAPE, 4, width=0.25),
        num_classes=4,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )


def _trainer(max_epochs, callbacks, **kwargs):
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


class StopAfter(L.Callback):
    """Stops a run after ``epochs`` epochs, as a preempted job would be."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _macs_params(model):
    stats = model_stats(model, SHAPE)
    return stats["macs"], stats["params"]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_model_prunes_physically_trains_and_exports(tmp_path, name):
    student = build_model(OmegaConf.create(ZOO[name]), SHAPE, 4, where="test")
    macs_before, params_before = _macs_params(student)
    module = _module(student)
    pruning = StructuredPruning(target=0.5, start_epoch=0, end_epoch=1, steps=2, round_to=None)
    trainer = _trainer(3, [pruning], enable_checkpointing=False)
    trainer.fit(module, datamodule=_data())
    macs_after, params_after = _macs_params(student)
    assert pruning.steps_done == 2
    assert params_after < 0.6 * params_before and macs_after < 0.6 * macs_before

    optimizer = trainer.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in student.parameters()}
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 3, "the LR schedule continues across rebuilds"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3)

    path = export_onnx(student, tmp_path / name, SHAPE)
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        expected = student.eval()(x).numpy()
    actual = ort_session(path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_head_and_ignored_layers_keep_their_size():
    student = SmallCNN(SHAPE, 4, width=0.5)
    before = describe_structure(student)
    pruning = StructuredPruning(target=0.5, start_epoch=0, end_epoch=0, steps=1, ignore=["features.0.*"])
    _trainer(1, [pruning], enable_checkpointing=False).fit(_module(student), datamodule=_data())
    after = describe_structure(student)
    assert after["features.0.0"] == before["features.0.0"]
    assert after["classifier"]["out_features"] == 4
    assert after["features.3.0"]["out_channels"] < before["features.3.0"]["out_channels"]


def test_channel_counts_are_rounded():
    student = SmallCNN(SHAPE, 4, width=1.0)
    pruning = StructuredPruning(target=0.4, start_epoch=0, end_epoch=0, steps=1, round_to=8)
    _trainer(1, [pruning], enable_checkpointing=False).fit(_module(student), datamodule=_data())
    convs = [m.out_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c % 8 == 0 for c in convs)


def test_setup_traces_where_the_students_weights_are():
    """On a GPU machine Lightning's setup hook runs while the weights are still on the CPU but ``pl_module.device``
    already names the accelerator; "meta" stands in for it here."""
    module = _module(SmallCNN(SHAPE, 4))
    module._device = torch.device("meta")
    trainer = SimpleNamespace(max_epochs=2, datamodule=_data())
    StructuredPruning(target=0.5, start_epoch=0, end_epoch=1, steps=2).setup(trainer, module, "fit")
    assert next(module.student.parameters()).device.type == "cpu"


def test_ignore_pattern_matching_nothing_fails_before_training():
    pruning = StructuredPruning(target=0.5, ignore=["backbone.*"])
    with pytest.raises(TierkitError, match="matches no module"):
        _trainer(1, [pruning], enable_checkpointing=False).fit(_module(SmallCNN(SHAPE, 4)), datamodule=_data())


def test_checkpoint_rebuilds_the_pruned_structure(tmp_path):
    student = SmallCNN(SHAPE, 4, width=0.5)
    latest = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    pruning = StructuredPruning(target=0.5, start_epoch=0, end_epoch=1, steps=2)
    _trainer(3, [pruning, latest]).fit(_module(student), datamodule=_data())
    fresh = _module(SmallCNN(SHAPE, 4, width=0.5))
    _trainer(1, []).test(fresh, datamodule=_data(), ckpt_path=latest.best_model_path, verbose=False)
    assert describe_structure(fresh.student) == describe_structure(student)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(fresh.student.eval()(x), student.eval()(x), atol=1e-6)


def test_best_checkpoint_is_chosen_after_the_last_pruning_step(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/acc", mode="max")
    pruning = StructuredPruning(target=0.5, start_epoch=1, end_epoch=2, steps=2)
    student = SmallCNN(SHAPE, 4, width=0.5)
    _trainer(4, [pruning, checkpoint]).fit(_module(student), datamodule=_data())
    saved = torch.load(checkpoint.best_model_path, weights_only=True)
    assert saved["epoch"] >= 2
    assert saved["tierkit"]["structure"] == describe_structure(student)


def test_resuming_mid_schedule_reaches_the_same_structure(tmp_path):
    def pruning():
        return StructuredPruning(target=0.6, start_epoch=0, end_epoch=3, steps=4, schedule="linear")

    L.seed_everything(0)
    straight = SmallCNN(SHAPE, 4, width=0.5)
    _trainer(4, [pruning()], enable_checkpointing=False).fit(_module(straight), datamodule=_data())

    L.seed_everything(0)
    latest = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    stopped = StopAfter(epochs=2)
    _trainer(4, [pruning(), latest, stopped]).fit(_module(SmallCNN(SHAPE, 4, width=0.5)), datamodule=_data())
    resumed_pruning = pruning()
    resumed = _module(SmallCNN(SHAPE, 4, width=0.5))
    _trainer(4, [resumed_pruning], enable_checkpointing=False).fit(
        resumed, datamodule=_data(), ckpt_path=latest.best_model_path
    )
    assert resumed_pruning.steps_done == 4
    assert describe_structure(resumed.student) == describe_structure(straight)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor"])
def test_every_importance_criterion_prunes(importance):
    student = SmallCNN(SHAPE, 4, width=0.5)
    params_before = sum(p.numel() for p in student.parameters())
    pruning = StructuredPruning(target=0.5, start_epoch=0, end_epoch=0, steps=1, importance=importance, round_to=None)
    _trainer(1, [pruning], enable_checkpointing=False).fit(_module(student), datamodule=_data())
    assert sum(p.numel() for p in student.parameters()) < 0.5 * params_before


def test_unknown_importance_is_refused():
    with pytest.raises(TierkitError, match="importance"):
        StructuredPruning(importance="random")


class NeedsAMask(torch.nn.Module):
    """A forward that wants a second input: torch-pruning cannot trace it from an image alone."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.head = torch.nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x, mask):
        return self.head(x.flatten(1) * mask)


def test_untraceable_model_fails_before_training_with_the_reason():
    pruning = StructuredPruning(target=0.5)
    with pytest.raises(TierkitError, match="cannot trace NeedsAMask") as err:
        _trainer(1, [pruning], enable_checkpointing=False).fit(_module(NeedsAMask(SHAPE, 4)), datamodule=_data())
    assert "~callbacks.pruning" in str(err.value)


def test_a_schedule_longer_than_the_run_is_moved_inside_it_and_still_reaches_the_target():
    pruning = StructuredPruning(target=0.5, start_epoch=2, end_epoch=8, steps=4)
    pruning.fit_to_run(max_epochs=3)
    assert pruning.epochs == [2] and pruning.ratios == [0.5]
    assert "to end within 3 epochs" in pruning.fitted
    roomier = StructuredPruning(target=0.5, start_epoch=2, end_epoch=8, steps=4, schedule="linear")
    roomier.fit_to_run(max_epochs=6)
    assert roomier.epochs == [2, 3, 4] and roomier.ratios[-1] == pytest.approx(0.5)


def test_a_run_that_ends_before_the_first_step_is_not_pruned_and_says_so(caplog):
    pruning = StructuredPruning(target=0.5, start_epoch=2, end_epoch=8, steps=4)
    with caplog.at_level(logging.WARNING):
        pruning.fit_to_run(max_epochs=1)
    assert pruning.ratios == [] and "never runs" in caplog.text


def test_a_schedule_inside_the_run_is_left_as_it_is():
    pruning = StructuredPruning(target=0.5, start_epoch=2, end_epoch=8, steps=4)
    pruning.fit_to_run(max_epochs=25)
    assert pruning.epochs == [2, 4, 6, 8] and pruning.fitted is None


def test_the_record_says_how_much_rounding_left_of_an_extreme_target():
    student = SmallCNN(SHAPE, 4, width=0.5)
    pruning = StructuredPruning(target=0.99, start_epoch=0, end_epoch=0, steps=1, round_to=8)
    _trainer(1, [pruning], enable_checkpointing=False).fit(_module(student), datamodule=_data())
    removed = pruning.history[-1]["removed"]
    assert pruning.history[-1]["ratio"] == 0.99 and 0.3 < removed < 0.9


def _budget_run(gaps, start_epoch=1, end_epoch=3, steps=3, epochs=5, patience=0, retries=0):
    student = SmallCNN(SHAPE, 4, width=0.5)
    pruning = StructuredPruning(
        target=0.6,
        start_epoch=start_epoch,
        end_epoch=end_epoch,
        steps=steps,
        schedule="linear",
        round_to=None,
        mode="budget",
        max_drop=0.02,
        patience=patience,
        retries=retries,
    )
    _trainer(epochs, [pruning, TeacherAhead(gaps)], enable_checkpointing=False, num_sanity_val_steps=0).fit(
        _module(student), datamodule=_data()
    )
    return student, pruning


def test_budget_pruning_rolls_back_the_step_that_broke_the_budget_and_stops():
    student, pruning = _budget_run({2: 0.05})  # the student after step 2 (epoch 2) is 5 points under the teacher
    assert pruning.steps_done == 2 and "rolled back to 20%" in pruning.stopped
    assert describe_structure(student)["features.0.0"]["out_channels"] == pruning.history[0]["kept"]["features.0.0"]
    assert pruning.history[-1]["ratio"] == pytest.approx(0.2)


def test_budget_pruning_judges_the_last_step_after_its_recovery():
    student, pruning = _budget_run({1: 0.05}, start_epoch=0, end_epoch=1, steps=2)
    assert pruning.steps_done == 2 and pruning.check_epoch() == 2 and "rolled back to 30%" in pruning.stopped
    assert describe_structure(student)["features.3.0"]["out_channels"] == pruning.history[0]["kept"]["features.3.0"]


def test_budget_pruning_keeps_a_student_that_never_comes_within_budget_unpruned():
    unpruned = describe_structure(SmallCNN(SHAPE, 4, width=0.5))
    student, pruning = _budget_run(dict.fromkeys(range(5), 0.05))
    assert pruning.steps_done == 0 and "too late for a pruning step" in pruning.stopped
    assert "kept unpruned" in pruning.stopped
    assert describe_structure(student) == unpruned


def test_budget_pruning_starts_later_for_a_student_still_learning_and_still_reaches_the_target():
    # Behind the teacher after epochs 0 and 1, within budget from epoch 2: the steps planned for epochs 1-3 move to
    # 3-4, closer together so that an epoch of recovery is left inside the 6-epoch run.
    _, pruning = _budget_run({0: 0.05, 1: 0.05}, epochs=6)
    assert pruning.stopped is None and pruning.steps_done == 2
    assert [record["epoch"] for record in pruning.history] == [3, 4]
    assert pruning.history[-1]["ratio"] == pytest.approx(0.6)


def test_budget_pruning_waits_for_a_student_that_recovers_and_goes_on():
    _, pruning = _budget_run({1: 0.05}, patience=1)  # behind after step 1, caught up one epoch later
    assert pruning.steps_done == 3 and pruning.stopped is None
    assert [record["epoch"] for record in pruning.history] == [1, 3, 4]


def test_budget_pruning_rolls_back_once_patience_runs_out():
    _, pruning = _budget_run({2: 0.05, 3: 0.05}, patience=1)
    assert pruning.steps_done == 2 and "after 1 epoch(s) of patience" in pruning.stopped
    assert [record["event"] for record in pruning.history] == ["pruned", "pruned", "rolled back"]


def test_budget_pruning_retries_halfway_after_a_rollback_and_keeps_the_furthest_share_that_held():
    # Steps of 20/40/60% at epochs 1-3; 40% breaks the budget (epoch 2). Rolled back to 20% at epoch 3, then 30%
    # is tried at once and holds, then 35% (halfway to 40%) holds too: two retries, and pruning ends at 35%.
    student, pruning = _budget_run({2: 0.05}, epochs=7, retries=2)
    assert [(r["event"], round(r["ratio"], 3)) for r in pruning.history] == [
        ("pruned", 0.2),
        ("pruned", 0.4),
        ("rolled back", 0.2),
        ("pruned", 0.3),
        ("pruned", 0.35),
    ]
    assert [r["epoch"] for r in pruning.history] == [1, 2, 3, 3, 4]
    assert pruning.stopped.startswith("stopped at 35%, which held the budget on validation where 40% had not")
    assert "(2 retries halfway back after a rollback)" in pruning.stopped
    assert describe_structure(student)["features.0.0"]["out_channels"] == pruning.history[-1]["kept"]["features.0.0"]


def test_budget_pruning_bisects_back_when_a_retry_breaks_the_budget_too():
    student, pruning = _budget_run({2: 0.05, 3: 0.05}, epochs=7, retries=2)  # 40% and then 30% break it
    assert [(r["event"], round(r["ratio"], 3)) for r in pruning.history][2:] == [
        ("rolled back", 0.2),
        ("pruned", 0.3),
        ("rolled back", 0.2),
        ("pruned", 0.25),
    ]
    assert pruning.stopped.startswith("stopped at 25%, which held the budget on validation where 30% had not")
    assert describe_structure(student)["features.0.0"]["out_channels"] == pruning.history[-1]["kept"]["features.0.0"]


def test_budget_pruning_retries_only_while_the_run_has_room_for_the_step_and_its_check():
    _, pruning = _budget_run({2: 0.05}, epochs=5, retries=2)  # 30% at epoch 3 holds; no room for 35% after it
    assert [round(r["ratio"], 3) for r in pruning.history] == [0.2, 0.4, 0.2, 0.3]
    assert pruning.stopped.startswith("stopped at 30%") and "(1 retry halfway back" in pruning.stopped


def test_budget_pruning_that_stays_within_budget_runs_the_whole_schedule():
    _, pruning = _budget_run({})
    assert pruning.steps_done == 3 and pruning.stopped is None


@pytest.mark.parametrize(("max_drop", "mode"), [(0.0, "budget"), (-0.01, "budget"), (None, "budget"), (0.02, "auto")])
def test_budget_pruning_needs_a_positive_budget_and_a_known_mode(max_drop, mode):
    with pytest.raises(TierkitError, match=r"callbacks\.pruning"):
        StructuredPruning(target=0.5, mode=mode, max_drop=max_drop)


def _halfway_retry_planned(body_width: int) -> bool:
    """Whether a rollback from 68% to 45% plans a retry at 56.5%, for a convolution of ``body_width`` channels
    before a 10-class head."""
    student = nn.Sequential(nn.Conv2d(1, body_width, 3), nn.Flatten(), nn.LazyLinear(10))
    student(torch.zeros(1, *SHAPE))
    pruning = StructuredPruning(
        target=0.68, start_epoch=1, end_epoch=2, steps=2, round_to=None, mode="budget", max_drop=0.02
    )
    pruning._remember_widths(student)
    pruning.ratios, pruning.epochs, pruning.too_far = [0.45, 0.68], [1, 2], 0.68
    trainer = SimpleNamespace(current_epoch=3, max_epochs=20)
    pl_module = SimpleNamespace(student=student, num_classes=10)
    return pruning.try_between(trainer, pl_module, kept_steps=1, why="68% broke the budget")


def test_a_retry_is_planned_only_when_it_changes_a_layer_pruning_may_narrow():
    # Two channels keep one at 45% and at 56.5%: only the protected head's width would differ, so no retry.
    assert not _halfway_retry_planned(body_width=2)
    assert _halfway_retry_planned(body_width=20)  # 11 channels at 45%, 9 at 56.5%
