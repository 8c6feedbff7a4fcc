"""Every option of every config group composes, and the objects it names can be built."""

import inspect

import pytest
from hydra.utils import instantiate
from lightning import Callback, LightningDataModule, Trainer
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf, open_dict

from tierkit.cli.deprecated import apply_renamed_keys, checkpoint_student
from tierkit.export.variants import tier_budgets
from tierkit.models.build import build_model, build_student

from conftest import CONFIG_DIR, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


EXTRA = {"imagefolder": ["data.num_classes=3"], "lightning": ["data.module._target_=own_data.PlainDataModule"]}


@pytest.mark.parametrize("option", options("data"))
def test_data_options_instantiate(tmp_path, option):
    cfg = compose_train(tmp_path, f"data={option}", *EXTRA.get(option, []))
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, LightningDataModule)
    # A LightningDataModule of your own gives its shape through its batches (own_data's are 1x16x16).
    expected = [1, 16, 16] if option == "lightning" else list(cfg.data.input_shape)
    assert list(datamodule.input_shape) == expected


@pytest.mark.parametrize("option", options("model"))
@pytest.mark.parametrize("tier", options("tier"))
def test_model_options_build_teacher_larger_than_student(tmp_path, option, tier):
    data = ["data=mnist1d"] if option == "cnn1d" else []  # the 1-D CNN takes sequences
    cfg = compose_train(tmp_path, f"model={option}", f"tier={tier}", "student=scratch", *data)
    shape, classes = cfg.data.input_shape, cfg.data.num_classes
    teacher = build_model(cfg.model.teacher, shape, classes, where="model.teacher")
    student = build_student(cfg)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_tiers_order_students_and_budgets(tmp_path):
    tiers = {t: compose_train(tmp_path, f"tier={t}") for t in ("highend", "midrange", "lowend")}
    widths = [tiers[t].tier.student_width for t in ("highend", "midrange", "lowend")]
    drops = [tiers[t].tier.budgets.max_drop_vs_teacher for t in ("highend", "midrange", "lowend")]
    sizes = [tiers[t].tier.budgets.max_size_kib for t in ("highend", "midrange", "lowend")]
    targets = [tiers[t].callbacks.pruning.target for t in ("highend", "midrange", "lowend")]
    assert targets == sorted(targets) and targets[0] < targets[-1], "light pruning for highend, heavy for lowend"
    assert widths == sorted(widths, reverse=True)
    assert drops == sorted(drops)
    assert sizes == sorted(sizes, reverse=True)
    assert all(tiers[t].tier.name == t for t in tiers)


@pytest.mark.parametrize("option", options("hardware"))
def test_hardware_options_describe_ort_settings(tmp_path, option):
    import onnxruntime as ort

    hardware = OmegaConf.load(CONFIG_DIR / "hardware" / f"{option}.yaml")
    assert hardware.name == option
    assert hasattr(ort.GraphOptimizationLevel, hardware.graph_optimization_level)
    assert hardware.intra_op_num_threads >= 0


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_compose(tmp_path, option):
    cfg = compose_train(tmp_path, f"trainer={option}")
    if option in ("gpu", "ddp"):  # cannot instantiate without a GPU: every key must still be one Trainer takes
        settings = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k != "_target_"}
        inspect.signature(Trainer).bind(**settings)
        return
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer, Trainer)
    if option == "ddp_cpu":
        assert trainer.num_devices == 2


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_instantiate_offline(tmp_path, option):
    cfg = compose_train(tmp_path, f"logger={option}")
    loggers = [instantiate(entry) for entry in cfg.logger.values()]
    assert loggers and all(isinstance(lg, Logger) for lg in loggers)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            assert lg._offline, "W&B must run offline when no account is configured"


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options_instantiate(tmp_path, option):
    cfg = compose_train(tmp_path, f"callbacks={option}")
    assert all(isinstance(instantiate(entry), Callback) for entry in (cfg.callbacks or {}).values())


@pytest.mark.parametrize("group", ["debug", "experiment"])
def test_bundles_set_what_they_say(tmp_path, group):
    """Every value a bundle sets (its own file, not the groups it pulls in) is in the composed config."""
    for option in options(group):
        cfg = compose_train(tmp_path, f"{group}={option}")
        bundle = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
        values = {k: v for k, v in _leaves(OmegaConf.to_container(bundle)) if k != "defaults"}
        values = {k: v for k, v in values.items() if not (isinstance(v, str) and "${" in v)}
        assert values or option == "default", f"{group}={option} sets nothing of its own"
        for key, value in values.items():
            assert OmegaConf.select(cfg, key) == value, f"{group}={option} sets {key}={value!r}"


