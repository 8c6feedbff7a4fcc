"""Your own model and your own trained teacher, as they are: constructors tierkit does not know, and teacher
weights saved by plain PyTorch (state_dict, safetensors, a Lightning checkpoint)."""

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from own_models import FixedFlatten, Payload, SeparableNet, TinyConvNet
from safetensors.torch import save_file

from tierkit.cli.train import train
from tierkit.distill.teacher import load_teacher
from tierkit.errors import TierkitError
from tierkit.models.build import build_model, build_student
from tierkit.models.checkpoint import load_student
from tierkit.prune import StructuredPruning
from tierkit.prune.sizing import model_size, ratio_for_size
from tierkit.stages.export import export
from tierkit.stages.teacher import obtain_teacher
from tierkit.utils.instantiate import instantiate

from conftest import CONFIG_DIR, QUICK_PROFILE, compose_train, run_cli

SHAPE, CLASSES = (1, 16, 16), 4
# A quick profile on the lowend tier's budget hardware.
QUICK = [*(o for o in QUICK_PROFILE if not o.startswith("profiling.hardware")), "profiling.hardware=[cpu_1thread]"]
TINY_CONV = {"_target_": "own_models.TinyConvNet", "num_classes_arg": "n_classes", "width": 8}
SEPARABLE = {
    "_target_": "own_models.SeparableNet",
    "input_shape_arg": "image_shape",
    "num_classes_arg": "classes",
    "channels": [8, 16],
}
KEYWORD = {"_target_": "own_models.KeywordNet", "num_classes_arg": "classes", "in_features": 256, "hidden": 16}


@pytest.mark.parametrize("config", [TINY_CONV, SEPARABLE, KEYWORD], ids=["conv", "separable", "kwargs"])
def test_models_get_the_data_facts_under_their_own_argument_names(config):
    model = build_model(OmegaConf.create(config), SHAPE, CLASSES, where="model.teacher")
    assert model(torch.zeros(2, *SHAPE)).shape == (2, CLASSES)


def test_a_tier_width_never_replaces_a_models_own_width(caplog):
    """TinyConvNet's width is a channel count: the tier's multiplier must not reach it, and a note says so."""
    with caplog.at_level(logging.INFO):
        model = build_model(OmegaConf.create(TINY_CONV), SHAPE, CLASSES, "model.student", width_multiplier=0.375)
    assert model.features[0].out_channels == 8
    assert "names no width_multiplier_arg" in caplog.text
    mapped = {**TINY_CONV, "width_multiplier_arg": "dropout"}  # a multiplier-like argument the config points at
    with caplog.at_level(logging.INFO):
        model = build_model(OmegaConf.create(mapped), SHAPE, CLASSES, "model.student", width_multiplier=0.25)
    assert model.head[1].p == 0.25


def test_the_zoo_student_takes_the_tiers_width(tmp_path):
    widths = {}
    for tier in ("highend", "lowend"):
        cfg = compose_train(tmp_path, "data=synthetic", f"tier={tier}", "student=scratch")
        widths[tier] = sum(p.numel() for p in build_student(cfg).parameters())
    assert widths["lowend"] < widths["highend"]


@pytest.mark.parametrize(
    ("config", "message", "where"),
    [
        ({**TINY_CONV, "depth": 3}, "TinyConvNet takes no argument 'depth', set by the model config", "model.x.depth"),
        (
            {"_target_": "own_models.TinyConvNet", "width": 8},
            "TinyConvNet needs argument 'n_classes', which no config sets",
            "model.x.n_classes",
        ),
        ({**TINY_CONV, "num_classes_arg": "labels"}, "names 'labels', but TinyConvNet takes no", "num_classes_arg"),
        ({"_target_": "no_such_package.Net"}, "cannot import 'no_such_package.Net'", "model.x._target_"),
    ],
    ids=["unexpected", "missing", "bad-mapping", "not-importable"],
)
def test_a_constructor_mismatch_names_the_argument_and_where_it_was_set(config, message, where):
    with pytest.raises(TierkitError, match=message) as err:
        build_model(OmegaConf.create(config), SHAPE, CLASSES, "model.x")
    assert where in err.value.render()


def _trained_teacher() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet(1, CLASSES, width=8).eval()


