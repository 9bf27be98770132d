"""EMA teacher: hand-computed EMA, frozen copy, momentum schedule, collapse monitors."""

import math

import torch
from torch import nn

from skysense.pretrain.teacher import collapse_monitors, cosine_momentum, ema_update_, make_teacher


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))


def test_ema_hand_case_momentum_0_9():
    student = small()
    teacher = make_teacher(student)
    with torch.no_grad():
        student[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        student[0].bias.copy_(torch.tensor([3.0]))
        teacher[0].weight.copy_(torch.tensor([[0.0, -10.0]]))
        teacher[0].bias.copy_(torch.tensor([1.0]))
        student[1].running_mean.fill_(5.0)
    ema_update_(teacher, student, momentum=0.9)
    # 0.9 * 0 + 0.1 * 1, 0.9 * -10 + 0.1 * 2
    torch.testing.assert_close(teacher[0].weight, torch.tensor([[0.1, -8.8]]))
    torch.testing.assert_close(teacher[0].bias, torch.tensor([1.2]))  # 0.9*1 + 0.1*3
    torch.testing.assert_close(teacher[1].running_mean, torch.tensor([5.0]))  # buffers copied
    torch.testing.assert_close(student[0].weight, torch.tensor([[1.0, 2.0]]))  # student untouched


def test_teacher_is_a_frozen_independent_copy():
    student = small().train()
    teacher = make_teacher(student)
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    torch.testing.assert_close(teacher[0].weight, student[0].weight)
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert not torch.equal(teacher[0].weight, student[0].weight)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == 0.996
    assert abs(cosine_momentum(50, 100) - 0.998) < 1e-12
    assert cosine_momentum(100, 100) == 1.0
    assert cosine_momentum(500, 100) == 1.0
    values = [cosine_momentum(s, 100) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_collapse_monitors():
    k = 8
    # uniform teacher outputs: entropy log K; identical features: std 0
    out = collapse_monitors(torch.zeros(4, k), torch.zeros(1, k), 0.04, torch.ones(4, 3))
    assert abs(out["teacher_entropy"] - math.log(k)) < 1e-5 and abs(out["teacher_entropy_rel"] - 1) < 1e-6
    assert out["feature_std"] == 0.0
    # sharp one-hot outputs on distinct prototypes: entropy ~0, marginal entropy log 4
    logits = torch.eye(k)[:4] * 10
    out = collapse_monitors(logits, torch.zeros(1, k), 0.04, torch.eye(4))
    assert out["teacher_entropy"] < 1e-6
    assert abs(out["teacher_marginal_entropy"] - math.log(4)) < 1e-5
    assert out["feature_std"] > 0.4
    assert all(isinstance(v, float) for v in out.values())
