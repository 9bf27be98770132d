"""The EMA teacher g' of the self-distillation (paper Sec. 3.2; DINO, Caron et al. 2021, Sec. 3.1).

``theta' <- m theta' + (1 - m) theta`` after every optimiser step, m following a cosine schedule from
``base`` (0.996) to 1. Buffers are copied, not averaged. The teacher stays in eval mode, so drop-path
never fires in it, and never needs gradients.
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def make_teacher(student: M) -> M:
    """A frozen deep copy of the student (eval mode, no gradients)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter <- m * teacher + (1 - m) * student; buffers copied."""
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student have different parameters; build the teacher with make_teacher")
    # one call per tensor kind (FSDP2 mixes DTensor shards and whole tensors) instead of two per
    # tensor: the same arithmetic, bit for bit, and ~360 fewer kernel calls a step for `tiny`
    groups: dict[type, tuple[list[Tensor], list[Tensor]]] = {}
    for name, p in t_params.items():
        targets, sources = groups.setdefault(type(p.data), ([], []))
        targets.append(p)
        sources.append(s_params[name].detach().to(p.dtype))
    for targets, sources in groups.values():
        torch._foreach_mul_(targets, momentum)
        torch._foreach_add_(targets, sources, alpha=1 - momentum)
    s_buffers = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        b.copy_(s_buffers[name])


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's ``final - (final - base) * (1 + cos(pi * step / total)) / 2``: base at step 0, final at end."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (1 + math.cos(math.pi * progress)) / 2


@torch.no_grad()
def collapse_monitors(
    teacher_logits: Tensor, center: Tensor, teacher_temp: float, feats: Tensor
) -> dict[str, float]:
    """Signs of collapse, as floats.

    teacher_logits (n, K), center (1, K): ``teacher_entropy`` is the mean entropy of the centred,
    sharpened teacher distributions (0 = one-hot collapse) and ``teacher_marginal_entropy`` the entropy of
    their batch mean (log K is uniform; small = every sample on the same prototype); both are also
    given relative to log K. feats (n, D): ``feature_std``, the std across the batch of the
    l2-normalised features, averaged over dimensions (0 = every sample maps to the same point;
    1/sqrt(D) for well-spread features).
    """
    out: dict[str, float] = {}
    if teacher_logits.numel():
        p = F.softmax((teacher_logits.float() - center.float()) / teacher_temp, dim=-1)
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
        mean = p.mean(0)
        marginal = -(mean * mean.clamp_min(1e-12).log()).sum()
        log_k = math.log(p.shape[-1])
        out.update(
            teacher_entropy=float(ent),
            teacher_entropy_rel=float(ent) / log_k,
            teacher_marginal_entropy=float(marginal),
            teacher_marginal_entropy_rel=float(marginal) / log_k,
        )
    if feats.shape[0] > 1:
        out["feature_std"] = float(F.normalize(feats.float(), dim=-1).std(0).mean())
    return out
