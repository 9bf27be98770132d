"""Schedules of a run, as pure functions of the step (paper Sec. 3.2 training; DINO's recipes)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skysense.engine.config import EngineConfig


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at ``total`` (and after)."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total: int, peak: float, end: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps (step 0 gets peak / warmup), then cosine to
    ``end``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(step - warmup, total - warmup, peak, end)


def linear_ramp(step: int, steps: int, start: float, end: float) -> float:
    """Linear from ``start`` at step 0 to ``end`` at ``steps`` (and after); ``end`` throughout if 0 steps."""
    if steps <= 0 or step >= steps:
        return end
    return start + (end - start) * step / steps


def lr_at(step: int, cfg: EngineConfig) -> float:
    """The run's learning rate: linear warm-up to ``lr`` over ``warmup_steps``, then cosine to ``min_lr``."""
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps)


def wd_at(step: int, cfg: EngineConfig) -> float:
    """The run's weight decay: cosine from ``weight_decay`` at step 0 to ``weight_decay_end`` at the end."""
    return cosine(step, cfg.steps, cfg.weight_decay, cfg.weight_decay_end)
