"""Any LightningDataModule, as it is: batches of (x, y) or dicts, through distillation, pruning, quantization
and export, with no tierkit base class."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from own_data import DictDataModule, PlainDataModule

from tierkit.cli.train import train
from tierkit.data import ForeignDataModule
from tierkit.errors import TierkitError
from tierkit.stages.export import export

from conftest import CONFIG_DIR, FAST, QUICK_PROFILE, compose_train

PLAIN = {"_target_": "tierkit.data.ForeignDataModule", "module": {"_target_": "own_data.PlainDataModule"}}


def test_input_shape_and_classes_come_from_the_module_and_its_batches():
    data = ForeignDataModule(PlainDataModule())
    assert data.num_classes == 4 and data.input_shape == (1, 16, 16)
    inputs, labels = next(iter(data.test_dataloader()))
    assert inputs.shape == (32, 1, 16, 16) and labels.dtype == torch.long


def test_dict_batches_are_read_through_the_named_keys():
    data = ForeignDataModule(DictDataModule(), keys={"input": "image", "target": "label"})
    inputs, labels = next(iter(data.val_dataloader()))
    assert inputs.shape == (32, 1, 16, 16) and labels.shape == (32,)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda: ForeignDataModule(DictDataModule()), r"is a dict without \['input', 'target'\]"),
        (
            lambda: ForeignDataModule(DictDataModule(broken=True), keys={"input": "image", "target": "label"}),
            r"without \['label'\]",
        ),
        (lambda: ForeignDataModule(PlainDataModule(), num_classes=2), r"has labels 0\.\.3, outside data.num_classes=2"),
    ],
    ids=["keys-not-named", "no-label", "label-out-of-range"],
)
def test_batches_tierkit_cannot_train_on_are_refused_with_their_split_and_index(data, message):
    with pytest.raises(TierkitError, match=message) as err:
        next(iter(data().train_dataloader()))
    assert "train batch 0" in str(err.value)


def test_a_module_without_classes_needs_them_configured():
    class NoClasses(PlainDataModule):
        num_classes = None

    with pytest.raises(TierkitError, match="has no num_classes attribute"):
        ForeignDataModule(NoClasses())


def test_a_plain_lightning_datamodule_distils_prunes_quantizes_and_exports(tmp_path):
    cfg = compose_train(
        tmp_path,
        *FAST,
        "debug=tiny",
        "quantization=ptq",
        "quantization.calibration.samples=64",
        "quantization.calibration.batch_size=32",
        "trainer.max_epochs=2",
        "callbacks.pruning.start_epoch=0",
        "callbacks.pruning.end_epoch=1",
        "callbacks.pruning.steps=2",
    )
    cfg.data = OmegaConf.create(PLAIN)
    metrics = train(cfg)
    assert metrics["pruning"]["steps_done"] == 2 and metrics["quantization"]["path"] == "ptq"
    assert metrics["teacher"]["test_acc"] is not None
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = [f"run={tmp_path / 'run'}", f"output_dir={tmp_path / 'export'}", *QUICK_PROFILE]
        manifest = export(compose("export", overrides=overrides))
    assert manifest["input"]["shape"] == [1, 16, 16] and manifest["num_classes"] == 4
    assert {v["precision"] for v in manifest["variants"]} == {"fp32", "fp16", "int8"}
