"""The config schema: every key shipped in conf/ has an entry, every shipped option validates, and each kind of
mistake (type, range, choice, unknown key, constructor argument, relation) is refused before any work starts.
Config overrides are fuzzed with hypothesis: the validation pass answers any value with a TierkitError or not at
all, never with another exception."""

import math
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tierkit.cli.config import main as config_main
from tierkit.cli.train import train
from tierkit.conf.describe import describe, render
from tierkit.conf.schema import TARGET_RULES, ExportSchema, Range
from tierkit.conf.validate import (
    _fits,
    config_problems,
    validate_export_config,
    validate_hardware_config,
    validate_train_config,
)
from tierkit.errors import TierkitError

from conftest import CONFIG_DIR, FAST, FUZZ_SCALE, compose_train

# Each option of each group, and the values some options need to compose into a runnable config. A recipe is never
# chosen on its own: its data option loads it, and that option's case checks its keys.
SKIPPED_GROUPS = {"hydra", "local", "hardware", "qat_schedule", "hparams_search", "recipe"}
NEEDS = {"data=lightning": ["data.module._target_=own_data.PlainDataModule"]}
OPTIONS = [
    f"{group.name}={option.stem}"
    for group in sorted(CONFIG_DIR.iterdir())
    if group.is_dir() and group.name not in SKIPPED_GROUPS and not group.name.startswith("_")
    for option in sorted(group.glob("*.yaml"))
]


@pytest.fixture(scope="module")
def default_config(tmp_path_factory):
    return compose_train(tmp_path_factory.mktemp("schema"))


@pytest.mark.parametrize("option", OPTIONS)
def test_every_key_of_every_option_has_a_schema_entry_and_validates(tmp_path, option):
    cfg = compose_train(tmp_path, option, *NEEDS.get(option, []))
    entries = describe(cfg)
    assert len(entries) > 100
    uncovered = [entry.path for entry in entries if entry.help is None]
    assert not uncovered, f"{option}: no schema entry for {uncovered}"
    assert config_problems(cfg) == []


def test_every_leaf_is_described_once(default_config):
    leaves = set()

    def walk(node, prefix=""):
        for key in node:
            child = node._get_node(key)
            if OmegaConf.is_dict(child) and len(child) and not child._is_none():
                walk(node[key], f"{prefix}{key}.")
            else:
                leaves.add(f"{prefix}{key}")

    walk(default_config)
    paths = [entry.path for entry in describe(default_config)]
    assert len(paths) == len(set(paths))
    assert set(paths) == leaves


@pytest.mark.parametrize(
    ("value", "annotation", "fits"),
    [
        ("16-mixed", Literal["16-mixed", "bf16-mixed"] | None, True),
        (16, Literal["16", "32"], False),
        ([{"lr": 1.0}], list[dict[str, float]], True),
        ([1, 2], tuple[int, ...], True),
        ([1, "x"], Sequence[int], False),
        ("abc", Sequence[str], True),
        ("abc", list[str], False),
        (3, float, True),
        (True, Literal[1], False),
        ("relu", Callable[[int], int], None),
        ("x", "ForwardRef", None),
    ],
)
def test_constructor_annotations_are_read_through_unions_literals_and_containers(value, annotation, fits):
    assert _fits(value, annotation) is fits


