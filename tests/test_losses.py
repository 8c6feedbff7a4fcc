import pytest
import torch
import torch.nn.functional as F

from tierkit.distill import distillation_loss


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))


def test_alpha_zero_is_plain_cross_entropy(batch):
    student, teacher, labels = batch
    terms = distillation_loss(student, teacher, labels, temperature=4.0, alpha=0.0)
    assert torch.allclose(terms["loss"], F.cross_entropy(student, labels))


def test_no_teacher_is_plain_cross_entropy(batch):
    student, _, labels = batch
    terms = distillation_loss(student, None, labels, temperature=4.0, alpha=0.7)
    assert set(terms) == {"loss", "ce"}
    assert torch.allclose(terms["loss"], F.cross_entropy(student, labels))


def test_kd_term_matches_definition_with_t_squared_scaling(batch):
    student, teacher, labels = batch
    t = 3.0
    terms = distillation_loss(student, teacher, labels, temperature=t, alpha=0.4)
    p_teacher = F.softmax(teacher / t, dim=-1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=-1))).sum(-1).mean()
    assert torch.allclose(terms["kd"], t**2 * kl, atol=1e-6)
    assert torch.allclose(terms["loss"], 0.4 * terms["kd"] + 0.6 * terms["ce"])


def test_kd_gradient_scale_is_roughly_temperature_independent(batch):
    """The T^2 factor exists so soft-target gradients keep their size as T grows (Hinton et al.)."""
    _, teacher, labels = batch
    norms = []
    for t in (4.0, 8.0, 16.0):
        student = (teacher * 0.5).clone().requires_grad_(True)
        distillation_loss(student, teacher, labels, temperature=t, alpha=1.0)["loss"].backward()
        norms.append(student.grad.norm().item())
    assert max(norms) / min(norms) < 1.5


def test_kd_is_zero_when_student_matches_teacher(batch):
    _, teacher, labels = batch
    terms = distillation_loss(teacher.clone(), teacher, labels, temperature=2.0, alpha=1.0)
    assert terms["kd"].abs().item() < 1e-6


def test_teacher_logits_get_no_gradient(batch):
    student, teacher, labels = batch
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    distillation_loss(student, teacher, labels, temperature=4.0, alpha=0.5)["loss"].backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
