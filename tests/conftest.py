"""Shared fixtures: deterministic torch settings and the location of the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``SKYSENSE_DATA`` or ``shared/data`` beside the repository (never copied into it)."""
    return Path(os.environ.get("SKYSENSE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _torch_defaults() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