def _save(teacher, path, kind):
    """The ways a trained model exists outside tierkit."""
    if kind == "state_dict":
        torch.save(teacher.state_dict(), path)
    elif kind == "safetensors":
        save_file(teacher.state_dict(), str(path))
    elif kind == "lightning":  # a LightningModule that keeps its network as self.model
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in teacher.state_dict().items()}}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("state_dict", "teacher.pt"),
        ("state_dict", "teacher.pth"),
        ("safetensors", "t.safetensors"),
        ("lightning", "l.ckpt"),
    ],
)
def test_teacher_weights_load_from_the_files_people_have(tmp_path, kind, name):
    teacher = _trained_teacher()
    path = _save(teacher, tmp_path / name, kind)
    loaded, info = load_teacher(path, OmegaConf.create(TINY_CONV), SHAPE, CLASSES)
    probe = torch.randn(3, *SHAPE)
    assert torch.equal(loaded(probe), teacher(probe))
    assert info["weights_format"] == {"state_dict": "state_dict", "safetensors": "safetensors"}.get(
        kind, "Lightning checkpoint"
    )


def test_a_lightning_prefix_can_be_named_and_a_wrong_one_is_explained(tmp_path):
    path = _save(_trained_teacher(), tmp_path / "l.ckpt", "lightning")
    load_teacher(path, OmegaConf.create(TINY_CONV), SHAPE, CLASSES, prefix="model.")
    with pytest.raises(TierkitError, match=r"no key of the weights file starts with 'net\.'.*features"):
        load_teacher(path, OmegaConf.create(TINY_CONV), SHAPE, CLASSES, prefix="net.")


def test_weights_of_another_architecture_list_what_differs(tmp_path):
    path = _save(_trained_teacher(), tmp_path / "teacher.pt", "state_dict")
    wider = {**TINY_CONV, "width": 12}
    with pytest.raises(TierkitError, match=r"first differing shape features\.0\.weight: file \(8, 1, 3, 3\)"):
        load_teacher(path, OmegaConf.create(wider), SHAPE, CLASSES)
    with pytest.raises(TierkitError, match=r"missing \(body\..*unexpected \(features\."):
        load_teacher(path, OmegaConf.create(SEPARABLE), SHAPE, CLASSES)


def test_a_file_with_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": Payload(str(marker))}, path)
    with pytest.raises(TierkitError, match="refuses to load"):
        load_teacher(path, OmegaConf.create(TINY_CONV), SHAPE, CLASSES)
    assert not marker.exists(), "the payload must never run"


def test_a_teacher_at_chance_is_flagged_before_it_distils(tmp_path, caplog):
    teacher = TinyConvNet(1, CLASSES, width=8)
    torch.nn.init.zeros_(teacher.head[2].weight)  # always the same class: chance on balanced data
    path = _save(teacher, tmp_path / "teacher.pt", "state_dict")
    cfg = compose_train(tmp_path, "data=synthetic", f"teacher.ckpt_path={path}")
    cfg.model.teacher = OmegaConf.create(TINY_CONV)
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    with caplog.at_level(logging.INFO):
        _, info = obtain_teacher(cfg, datamodule)
    assert info["val_acc"] < 0.4 and "near chance" in caplog.text
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").iterdir())


