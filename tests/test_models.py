import functools

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tierkit.data import SyntheticDataModule
from tierkit.distill import DistillationModule
from tierkit.errors import TierkitError
from tierkit.models import MLP, CifarResNet, MobileNetV2, SeparableCNN, SmallCNN
from tierkit.models.build import build_model


class UserNet(nn.Module):
    """A model defined outside tierkit, named by _target_ like any zoo model."""

    def __init__(self, input_shape, num_classes, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.net(x))


ZOO = {
    "cnn": {"_target_": "tierkit.models.SmallCNN", "width": 0.25},
    "resnet20": {"_target_": "tierkit.models.CifarResNet", "depth": 20, "width": 0.25},
    "resnet56": {"_target_": "tierkit.models.CifarResNet", "depth": 56, "width": 0.25},
    "mobilenetv2": {"_target_": "tierkit.models.MobileNetV2", "width": 0.35},
    "mlp": {"_target_": "tierkit.models.MLP", "width": 0.25},
    "separable": {"_target_": "tierkit.models.SeparableCNN", "width": 0.375},
    "user": {"_target_": f"{__name__}.UserNet", "hidden": 16},
}


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_fit_any_input_shape(name, shape):
    model = build_model(OmegaConf.create(ZOO[name]), shape, 7, where="test")
    assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("cls", [SmallCNN, CifarResNet, MobileNetV2, MLP, SeparableCNN])
def test_width_shrinks_models(cls):
    def count(width):
        return sum(p.numel() for p in cls((1, 28, 28), 10, width=width).parameters())

    assert count(0.25) < count(0.5) < count(1.0)


def test_separable_cnn_fits_more_channels_in_the_parameters_of_a_plain_one():
    """The reason the model exists: at about the plain CNN's width-0.25 parameters, twice its last-stage channels."""

    def params(model):
        return sum(p.numel() for p in model.parameters())

    plain, separable = SmallCNN((1, 28, 28), 10, width=0.25), SeparableCNN((1, 28, 28), 10, width=0.375)
    assert params(separable) < 20_000 and params(plain) < 20_000
    assert separable.classifier.in_features >= 2 * plain.classifier.in_features
    depthwise = [m for m in separable.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 2 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_separable_cnn_rejects_a_stage_count_it_does_not_have():
    with pytest.raises(TierkitError, match="full_conv_stages=4 is not a number of stages"):
        SeparableCNN((1, 28, 28), 10, full_conv_stages=4)


def test_resnet_rejects_invalid_depth():
    with pytest.raises(TierkitError, match="6n\\+2"):
        CifarResNet((3, 32, 32), 10, depth=21)


def test_build_model_explains_a_bad_target():
    with pytest.raises(TierkitError, match="SmallCNN takes no argument 'depth', set by the model config") as err:
        config = OmegaConf.create({"_target_": "tierkit.models.SmallCNN", "depth": 3})
        build_model(config, (1, 8, 8), 10, "model.student")
    assert "model.student.depth" in str(err.value)


def test_build_model_refuses_non_modules():
    with pytest.raises(TierkitError, match=r"not a torch\.nn\.Module"):
        build_model(OmegaConf.create({"_target_": "builtins.dict"}), (1, 8, 8), 10, "model.student")


def _module(student, teacher=None, **kwargs):
    return DistillationModule(
        student=student,
        teacher=teacher,
        num_classes=4,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        **kwargs,
    )


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_model_runs_fast_dev_run_with_a_teacher(name):
    data = SyntheticDataModule(input_shape=[1, 16, 16], num_classes=4, mean=[0.5], std=[0.3], num_samples=64)
    student = build_model(OmegaConf.create(ZOO[name]), (1, 16, 16), 4, where="test")
    teacher = SmallCNN((1, 16, 16), 4, width=0.25)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.fit(_module(student, teacher), datamodule=data)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "teacher weights moved"


def test_teacher_is_frozen_out_of_optimizer_and_checkpoint():
    student, teacher = SmallCNN((1, 16, 16), 4, width=0.25), SmallCNN((1, 16, 16), 4, width=0.5)
    module = _module(student, teacher)
    module.train()
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.parameters()}
    assert all(k.startswith("student.") for k in module.state_dict())


def test_teacher_logit_cache_matches_live_teacher():
    data = SyntheticDataModule(input_shape=[1, 16, 16], num_classes=4, mean=[0.5], std=[0.3], num_samples=64)
    teacher = SmallCNN((1, 16, 16), 4, width=0.25)
    module = _module(SmallCNN((1, 16, 16), 4, width=0.25), teacher)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=data)
    assert module.cached_teacher_logits is not None
    x, _, index = next(iter(data.train_dataloader()))
    with torch.no_grad():
        live = teacher(x)
    assert torch.allclose(module.teacher_logits(x, index), live, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "match"), [({"alpha": 1.5}, "alpha"), ({"temperature": 0.0}, "temperature")])
def test_invalid_distillation_settings_are_refused(kwargs, match):
    with pytest.raises(TierkitError, match=match):
        _module(SmallCNN((1, 8, 8), 4), SmallCNN((1, 8, 8), 4), **kwargs)


def test_nan_loss_stops_training_with_a_clear_message():
    data = SyntheticDataModule(input_shape=[1, 16, 16], num_classes=4, mean=[0.5], std=[0.3], num_samples=64)
    module = _module(SmallCNN((1, 16, 16), 4, width=0.25))
    with torch.no_grad():
        module.student.classifier.bias.fill_(float("nan"))
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(TierkitError, match="loss became nan"):
        trainer.fit(module, datamodule=data)
