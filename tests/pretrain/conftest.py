"""Pre-training tests run single-threaded: their ops are tiny, and two intra-op threads on a shared
2-core machine spend far more time synchronising than computing (a step went from ~0.2 s to ~15 s)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_defaults() -> None:  # overrides the repository-wide fixture of the same name
    torch.manual_seed(0)
    torch.set_num_threads(1)