def _train_plainly(model, datamodule, steps: int = 40):
    """A teacher trained the way users train theirs: a plain PyTorch loop, no tierkit."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = iter(datamodule.train_dataloader())
    for _ in range(steps):
        try:
            images, labels = next(batches)[:2]
        except StopIteration:
            batches = iter(datamodule.train_dataloader())
            images, labels = next(batches)[:2]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """tier=lowend on a model and a teacher tierkit has never seen, in-process, then export."""
    root = tmp_path_factory.mktemp("own")
    cfg = compose_train(
        root,
        "data=synthetic",
        "debug=tiny",
        "tier=lowend",
        "student=scratch",
        "~callbacks.progress",
        "quantization=ptq",
        "quantization.calibration.samples=64",
        "quantization.calibration.batch_size=32",
        "trainer.max_epochs=2",
        "callbacks.pruning.start_epoch=0",
        "callbacks.pruning.end_epoch=2",
        "callbacks.pruning.steps=2",
    )
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    torch.manual_seed(0)
    teacher = _train_plainly(TinyConvNet(1, CLASSES, width=16), datamodule)
    torch.save(teacher.state_dict(), root / "teacher.pt")
    cfg.teacher.ckpt_path = str(root / "teacher.pt")
    cfg.model = OmegaConf.create({"teacher": {**TINY_CONV, "width": 16}, "student": TINY_CONV})
    metrics = train(cfg)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        export_cfg = compose(
            "export",
            overrides=[
                f"run={root / 'run'}",
                f"output_dir={root / 'export'}",
                *QUICK,
                "profiling.hardware=[cpu_1thread]",
            ],
        )
    return root, metrics, export(export_cfg)


def test_own_model_and_teacher_go_through_a_tier_and_export(own_run):
    root, metrics, manifest = own_run
    teacher = metrics["teacher"]
    assert teacher["weights_format"] == "state_dict" and teacher["val_acc"] > 0.5, "the plain teacher was scored"
    assert teacher["architecture"] == metrics["student"]["architecture"] == "TinyConvNet"
    assert metrics["pruning"]["steps_done"] > 0 and metrics["student"]["params"] < teacher["params"]
    assert not (root / "cache" / "teachers").exists(), "a given teacher is never trained"
    variants = {v["name"]: v for v in manifest["variants"]}
    assert {"lowend-fp32", "lowend-int8", "lowend-int8-w7"} <= set(variants)
    assert variants["lowend-int8"]["float_compute_ops"] == [], "real integer kernels for every conv and matmul"
    assert manifest["teacher"]["params"] == teacher["params"]


MODEL_FILE = """\
# Your model, described by its own constructor's arguments (and how tierkit's facts are spelled in it).
teacher:
  _target_: own_models.TinyConvNet
  num_classes_arg: n_classes
  width: 16
student:
  _target_: own_models.TinyConvNet
  num_classes_arg: n_classes
  width: 8
"""


@pytest.mark.slow
def test_a_model_and_teacher_from_outside_the_repository_through_the_commands(tmp_path):
    """As a user does it: a model module and a model config in their own folder, a teacher saved by torch.save,
    then train.py tier=lowend and export.py with no adapter code."""
    shutil.copy(Path(__file__).with_name("own_models.py"), tmp_path / "own_models.py")
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mynet.yaml").write_text(MODEL_FILE)
    torch.manual_seed(0)
    datamodule = instantiate(OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml"), where="data")
    datamodule.setup()
    torch.save(_train_plainly(TinyConvNet(1, CLASSES, width=16), datamodule).state_dict(), tmp_path / "teacher.pt")
    run = tmp_path / "outputs" / "mine"
    result = run_cli(
        tmp_path,
        "--config-dir",
        str(tmp_path / "myconf"),
        "model=mynet",
        "tier=lowend",
        "teacher.ckpt_path=teacher.pt",
        "data=synthetic",
        "debug=tiny",
        "~callbacks.progress",
        "quantization.calibration.samples=64",
        "quantization.calibration.batch_size=32",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # The default student is the teacher pruned; this teacher is too small for lowend's share with channels kept
    # in multiples of 8, so it is pruned as far as it goes, and the run says so.
    assert "Student: the teacher pruned to" in result.stdout + result.stderr
    assert "tier.size_vs_teacher=0.046 is out of reach" in result.stdout + result.stderr
    assert "on validation before distilling (state_dict from" in result.stdout
    out = tmp_path / "exports" / "mine"
    result = run_cli(tmp_path, f"run={run}", f"output_dir={out}", *QUICK, script="export.py")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {v["tier"] for v in manifest["variants"]} == {"lowend"}
    assert manifest["teacher"]["source"] == str((tmp_path / "teacher.pt").resolve())


def test_pruning_ratio_for_a_share_of_the_teacher(caplog):
    """The ratio found keeps at most the asked share, and a clearly smaller ratio would keep more."""
    teacher = SeparableNet(SHAPE, CLASSES, channels=(32, 64))
    example = torch.zeros(1, *SHAPE)
    pruning = StructuredPruning(target=0.5, round_to=1)
    full = model_size(teacher, example)
    for measure in ("params", "macs"):
        ratio, size = ratio_for_size(pruning, teacher, example, CLASSES, 0.1, measure)
        assert size[measure] <= 0.1 * full[measure]
        bigger, _ = ratio_for_size(pruning, teacher, example, CLASSES, 0.2, measure)
        assert bigger < ratio
    # Layers that keep at least 64 channels cannot reach 1% of the teacher: pruned as far as they go, and said.
    with caplog.at_level(logging.WARNING, logger="tierkit.prune.sizing"):
        ratio, size = ratio_for_size(StructuredPruning(target=0.5, round_to=64), teacher, example, CLASSES, 0.01)
    assert ratio == 0.99 and size["params"] > 0.01 * full["params"]
    assert "tier.size_vs_teacher=0.01 is out of reach" in caplog.text
    with pytest.raises(TierkitError, match="unknown size measure 'flops'"):
        ratio_for_size(pruning, teacher, example, CLASSES, 0.1, "flops")


def _from_teacher_run(root, tier: str, *extra: str):
    """student=from_teacher on SeparableNet, a family tierkit does not ship, with a plainly trained teacher."""
    cfg = compose_train(
        root,
        "data=synthetic",
        "debug=tiny",
        f"tier={tier}",
        "student=from_teacher",
        "~callbacks.progress",
        "callbacks.pruning.round_to=1",
        "callbacks.pruning.end_epoch=1",
        "callbacks.pruning.steps=2",
        "trainer.max_epochs=2",
        "quantization=ptq",
        "quantization.calibration.samples=64",
        "quantization.calibration.batch_size=32",
        *extra,
    )
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    torch.manual_seed(0)
    separable = {**SEPARABLE, "channels": [32, 64]}
    teacher = _train_plainly(build_model(OmegaConf.create(separable), SHAPE, CLASSES, "teacher"), datamodule)
    torch.save(teacher.state_dict(), root / "teacher.pt")
    cfg.teacher.ckpt_path = str(root / "teacher.pt")
    cfg.model = OmegaConf.create({"teacher": separable, "student": {"_target_": "unused.Model"}})
    return teacher, train(cfg)


def test_a_student_derived_from_the_teacher_inherits_its_weights(tmp_path):
    """With the learning rate at zero, every weight the derived student kept is the teacher's own."""
    teacher, metrics = _from_teacher_run(tmp_path, "lowend", "optimizer.lr=0", "quantization=off")
    student, config = load_student(metrics["checkpoints"]["last"])
    assert config.model.student == config.model.teacher, "checkpoints rebuild the teacher's architecture"
    size = model_size(student, torch.zeros(1, *SHAPE))["params"]
    assert size == metrics["student"]["params"] <= 0.046 * metrics["teacher"]["params"]
    first_teacher, first_student = teacher.body[1].weight, student.body[1].weight  # pointwise convs
    kept = [
        i for i in range(first_teacher.shape[0]) if any(torch.equal(first_teacher[i], row) for row in first_student)
    ]
    assert len(kept) == first_student.shape[0], "every kept filter is one of the teacher's"