@pytest.mark.parametrize(
    ("overrides", "where", "message"),
    [
        (["distill.temperature=hot"], "distill.temperature", "is not of type float"),
        (["quantization.calibration.samples=1.5"], "quantization.calibration.samples", "is not of type int"),
        (["+distill.beta=1"], "distill.beta", "distill.beta is not a tierkit setting"),
        (["distill.alpha=-0.1"], "distill.alpha", "distill.alpha=-0.1 is outside [0, 1]"),
        (["tier.size_vs_teacher=0"], "tier.size_vs_teacher", "is outside (0, 1]"),
        (["tier.precisions=[fp32,int4]"], "tier.precisions", "unknown tier.precisions 'int4'"),
        (
            ["quantization.escalation.precisions=[int16,int4]"],
            "quantization.escalation.precisions",
            "unknown quantization.escalation.precisions 'int4'",
        ),
        (["tier.budgets.max_size_kib=nan"], "tier.budgets.max_size_kib", "max_size_kib=nan must be positive"),
        (["data.num_workers=-1"], "data.num_workers", "data.num_workers=-1 must be at least 0"),
        (["data.batch_size=2.5"], "data.batch_size", "data.batch_size=2.5 is not an int"),
        (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum", "is outside [0, 1)"),
        (["+optimizer.betas2=0.9"], "optimizer.betas2", "AdamW takes no argument 'betas2'"),
        (["+trainer.max_epoch=3"], "trainer.max_epoch", "Trainer takes no argument 'max_epoch'"),
        (["callbacks.last_checkpoint.dirpath=0"], "callbacks.last_checkpoint.dirpath", "dirpath=0 is not of type str"),
        (["callbacks.checkpoint.save_top_k=1.5"], "callbacks.checkpoint.save_top_k", "save_top_k=1.5 is not of type"),
        (["callbacks.pruning.start_epoch=9"], "callbacks.pruning.start_epoch / end_epoch", "after its end_epoch"),
        (["trainer.precision=bogus"], "trainer.precision", "precision=bogus is not one of 64, 32, 16,"),
        (["trainer.devices=[1,x]"], "trainer.devices", "is not of type str or int or a list of int"),
        (["model.teacher._target_=nowhere.Net"], "model.teacher._target_", "cannot import 'nowhere.Net'"),
        (["quantization.qat.epochs=1"], "quantization.qat.epochs", "activations are only quantized from epoch"),
    ],
)
def test_each_kind_of_mistake_is_refused_with_its_key(tmp_path, overrides, where, message):
    cfg = compose_train(tmp_path, *overrides)
    with pytest.raises(TierkitError) as caught:
        validate_train_config(cfg)
    assert caught.value.where.startswith(where)
    assert message in caught.value.what
    assert caught.value.fix


def test_several_mistakes_are_reported_in_one_message(tmp_path):
    cfg = compose_train(tmp_path, "distill.alpha=3", "data.batch_size=0", "+tier.colour=red")
    with pytest.raises(TierkitError, match=r"distill\.alpha=3 is outside \[0, 1\].*and 2 more: .*tier\.colour.*"):
        validate_train_config(cfg)


def test_ranges_describe_themselves():
    assert str(Range(ge=0, le=1)) == "[0, 1]"
    assert str(Range(gt=0, lt=1)) == "(0, 1)"
    assert str(Range(gt=0)) == "> 0" and Range(gt=0).refusal() == "must be positive"
    assert Range(ge=1).refusal() == "must be at least 1"
    assert not Range(ge=0).holds(math.nan)
    assert Range(ge=0, lt=1).holds(0) and not Range(ge=0, lt=1).holds(1)


def test_every_target_rule_matches_a_shipped_key(tmp_path):
    """A rule whose pattern matches no key would check nothing."""
    paths = [entry.path for entry in describe(compose_train(tmp_path, "callbacks=qat", "optimizer=sgd"))]
    unused = [pattern for pattern in TARGET_RULES if not any(fnmatchcase(path, pattern) for path in paths)]
    assert not unused


def test_config_command_describes_and_checks(capsys):
    assert config_main(["describe", "tier", "tier=lowend"]) == 0
    shown = capsys.readouterr().out
    assert "tier.budgets.max_drop_vs_teacher" in shown and "0.02" in shown and "> 0" in shown
    assert "callbacks." not in shown
    assert config_main(["check", "tier=lowend"]) == 0
    assert "config is valid" in capsys.readouterr().out
    assert config_main(["check", "data.batch_size=0"]) == 2
    assert "data.batch_size=0 must be at least 1, set by the command line" in capsys.readouterr().err
    assert config_main(["describe", "no_such_section"]) == 2
    assert config_main(["check", "no_such_key=1"]) == 2
    assert "Could not override 'no_such_key'" in capsys.readouterr().err


def test_render_keeps_a_row_per_key(default_config):
    entries = describe(default_config)
    table = render(entries, "distill")
    assert table.count("\n") == 1 + sum(e.path.startswith("distill.") for e in entries)


# Values hypothesis tries for any key: wrong types, empty, huge, negative, NaN and infinities.
ODD_VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "''", "null", "[]", "{}", "true", "1e308", "-1e308", "[1,2]"]),
    st.integers(min_value=-(2**63), max_value=2**63).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f!r}"),
    st.text(alphabet="abcxyz_", min_size=1, max_size=6),
)
FUZZED_KEYS = sorted(
    {
        entry.path
        for option in ("tier=lowend", "callbacks=qat")
        for entry in describe(compose_train(Path("composed-only"), option))
        if entry.type != "hydra" and not entry.path.startswith(("paths.", "logger.", "callbacks.checkpoint"))
    }
)


@settings(
    max_examples=150 * FUZZ_SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=st.sampled_from(FUZZED_KEYS), value=ODD_VALUES)
