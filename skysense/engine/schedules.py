"""Schedules of a run, as pure functions of the step (paper Sec. 3.2 training; DINO's recipes)."""

from __future__ import annotations

import math


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
