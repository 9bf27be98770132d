"""Deterministic train/val/test splits from a hash of each sample's id (same on every machine).

``split_of(id)`` hashes ``f"{seed}:{id}"`` with SHA-256, reads the first 8 bytes as a fraction
``u`` in [0, 1) and returns the first split whose cumulative fraction exceeds ``u``. A sample's
split depends only on its id, the fractions and the seed: never on file order, the number of
samples, the platform or ``PYTHONHASHSEED``; adding samples never moves existing ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def hash_fraction(sample_id: str, seed: int = 0) -> float:
    """Stable fraction in [0, 1) of ``sample_id``."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(sample_id: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """``train``/``val``/``test`` of one sample id (fractions of the three, summing to 1)."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}"
        )
    u, acc = hash_fraction(sample_id, seed), 0.0
    for name, f in zip(SPLITS, fractions):
        acc += f
        if u < acc:
            return name
    return SPLITS[-1]


def filter_split(
    ids: Sequence[str], split: str | None, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> list[int]:
    """Indexes of ``ids`` that fall in ``split`` (all of them for ``None``)."""
    if split is None:
        return list(range(len(ids)))
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS} or None")
    return [i for i, s in enumerate(ids) if split_of(s, fractions, seed) == split]