@example(key="callbacks.pruning.start_epoch", value="null")  # found by hypothesis: the relations compared None
@example(key="callbacks.pruning.round_to", value="null")  # null is allowed here: no rounding
def test_any_override_is_validated_or_refused_never_crashes(tmp_path, key, value):
    try:
        cfg = compose_train(tmp_path, "callbacks=qat", f"{key}={value}")
    except Exception:  # Hydra refuses the override itself (a dict where a value was, an unparsable string)
        event("refused by Hydra")
        return
    try:
        validate_train_config(cfg)
        event("accepted")
    except TierkitError as exc:
        event("refused by the schema")
        assert exc.where and exc.fix


def test_every_key_of_the_export_config_has_a_schema_entry_and_validates(tmp_path):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("export", overrides=[f"output_dir={tmp_path / 'export'}", f"paths.output_dir={tmp_path}"])
    entries = describe(cfg, ExportSchema)
    assert not [entry.path for entry in entries if entry.help is None]
    assert {"profiling.repeats", "calibration.method", "int8_weight_bits", "wandb.offline"} <= {e.path for e in entries}
    validate_export_config(cfg)
    cfg.profiling.graph_optimization_levels = ["ORT_ENABLE_EVERYTHING"]
    with pytest.raises(TierkitError, match=r"unknown profiling\.graph_optimization_levels 'ORT_ENABLE_EVERYTHING'"):
        validate_export_config(cfg)
    cfg.profiling.graph_optimization_levels = ["ORT_ENABLE_ALL"]
    cfg.ship_latency_tolerance = -0.05
    with pytest.raises(TierkitError, match=r"ship_latency_tolerance=-0\.05 must be at least 0"):
        validate_export_config(cfg)


@pytest.mark.parametrize("option", sorted(path.stem for path in (CONFIG_DIR / "hardware").glob("*.yaml")))
def test_every_hardware_config_validates(option):
    validate_hardware_config(OmegaConf.load(CONFIG_DIR / "hardware" / f"{option}.yaml"), option)


def test_a_hardware_config_of_your_own_is_checked_and_named(tmp_path):
    config = OmegaConf.load(CONFIG_DIR / "hardware" / "cpu_1thread.yaml")
    config.intra_op_num_threads = -2
    with pytest.raises(TierkitError, match=r"intra_op_num_threads=-2 must be at least 0, set by hardware/phone\.yaml"):
        validate_hardware_config(config, "phone")


def test_config_command_checks_the_export_config(capsys):
    assert config_main(["--export", "check", "profiling.warmup=-1"]) == 2
    assert "profiling.warmup=-1 must be at least 0, set by the command line" in capsys.readouterr().err
    assert config_main(["--export", "describe", "profiling"]) == 0
    assert "profiling.plot_hardware" in capsys.readouterr().out


def test_null_is_refused_or_allowed_as_each_key_means_it(tmp_path):
    validate_train_config(compose_train(tmp_path, "callbacks.pruning.round_to=null", "teacher.ckpt_path=null"))
    with pytest.raises(TierkitError, match=r"callbacks\.pruning\.steps is null"):
        validate_train_config(compose_train(tmp_path, "callbacks.pruning.steps=null"))
    with pytest.raises(TierkitError, match=r"distill\.alpha=None is not of type float"):
        validate_train_config(compose_train(tmp_path, "distill.alpha=null"))


# Keys whose accepted values set how long a run takes, or where it writes: left out of the fuzzed runs below.
LENGTH_OR_PLACE = ("trainer.", "teacher.max_epochs", "data.num_samples", "paths.", "teacher.cache_dir", "ckpt_path")
RUN_KEYS = [key for key in FUZZED_KEYS if not key.startswith(LENGTH_OR_PLACE) and not key.startswith("quantization.")]
SMALL_VALUES = st.one_of(ODD_VALUES, st.integers(min_value=-2, max_value=4).map(str), st.sampled_from(["0.5", "1.0"]))


@pytest.mark.slow
@settings(
    max_examples=12 * FUZZ_SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=st.sampled_from(RUN_KEYS), value=SMALL_VALUES)
# Found by hypothesis: a number as a checkpoint folder passed validation and crashed inside Lightning.
@example(key="callbacks.last_checkpoint.dirpath", value="0")
def test_an_override_the_schema_accepts_runs_or_is_refused_with_one_message(tmp_path_factory, key, value):
    """Past validation, a tiny run either finishes or stops with a TierkitError, and writes only its run folder
    and the teacher cache."""
    root = tmp_path_factory.mktemp("fuzzed-run")
    try:
        cfg = compose_train(root, *FAST, "debug=tiny", f"{key}={value}")
        validate_train_config(cfg)
    except Exception:
        event("refused before the run")
        return
    try:
        train(cfg)
        event("ran")
    except TierkitError as exc:
        event("refused during the run")
        assert exc.where and exc.fix
    assert {path.name for path in root.iterdir()} <= {"run", "cache"}
