"""Inputs that are not images: MNIST-1D sequences (1, 40) with the zoo's 1-D CNN, and a 30-feature table with the
MLP, through distillation, pruning, INT8 and export."""

import pytest
from hydra import compose, initialize_config_dir

from tierkit.cli.train import train
from tierkit.data import MNIST1DDataModule, SyntheticDataModule
from tierkit.errors import TierkitError
from tierkit.models import SmallCNN, SmallCNN1d
from tierkit.stages.export import export

from conftest import CONFIG_DIR, QUICK_PROFILE, compose_train

RECIPE = [
    "debug=tiny",
    "student=scratch",
    "~callbacks.progress",
    "trainer.max_epochs=2",
    "teacher.max_epochs=2",
    "callbacks.pruning.start_epoch=0",
    "callbacks.pruning.end_epoch=1",
    "callbacks.pruning.steps=2",
    "quantization=ptq",
    "quantization.calibration.samples=64",
    "quantization.calibration.batch_size=32",
]
KINDS = {
    "sequence": ["data=mnist1d", "data.num_samples=1000", "model=cnn1d", "data.val_size=100"],
    "table": [
        "data=synthetic",
        "data.input_shape=[30]",
        "data.mean=null",
        "data.std=null",
        "model=mlp",
        "model.teacher.hidden=[64,32]",
        "model.student.hidden=[64,32]",
    ],
}


def test_mnist1d_is_generated_locally_with_the_papers_split():
    data = MNIST1DDataModule(input_shape=[1, 40], num_classes=10, mean=None, std=None, val_size=500)
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 3500, "val": 500, "test": 1000}
    assert data.splits["train"].images.shape[1:] == (1, 40)


def test_table_features_are_normalised_one_by_one():
    data = SyntheticDataModule(input_shape=[3], num_classes=2, mean=[0.5, 0.0, 1.0], std=[0.5, 1.0, 2.0])
    assert data.mean.shape == (3,) and data.std.shape == (3,)


@pytest.mark.parametrize("kind", KINDS)
def test_non_image_inputs_train_quantize_and_export(tmp_path, kind):
    metrics = train(compose_train(tmp_path, *RECIPE, *KINDS[kind]))
    assert metrics["pruning"]["steps_done"] == 2 and metrics["quantization"]["path"] == "ptq"
    assert metrics["quantization"]["ptq"]["float_compute_ops"] == [], "real integer kernels"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = [f"run={tmp_path / 'run'}", f"output_dir={tmp_path / 'export'}", *QUICK_PROFILE]
        manifest = export(compose("export", overrides=overrides))
    shape = [1, 40] if kind == "sequence" else [30]
    assert manifest["input"]["shape"] == shape
    assert all(v["checks"]["accuracy"] is not None for v in manifest["variants"])


def test_an_image_cnn_on_sequences_says_which_model_to_use():
    with pytest.raises(TierkitError, match=r"SmallCNN takes images .* shape \[1, 40\]") as err:
        SmallCNN((1, 40), 10)
    assert "model=cnn1d" in err.value.render()
    with pytest.raises(TierkitError, match="SmallCNN1d takes sequences"):
        SmallCNN1d((1, 28, 28), 10)
