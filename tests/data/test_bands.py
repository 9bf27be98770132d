"""Band names, S2 aliases and the spec's normalisation constants."""

from __future__ import annotations

import pytest

from skysense.bands import NORM_STATS, S2_BANDS, BandStats, load_stats, s1_band_name, s2_band_name, save_stats


@pytest.mark.parametrize(
    ("alias", "canon"),
    [
        ("B02", "B2"),
        ("b2", "B2"),
        ("B8A", "B8A"),
        ("B08A", "B8A"),
        ("b8a", "B8A"),
        ("B12", "B12"),
        ("blue", "B2"),
        ("nir", "B8"),
    ],
)
def test_s2_aliases(alias: str, canon: str) -> None:
    assert s2_band_name(alias) == canon


@pytest.mark.parametrize("bad", ["B13", "B0", "VV", "NDVI", "B8B"])
def test_s2_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Sentinel-2 band"):
        s2_band_name(bad)


def test_s1_names() -> None:
    assert s1_band_name("vv") == "VV"
    assert s1_band_name("VH") == "VH"
    with pytest.raises(ValueError):
        s1_band_name("B2")


def test_spec_constants() -> None:
    assert S2_BANDS == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
    assert NORM_STATS["s2"].mean[0] == 884.30 and NORM_STATS["s2"].std[-1] == 1343.48
    assert NORM_STATS["s1"].mean == (-12.548, -20.192) and NORM_STATS["s1"].std == (5.257, 5.912)
    assert NORM_STATS["hr"].mean == (123.675, 116.28, 103.53) and NORM_STATS["hr"].std == (
        58.395,
        57.12,
        57.375,
    )


def test_stats_roundtrip_and_errors(tmp_path) -> None:
    f = tmp_path / "stats.json"
    save_stats(NORM_STATS, f)
    assert load_stats(f) == NORM_STATS
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_stats(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="std must be > 0"):
        BandStats(("a",), (0.0,), (0.0,))
