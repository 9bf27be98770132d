"""Normalize (spec constants and user stats), consistent crops across resolutions, flips, time subsampling."""

from __future__ import annotations

import pytest
import torch

from skysense.bands import NORM_STATS, BandStats, save_stats
from skysense.data import CenterCrop, Compose, Normalize, RandomCrop, RandomFlip, SubsampleTime, collate


def _s2_sample() -> dict:
    x = torch.full((2, 10, 4, 4), 1000.0)
    inv = torch.zeros(2, 4, 4, dtype=torch.bool)
    inv[1, 0, 0] = True
    x[1, :, 0, 0] = 0
    return {"s2": x, "s2_invalid": inv, "meta": {"id": "x", "s2": {"bands": list(NORM_STATS["s2"].bands)}}}


def test_normalize_spec_constants_keeps_invalid_zero() -> None:
    out = Normalize()(_s2_sample())
    st = NORM_STATS["s2"]
    assert out["s2"][0, 0, 1, 1].item() == pytest.approx((1000 - st.mean[0]) / st.std[0])
    assert out["s2"][0, 9, 2, 2].item() == pytest.approx((1000 - st.mean[9]) / st.std[9])
    assert (out["s2"][1, :, 0, 0] == 0).all()  # invalid stays exactly 0
    hr = {"hr": torch.full((3, 2, 2), 123.675), "hr_invalid": torch.zeros(2, 2, dtype=torch.bool)}
    assert Normalize()(hr)["hr"][0].abs().max().item() < 1e-6


def test_normalize_batch_and_padding() -> None:
    a, b = _s2_sample(), _s2_sample()
    a = {k: (v[:1] if k != "meta" else v) for k, v in a.items()}  # T = 1: padded in the batch
    batch = collate([a, b])
    out = Normalize()(batch)
    assert (out["s2"][0, 1] == 0).all() and out["s2"][1, 0, 0, 1, 1] != 0


def test_normalize_band_mismatch_and_user_stats(tmp_path) -> None:
    ndvi = {"s2": torch.ones(3, 1, 2, 2), "s2_invalid": torch.zeros(3, 2, 2, dtype=torch.bool),
            "meta": {"id": "p", "s2": {"bands": ["NDVI"]}}}  # fmt: skip
    with pytest.raises(ValueError, match=r"bands \['NDVI'\] but the statistics are for"):
        Normalize()(ndvi)
    save_stats({"s2": BandStats(("NDVI",), (0.5,), (0.25,))}, tmp_path / "st.json")
    assert Normalize(tmp_path / "st.json")(ndvi)["s2"].unique().tolist() == [2.0]
    with pytest.raises(ValueError, match="no normalisation statistics for modality 'hr'"):
        Normalize({"s2": NORM_STATS["s2"]})({"hr": torch.ones(3, 2, 2)})


def test_crop_aligns_modalities_of_different_resolutions() -> None:
    hr = torch.arange(64.0).reshape(1, 8, 8).repeat(3, 1, 1)  # 8 x 8 at 2.5 m
    s2 = torch.arange(4.0).reshape(1, 1, 2, 2).repeat(1, 10, 1, 1)  # 2 x 2 at 10 m: 4 hr pixels per s2 pixel
    sample = {"hr": hr, "s2": s2, "target": torch.zeros(8, 8, dtype=torch.int64)}
    out = _crop_at(sample, top=4, left=0, size=4)
    assert out["hr"].shape == (3, 4, 4) and out["s2"].shape == (1, 10, 1, 1) and out["target"].shape == (4, 4)
    assert out["s2"][0, 0, 0, 0].item() == 2.0  # bottom-left s2 pixel under the bottom-left hr quadrant
    assert out["hr"][0, 0, 0].item() == 32.0
    c = CenterCrop(4)(sample)
    assert c["hr"][0, 0, 0].item() == 18.0 and c["s2"].shape[-2:] == (1, 1)


def _crop_at(sample: dict, top: int, left: int, size: int) -> dict:
    from skysense.data.transforms import _crop_all

    return _crop_all(sample, top, left, size, "hr")


def test_random_crop_flip_subsample() -> None:
    torch.manual_seed(0)
    sample = {"hr": torch.rand(3, 16, 16), "hr_invalid": torch.zeros(16, 16, dtype=torch.bool),
              "target": torch.randint(0, 3, (16, 16))}  # fmt: skip
    out = Compose([RandomCrop(8), RandomFlip(1.0)])(sample)
    assert out["hr"].shape == (3, 8, 8) and out["target"].shape == (8, 8)
    flipped = RandomFlip(1.0)(sample)
    assert torch.equal(flipped["hr"], sample["hr"].flip(-1, -2)) and torch.equal(
        flipped["target"], sample["target"].flip(-1, -2)
    )
    series = {"s2": torch.arange(30.0).reshape(30, 1, 1, 1), "s2_dates": torch.arange(30) + 18000,
              "s2_invalid": torch.zeros(30, 1, 1, dtype=torch.bool)}  # fmt: skip
    sub = SubsampleTime({"s2": 20})(series)
    assert sub["s2"].shape[0] == 20 and (sub["s2_dates"].diff() > 0).all()
    assert torch.equal(sub["s2"].flatten().long(), sub["s2_dates"] - 18000)  # values follow their dates
    with pytest.raises(ValueError, match="larger than"):
        CenterCrop(32)(sample)