@pytest.mark.parametrize("tier", ["highend", "midrange", pytest.param("lowend", marks=pytest.mark.slow)])
def test_derived_students_meet_each_tier_size_and_export_to_integer_kernels(tmp_path, tier):
    _, metrics = _from_teacher_run(tmp_path, tier)
    cfg = compose_train(tmp_path, f"tier={tier}")
    assert metrics["student"]["params"] <= cfg.tier.size_vs_teacher * metrics["teacher"]["params"]
    assert metrics["student"]["architecture"] == "SeparableNet"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = [f"run={tmp_path / 'run'}", f"output_dir={tmp_path / 'export'}", *QUICK, "precisions=[fp32,int8]"]
        hardware = f"profiling.hardware=[{cfg.tier.budget_hardware}]"
        manifest = export(compose("export", overrides=[*overrides, hardware]))
    int8 = [v for v in manifest["variants"] if v["precision"] == "int8"]
    assert len(int8) == 2 and all(v["float_compute_ops"] == [] for v in int8), [v["float_compute_ops"] for v in int8]


def test_a_model_pruning_would_break_is_refused_before_training_with_a_way_out():
    model = FixedFlatten(1, CLASSES)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(input_shape=SHAPE), max_epochs=25)
    module = SimpleNamespace(student=model, num_classes=CLASSES, device=torch.device("cpu"))
    with pytest.raises(TierkitError, match=r"after pruning, FixedFlatten no longer runs \(shape .* is invalid") as err:
        StructuredPruning(target=0.5, round_to=1).setup(trainer, module, "fit")
    assert "callbacks.pruning.ignore" in err.value.render()
    assert model.conv.out_channels == 16, "the trial prunes a copy"
    StructuredPruning(target=0.5, round_to=1, ignore=["conv"]).setup(trainer, module, "fit")