def _leaves(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    else:
        yield prefix, node


def test_hparams_search_switches_on_optuna(tmp_path):
    for option in options("hparams_search"):
        cfg = compose_train(tmp_path, f"hparams_search={option}", hydra_config=True)
        assert "optuna" in cfg.hydra.sweeper._target_
        assert cfg.hydra.sweeper.params
        assert cfg.optimized_metric


def test_no_kd_experiment_switches_distillation_off(tmp_path):
    assert compose_train(tmp_path, "experiment=no_kd").distill.alpha == 0


def test_a_dataset_brings_the_recipe_chosen_on_its_validation_split_and_the_command_line_wins(tmp_path):
    default = compose_train(tmp_path)
    for option in options("recipe"):
        recipe = dict(_leaves(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "recipe" / f"{option}.yaml"))))
        assert recipe, f"recipe/{option}.yaml sets nothing"
        chosen = compose_train(tmp_path, f"data={option}")
        for key, value in recipe.items():
            assert OmegaConf.select(chosen, key) == value != OmegaConf.select(default, key), key
            given = compose_train(tmp_path, f"data={option}", f"{key}={value + 1}")
            assert OmegaConf.select(given, key) == value + 1, key


def test_every_group_in_the_design_exists():
    for group in (
        "data",
        "model",
        "tier",
        "hardware",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "hydra",
        "experiment",
        "debug",
        "hparams_search",
        "local",
        "recipe",
    ):
        assert (CONFIG_DIR / group).is_dir(), group


@pytest.mark.parametrize(
    ("override", "teacher_budget", "fp32_budget"),
    [
        ("tier.budgets.max_accuracy_drop=0.03", 0.03, 0.03),  # the training gate follows the tier by default
        ("quantization.max_accuracy_drop=0.002", 0.01, 0.002),
    ],
)
def test_renamed_budget_keys_still_work_with_a_warning(tmp_path, caplog, override, teacher_budget, fp32_budget):
    cfg = compose_train(tmp_path, override)
    apply_renamed_keys(cfg)
    assert cfg.tier.budgets.max_drop_vs_teacher == teacher_budget
    assert cfg.quantization.max_drop_vs_fp32 == fp32_budget
    assert cfg.tier.budgets.max_accuracy_drop is None and cfg.quantization.max_accuracy_drop is None
    assert f"{override.split('=')[0]} is deprecated" in caplog.text


def test_a_tier_saved_before_the_rename_gets_the_new_key(tmp_path):
    """Resuming a checkpoint written before the rename brings back a tier section with the old key only."""
    cfg = compose_train(tmp_path)
    with open_dict(cfg):
        del cfg.tier.budgets["max_drop_vs_teacher"]
        cfg.tier.budgets.max_accuracy_drop = 0.04
    apply_renamed_keys(cfg)
    assert cfg.tier.budgets.max_drop_vs_teacher == 0.04 and cfg.quantization.max_drop_vs_fp32 == 0.04
    assert tier_budgets(cfg.tier) == {"max_drop_vs_teacher": 0.04, "max_size_kib": 256, "max_latency_ms": 0.3}


def test_each_kind_of_student_brings_its_own_pruning_epochs_and_older_checkpoints_get_theirs(tmp_path):
    derived, scratch = compose_train(tmp_path), compose_train(tmp_path, "student=scratch")
    assert derived.student.init == "from_teacher", "the default student is the teacher pruned"
    assert (derived.callbacks.pruning.start_epoch, derived.callbacks.pruning.end_epoch) == (0, 6)
    assert (scratch.callbacks.pruning.start_epoch, scratch.callbacks.pruning.end_epoch) == (2, 8)
    assert "pruning" not in compose_train(tmp_path, "callbacks=none").callbacks
    # A checkpoint written before the student group has no student section: it was trained from scratch.
    assert checkpoint_student(None) == scratch.student
    assert checkpoint_student({"init": "from_teacher"}) == derived.student


def test_one_optimizer_group_serves_student_teacher_qat_and_finetune(tmp_path):
    cfg = compose_train(tmp_path)
    recipes = [cfg.optimizer, cfg.teacher.optimizer, cfg.quantization.qat.optimizer, cfg.finetune.optimizer]
    assert {r._target_ for r in recipes} == {"torch.optim.AdamW"}
    assert [r.lr for r in recipes] == [0.003, 0.003, 0.0005, 0.001], "each recipe keeps its own learning rate"
    sgd = compose_train(tmp_path, "optimizer=sgd")
    assert sgd.optimizer._target_ == "torch.optim.SGD" and sgd.teacher.optimizer == cfg.teacher.optimizer
    teacher_sgd = compose_train(tmp_path, "optimizer@teacher.optimizer=sgd")
    assert teacher_sgd.teacher.optimizer.momentum == 0.9 and teacher_sgd.optimizer == cfg.optimizer


def test_one_qat_schedule_serves_the_qat_stage_and_qat_in_the_fit(tmp_path):
    stage = compose_train(tmp_path).quantization.qat.callback
    in_fit = compose_train(tmp_path, "callbacks=qat").callbacks.qat
    assert stage._target_ == in_fit._target_ == "tierkit.quant.QuantizationAwareTraining"
    assert (stage.start_epoch, in_fit.start_epoch) == (0, 10)
    assert {k: v for k, v in stage.items() if "epoch" not in k} == {k: v for k, v in in_fit.items() if "epoch" not in k}
