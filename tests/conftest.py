"""Shared fixtures: deterministic torch settings and the location of the real data."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_defaults() -> None:
    # One intra-op thread: the tests' ops are small, and a second thread on a busy 2-core machine (or beside
    # another xdist worker) spins and waits far more than it computes.
    torch.manual_seed(0)
    torch.set_num_threads(1)


def randomise(model: torch.nn.Module) -> None:
    """Every parameter set afresh (norm weights around 1, logit scales around log 10, the rest around 0),
    so that a wrong mapping shows and no parameter depends on the modules' own initialisation."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if re.search(r"(norm\d?|ln\d)\.weight$", name) else 0.0
            base = math.log(10.0) if name.endswith("logit_scale") else base
            p.copy_(base + torch.randn_like(p) * 0.05)
