"""Hash splits: stable values hard-coded, independent of order and count."""

from __future__ import annotations

import hashlib

import pytest

from skysense.data.splits import filter_split, hash_fraction, split_of


def test_hard_coded_assignments() -> None:
    expected = {
        "Airport/airport_1.jpg": "train",
        "S2A_MSIL2A_20170617T113321_4_55": "test",
        "Spain_7370579": "train",
        "b": "val",
        "e": "val",
        "h": "train",
    }
    assert {k: split_of(k) for k in expected} == expected


def test_hash_is_sha256_of_seed_and_id() -> None:
    digest = hashlib.sha256(b"0:b").digest()
    assert hash_fraction("b") == int.from_bytes(digest[:8], "big") / 2**64
    assert 0.8 <= hash_fraction("b") < 0.9  # "b" is val under (0.8, 0.1, 0.1)


def test_order_and_count_independent() -> None:
    ids = [f"sample_{i}" for i in range(1000)]
    train = {ids[i] for i in filter_split(ids, "train")}
    rev = list(reversed(ids))
    assert {rev[i] for i in filter_split(rev, "train")} == train
    sub = ids[:100]
    assert {sub[i] for i in filter_split(sub, "train")} == train & set(sub)
    counts = [len(filter_split(ids, s)) for s in ("train", "val", "test")]
    assert sum(counts) == 1000 and 740 < counts[0] < 860


def test_seed_and_bad_fractions() -> None:
    ids = [f"x{i}" for i in range(200)]
    assert filter_split(ids, "val", seed=1) != filter_split(ids, "val", seed=0)
    with pytest.raises(ValueError, match="fractions"):
        split_of("a", (0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="unknown split"):
        filter_split(ids, "training")
