"""A GeoTIFF and a folder of loose rasters are valid inputs of ``skysense stats`` and ``data inspect``;
forced layouts that cannot read them fail with a clear message; pixel series are not called Sentinel-2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skysense.bands import load_stats
from skysense.cli import main
from skysense.data import Normalize
from skysense.data.inspect import inspect, open_dataset

from .conftest import write_tif


def _raster(path: Path, seed: int, bands: int = 3) -> np.ndarray:
    """A uint16 raster with nodata 0 in its first row; returns its valid pixels (C, N) as float64."""
    a = np.random.default_rng(seed).integers(1, 4000, (bands, 5, 7)).astype(np.uint16)
    a[:, 0, :] = 0
    write_tif(path, a, nodata=0)
    return a[:, 1:, :].reshape(bands, -1).astype(np.float64)


def test_stats_of_one_geotiff_match_numpy_and_normalise_its_own_samples(tmp_path, capsys) -> None:
    valid = _raster(tmp_path / "scene.tif", 0)
    out = tmp_path / "stats.json"
    assert main(["stats", str(tmp_path / "scene.tif"), "--json", "--out", str(out), "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)["hr"]
    assert printed["valid_pixels"] == valid.shape[1] == 4 * 7
    np.testing.assert_allclose(printed["mean"], valid.mean(1), rtol=1e-10)
    np.testing.assert_allclose(printed["std"], valid.std(1), rtol=1e-10)
    stats = load_stats(out)
    assert stats["hr"].bands == ("band1", "band2", "band3")
    x = Normalize(out)(open_dataset(tmp_path / "scene.tif")[0])  # the names match: no dead end
    v = x["hr"][:, ~x["hr_invalid"]].double()
    np.testing.assert_allclose(v.mean(1).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(v.std(1, correction=0).numpy(), 1.0, rtol=1e-5)
    assert float(x["hr"][:, 0].abs().max()) == 0.0  # nodata stays 0


def test_stats_of_a_folder_of_rasters_pool_every_file(tmp_path, capsys) -> None:
    valid = np.concatenate([_raster(tmp_path / "a.tif", 1), _raster(tmp_path / "b.tif", 2)], axis=1)
    assert main(["stats", str(tmp_path), "--json", "--modality", "s2", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["s2"]
    np.testing.assert_allclose(printed["s2"]["mean"], valid.mean(1), rtol=1e-10)
    np.testing.assert_allclose(printed["s2"]["std"], valid.std(1), rtol=1e-10)


def test_stats_of_rasters_with_different_bands_is_a_clear_error(tmp_path, capsys) -> None:
    _raster(tmp_path / "a.tif", 1, bands=3)
    _raster(tmp_path / "b.tif", 2, bands=6)
    assert main(["stats", str(tmp_path), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "differ from earlier" in err and "same bands" in err


def test_forced_folder_layout_on_a_file_is_a_clear_error(tmp_path, capsys) -> None:
    _raster(tmp_path / "scene.tif", 0)
    for cmd in (["stats"], ["data", "inspect"]):  # exit 2 with the message: no exception escapes main
        assert main([*cmd, str(tmp_path / "scene.tif"), "--layout", "pretrain", "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert "is a file" in err and "--layout rasters" in err
    assert main(["stats", str(tmp_path / "scene.tif"), "--layout", "nope"]) == 2
    assert "no dataset layout recognised (got 'nope')" in capsys.readouterr().err


def test_modality_is_only_for_rasters(tmp_path, capsys) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    assert main(["stats", str(tmp_path / "junk"), "--modality", "s1"]) == 2
    assert "loose rasters" in capsys.readouterr().err


def test_inspect_one_geotiff_with_a_quicklook(tmp_path, capsys) -> None:
    _raster(tmp_path / "scene.tif", 0)
    png = tmp_path / "q.png"
    assert main(["data", "inspect", str(tmp_path / "scene.tif"), "--png", str(png), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "layout: rasters" in out and "quick-look written" in out
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and min(im.size) > 100


def test_inspect_rounds_resolutions(tmp_path) -> None:
    write_tif(tmp_path / "l7.tif", np.ones((1, 4, 4), np.uint8), res=28.49999999927454)
    rep = inspect(tmp_path / "l7.tif")
    assert rep["files"][0]["res"] == [28.5, 28.5]


def test_inspect_pixel_series_are_not_called_sentinel2(tmp_path) -> None:
    path = tmp_path / "modis.npz"
    np.savez(
        path,
        X=np.random.default_rng(0).random((6, 4, 1)).astype(np.float32),
        labels=np.array(["a", "b"] * 3),
        bands=np.array(["NDVI"]),
        lon=np.zeros(6),
        lat=np.zeros(6),
        dates_first_sample=np.array(["2020-01-01", "2020-02-01", "2020-03-01", "2020-04-01"]),
    )
    rep = inspect(path)
    assert list(rep["modalities"]) == ["series"] and rep["modalities"]["series"]["read_as"] == "s2"
    assert list(rep["dates"]) == ["series"]
    from skysense.data.inspect import format_report

    text = format_report(rep)
    assert "series: bands ['NDVI']" in text and "read as the model's s2 input" in text and "  s2:" not in text


@pytest.mark.data
def test_real_landsat_geotiff_stats_and_inspect(capsys) -> None:
    from .conftest import data_path

    tif = data_path("rasters", "RGB.byte.tif")
    assert main(["stats", str(tif), "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["hr"]["bands"] == ["band1", "band2", "band3"]
    assert main(["data", "inspect", str(data_path("rasters", "L7_ETMs.tif"))]) == 0
    assert "res [28.5, 28.5]" in capsys.readouterr().out
