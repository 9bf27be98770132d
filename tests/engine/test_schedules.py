"""Schedules against their closed forms, hand-computed."""

import math

import pytest

from skysense.engine.schedules import cosine, linear_ramp, warmup_cosine


def test_cosine_ends_and_middle():
    assert cosine(0, 10, 1.0, 0.0) == 1.0 and cosine(10, 10, 1.0, 0.0) == 0.0
    assert cosine(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine(25, 10, 0.04, 0.4) == pytest.approx(0.4)  # held after the end
    assert cosine(3, 12, 2.0, 1.0) == pytest.approx(1.0 + 0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_then_cosine():
    got = [warmup_cosine(s, 12, 1.0, 0.0, 4) for s in (0, 1, 3, 4, 8, 12)]
    assert got == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.5, 0.0], abs=1e-12)
    assert warmup_cosine(0, 10, 1.0, 0.1, 0) == 1.0  # no warm-up


def test_linear_ramp():
    assert [linear_ramp(s, 4, 0.04, 0.08) for s in (0, 1, 2, 4, 9)] == pytest.approx(
        [0.04, 0.05, 0.06, 0.08, 0.08]
    )
    assert linear_ramp(0, 0, 0.0, 1.0) == 1.0
