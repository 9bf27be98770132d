"""Collate: padding of series to the longest T, padding masks, meta kept as a list."""

from __future__ import annotations

import pytest
import torch

from skysense.data import collate


def _sample(t: int, sid: str) -> dict:
    return {
        "s2": torch.full((t, 3, 4, 4), float(t)),
        "s2_invalid": torch.zeros(t, 4, 4, dtype=torch.bool),
        "s2_dates": torch.arange(t, dtype=torch.int64) + 18000,
        "hr": torch.ones(3, 8, 8),
        "lat": torch.tensor(45.0, dtype=torch.float64),
        "label": torch.tensor(1),
        "meta": {"id": sid},
    }


def test_padding_and_mask() -> None:
    b = collate([_sample(2, "a"), _sample(5, "b")])
    assert b["s2"].shape == (2, 5, 3, 4, 4) and b["s2_dates"].shape == (2, 5)
    assert b["s2_mask"].tolist() == [[False, False, True, True, True], [False] * 5]
    assert (b["s2"][0, 2:] == 0).all() and (b["s2"][0, :2] == 2).all()
    assert b["s2_dates"][0].tolist() == [18000, 18001, 0, 0, 0]
    assert b["s2_invalid"][0, 2:].all() and not b["s2_invalid"][0, :2].any()
    assert b["hr"].shape == (2, 3, 8, 8) and b["lat"].dtype == torch.float64 and b["lat"].shape == (2,)
    assert [m["id"] for m in b["meta"]] == ["a", "b"]


def test_errors_name_the_samples() -> None:
    s = _sample(2, "b")
    del s["hr"]
    with pytest.raises(ValueError, match=r"sample b has different keys.*\['hr'\]"):
        collate([_sample(2, "a"), s])
    s = _sample(2, "c")
    s["s2"] = torch.ones(2, 3, 5, 5)
    with pytest.raises(ValueError, match=r"s2: samples differ in \(C, H, W\).*'c'"):
        collate([_sample(2, "a"), s])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_dataloader_workers_roundtrip() -> None:
    data = [_sample(t, str(t)) for t in (1, 3, 2, 4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate, num_workers=0)
    batches = list(loader)
    assert batches[0]["s2_mask"].shape == (2, 3) and batches[1]["s2_mask"].shape == (2, 4)


@pytest.mark.data
def test_real_batch_feeds_the_model() -> None:
    """BigEarthNet-MM s2 + s1 -> crop, Normalize, collate -> the tiny model (no hr) runs on it."""
    from skysense.data import BigEarthNetMM, CenterCrop, Compose, Normalize
    from skysense.models.skysense import build_model

    from .conftest import data_path

    ds = BigEarthNetMM(data_path("bigearthnet_mm"), transforms=Compose([CenterCrop(64), Normalize()]))
    batch = collate([ds[0], ds[1]])
    assert batch["s2"].shape == (2, 1, 10, 64, 64) and batch["s1_dates"].dtype == torch.int64
    model = build_model("tiny", hr=None).eval()
    with torch.no_grad():
        out = model(batch)
    assert out["fused"].shape[0] == 2 and torch.isfinite(out["fused"]).all()
