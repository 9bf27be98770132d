"""Readers against independent rasterio/numpy reads, on GeoTIFFs written here and on the real data."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from skysense.data.readers import (
    date_of_file,
    linear_to_db,
    load_npy_series,
    parse_date,
    read_image,
    read_raster,
    read_s1,
    read_s2_bandset,
    read_series,
    resample,
    select_s2_bands,
)

from .conftest import data_path, write_tif

# ----------------------------------------------------------------------------- synthetic GeoTIFFs


def test_geotiff_values_meta_and_nodata_mask(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 1000, size=(3, 8, 6)).astype(np.uint16)
    data[:, 0, 0] = 0  # nodata in every band
    data[1, 2, 3] = 0  # nodata in one band only: the pixel is invalid
    f = write_tif(tmp_path / "a.tif", data, crs="EPSG:32633", origin=(400000, 5100000), res=10, nodata=0)
    r = read_raster(f)
    assert r.data.dtype == np.float32 and r.data.shape == (3, 8, 6)
    expected_invalid = np.zeros((8, 6), bool)
    expected_invalid[0, 0] = expected_invalid[2, 3] = True
    np.testing.assert_array_equal(r.invalid, expected_invalid)
    with rasterio.open(f) as ds:
        ref = ds.read().astype(np.float32)
    ref[:, expected_invalid] = 0
    np.testing.assert_array_equal(r.data, ref)
    assert r.meta["crs"] == "EPSG:32633"
    assert r.meta["transform"] == (10.0, 0.0, 400000.0, 0.0, -10.0, 5100000.0)
    assert r.meta["nodata"] == 0.0 and r.meta["dtype"] == "uint16"


def test_windowed_read_and_transform(tmp_path) -> None:
    data = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12) + 1
    f = write_tif(tmp_path / "w.tif", data, origin=(1000, 2000), res=20)
    r = read_raster(f, window=(3, 2, 5, 4))  # col_off, row_off, width, height
    np.testing.assert_array_equal(r.data, data[:, 2:6, 3:8])
    assert r.meta["transform"] == (20.0, 0.0, 1000.0 + 3 * 20, 0.0, -20.0, 2000.0 - 2 * 20)
    assert (r.meta["width"], r.meta["height"]) == (5, 4)
    with pytest.raises(ValueError, match="outside the raster"):
        read_raster(f, window=Window(10, 0, 5, 5))


def test_nan_and_alpha_masks(tmp_path) -> None:
    data = np.ones((2, 4, 4), np.float32)
    data[0, 1, 1] = np.nan
    r = read_raster(write_tif(tmp_path / "n.tif", data, nodata=np.nan))
    assert r.invalid.sum() == 1 and r.invalid[1, 1] and r.data[:, 1, 1].tolist() == [0.0, 0.0]
    rgba = np.full((4, 4, 4), 100, np.uint8)
    rgba[3] = 255
    rgba[3, :2] = 0  # transparent top rows
    f = write_tif(tmp_path / "rgba.tif", rgba, photometric="RGB", alpha="YES", crs=None)
    img = read_image(f)
    assert img.data.shape == (3, 4, 4) and img.meta["bands"] == ["R", "G", "B"]
    assert img.invalid[:2].all() and not img.invalid[2:].any()


def test_bad_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_raster(tmp_path / "missing.tif")
    (tmp_path / "text.tif").write_text("not a tiff")
    with pytest.raises(ValueError, match="text.tif"):
        read_raster(tmp_path / "text.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.tif"):
        read_raster(tmp_path / "empty.tif")
    big = write_tif(tmp_path / "big.tif", np.ones((1, 256, 256), np.float32))
    raw = big.read_bytes()
    (tmp_path / "trunc.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.tif"):
        read_raster(tmp_path / "trunc.tif")
    allnd = write_tif(tmp_path / "nodata.tif", np.full((2, 4, 4), -9999, np.int16), nodata=-9999)
    with pytest.raises(ValueError, match=r"nodata.tif: every pixel is nodata"):
        read_raster(allnd)
    assert read_raster(allnd, allow_empty=True).invalid.all()
    gray = write_tif(tmp_path / "gray.tif", np.ones((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        read_image(gray)


# ----------------------------------------------------------------------------- resampling


def test_bilinear_resampling_hand_computed() -> None:
    # 2x2 -> 4x4, pixel centres (align_corners=False): output centre x maps to source (x + 0.5) / 2 - 0.5,
    # i.e. -0.25, 0.25, 0.75, 1.25 -> clamped to [0, 1]: weights 0, 0.25, 0.75, 1 towards the second pixel.
    src = np.array([[[0.0, 4.0], [8.0, 12.0]]], np.float32)
    out, inv = resample(src, np.zeros((2, 2), bool), (4, 4), "bilinear")
    row = np.array([0.0, 1.0, 3.0, 4.0])
    col = np.array([0.0, 2.0, 6.0, 8.0])
    np.testing.assert_allclose(out[0], col[:, None] + row[None, :], atol=1e-6)
    assert not inv.any()


def test_nearest_resampling_is_block_replication() -> None:
    src = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    out, _ = resample(src, np.zeros((2, 2), bool), (6, 6), "nearest")
    np.testing.assert_array_equal(out[0], np.kron(src[0], np.ones((3, 3))))


def test_resampling_propagates_invalid() -> None:
    src = np.ones((1, 2, 2), np.float32)
    invalid = np.array([[True, False], [False, False]])
    out, inv = resample(src, invalid, (4, 4), "bilinear")
    # output pixels drawing on the top-left source pixel with non-zero weight: rows/cols 0..2
    expected = np.zeros((4, 4), bool)
    expected[:3, :3] = True
    np.testing.assert_array_equal(inv, expected)
    assert (out[0][inv] == 0).all() and (out[0][~inv] == 1).all()
    _, inv_n = resample(src, invalid, (4, 4), "nearest")
    assert inv_n[:2, :2].all() and inv_n.sum() == 4


def _write_s2_bandset(folder, h10: int = 6):
    """B2 (10 m), B5 (20 m), B1 (60 m) single-band files over the same extent."""
    folder.mkdir()
    vals = {}
    for band, res in (("B02", 10), ("B05", 20), ("B01", 60)):
        n = h10 * 10 // res
        vals[band] = (np.arange(n * n, dtype=np.uint16).reshape(1, n, n) + 1) * 10
        write_tif(folder / f"T33_{band}.tif", vals[band], res=res)
    return vals


def test_s2_bandset_resampled_to_10m(tmp_path) -> None:
    vals = _write_s2_bandset(tmp_path / "patch")
    r = read_s2_bandset(tmp_path / "patch", bands=["B5", "B02", "B1"], resampling="nearest")
    assert r.meta["bands"] == ["B5", "B2", "B1"] and r.data.shape == (3, 6, 6)
    np.testing.assert_array_equal(r.data[1], vals["B02"][0])
    np.testing.assert_array_equal(r.data[0], np.kron(vals["B05"][0], np.ones((2, 2))))
    np.testing.assert_array_equal(r.data[2], np.full((6, 6), vals["B01"][0, 0, 0]))
    assert r.meta["transform"][0] == 10.0


def test_s2_bandset_errors(tmp_path) -> None:
    _write_s2_bandset(tmp_path / "p")
    with pytest.raises(ValueError, match=r"missing Sentinel-2 band\(s\) B8A, B11"):
        read_s2_bandset(tmp_path / "p", bands=["B2", "B8A", "B11"])
    write_tif(tmp_path / "p" / "T33_B03.tif", np.ones((1, 6, 6), np.uint16), crs="EPSG:32632")
    with pytest.raises(ValueError, match=r"CRS mismatch.*T33_B03.tif"):
        read_s2_bandset(tmp_path / "p", bands=["B2", "B3"])
    write_tif(tmp_path / "p" / "T33_B04.tif", np.ones((1, 6, 6), np.uint16), origin=(500010, 5000000))
    with pytest.raises(ValueError, match=r"extent mismatch.*T33_B04.tif"):
        read_s2_bandset(tmp_path / "p", bands=["B2", "B4"])


def test_select_s2_bands_by_description_and_count(tmp_path) -> None:
    data = np.arange(13, dtype=np.int16).reshape(13, 1, 1).repeat(2, 1).repeat(2, 2) + 1
    named = read_raster(
        write_tif(
            tmp_path / "n.tif",
            data,
            descriptions=[f"B{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8)] + ["B8A", "B9", "B10", "B11", "B12"],
        )
    )
    picked = select_s2_bands(named)
    assert picked.data[:, 0, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 12, 13]
    unnamed = read_raster(write_tif(tmp_path / "u.tif", data))
    assert select_s2_bands(unnamed).data[:, 0, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 12, 13]
    with pytest.raises(ValueError, match="5 bands without Sentinel-2 band names"):
        select_s2_bands(read_raster(write_tif(tmp_path / "f.tif", data[:5])))


# ----------------------------------------------------------------------------- Sentinel-1


def test_s1_linear_to_db(tmp_path) -> None:
    lin = np.array([[[1.0, 0.1], [0.01, 0.0]], [[0.5, 0.05], [0.02, 0.001]]], np.float32)
    r = read_s1(write_tif(tmp_path / "s1.tif", lin, descriptions=["VV", "VH"]))
    assert r.meta["source_units"] == "linear" and r.meta["units"] == "dB"
    np.testing.assert_allclose(r.data[0, 0, :2], [0.0, -10.0], atol=1e-5)
    np.testing.assert_allclose(r.data[1, 1, 0], 10 * np.log10(0.02), atol=1e-5)
    assert r.invalid.tolist() == [[False, False], [False, True]]  # 0 linear has no dB value
    db, bad = linear_to_db(np.array([[[-1.0]]]), np.zeros((1, 1), bool))
    assert bad.all() and db[0, 0, 0] == 0


def test_s1_band_order_and_errors(tmp_path) -> None:
    db = np.stack([np.full((3, 3), -20.0), np.full((3, 3), -10.0)]).astype(np.float32)
    r = read_s1(write_tif(tmp_path / "vhvv.tif", db, descriptions=["VH", "VV"]))
    assert r.data[0, 0, 0] == -10.0 and r.data[1, 0, 0] == -20.0  # reordered to VV, VH
    with pytest.raises(ValueError, match="expected 2"):
        read_s1(write_tif(tmp_path / "three.tif", np.zeros((3, 2, 2), np.float32)))
    vv = write_tif(tmp_path / "x_VV.tif", db[:1])
    with pytest.raises(ValueError, match=r"missing Sentinel-1 band\(s\) VH"):
        read_s1([vv, vv])


# ----------------------------------------------------------------------------- dates and series


def test_parse_dates() -> None:
    assert parse_date("S2A_MSIL2A_20170617T113321_4_55") == dt.date(2017, 6, 17)
    assert parse_date("2019/09/17") == dt.date(2019, 9, 17)
    assert parse_date("s1_2018-02-15.tif") == dt.date(2018, 2, 15)
    assert parse_date("2017:06:17 11:33:21") == dt.date(2017, 6, 17)
    with pytest.raises(ValueError, match="no parsable date"):
        parse_date("scene_20171341.tif")  # month 13
    with pytest.raises(ValueError, match="x.tif"):
        parse_date("no date here", "x.tif")


def test_series_from_names_and_tags(tmp_path) -> None:
    files = []
    for i, name in enumerate(["s2_20200315.tif", "s2_20200101.tif", "s2_undated.tif"]):
        tags = {"ACQUISITION_DATE": "2020-02-10"} if "undated" in name else None
        files.append(write_tif(tmp_path / name, np.full((2, 3, 3), i + 1, np.uint16), tags=tags))
    data, invalid, days, metas = read_series(files)
    expected = [(dt.date(2020, m, d) - dt.date(1970, 1, 1)).days for m, d in ((1, 1), (2, 10), (3, 15))]
    assert days.tolist() == expected and days.dtype == torch.int64
    assert (
        data[:, 0, 0, 0].tolist() == [2, 3, 1] and data.shape == (3, 2, 3, 3) and invalid.shape == (3, 3, 3)
    )
    assert date_of_file(files[2]) == dt.date(2020, 2, 10)
    created = write_tif(
        tmp_path / "s2_20200420.tif",
        np.ones((1, 2, 2), np.uint8),
        tags={"TIFFTAG_DATETIME": "2024:01:01 00:00:00"},
    )
    assert date_of_file(created) == dt.date(2020, 4, 20)  # the name wins over the file's creation time
    undated = write_tif(
        tmp_path / "x.tif", np.ones((1, 2, 2), np.uint8), tags={"TIFFTAG_DATETIME": "2021:03:04 10:00:00"}
    )
    assert date_of_file(undated) == dt.date(2021, 3, 4)


def test_series_errors(tmp_path) -> None:
    a = write_tif(tmp_path / "a_20200101.tif", np.ones((1, 3, 3), np.uint16))
    b = write_tif(tmp_path / "b_nodate.tif", np.ones((1, 3, 3), np.uint16))
    with pytest.raises(ValueError, match="b_nodate.tif"):
        read_series([a, b])
    c = write_tif(tmp_path / "c_20200201.tif", np.ones((1, 3, 3), np.uint16), origin=(0, 0))
    with pytest.raises(ValueError, match="c_20200201.tif.*not one grid"):
        read_series([a, c])
    with pytest.raises(ValueError, match="empty time series"):
        read_series([])


def test_npy_series(tmp_path) -> None:
    arr = np.ones((3, 4, 5, 2), np.float32)  # T, H, W, C
    arr[1, 2, 3, 0] = np.nan
    np.save(tmp_path / "x.npy", arr)
    (tmp_path / "t.json").write_text(json.dumps(["2017-01-01T10:00:00", "2017-01-11T10:00:00", "2017-01-21"]))
    data, invalid, days = load_npy_series(tmp_path / "x.npy", tmp_path / "t.json")
    assert data.shape == (3, 2, 4, 5) and invalid.shape == (3, 4, 5)
    assert invalid.sum() == 1 and invalid[1, 2, 3] and data[1, :, 2, 3].tolist() == [0.0, 0.0]
    assert (days[1:] - days[:-1]).tolist() == [10, 10]
    (tmp_path / "t2.json").write_text(json.dumps(["2017-01-01", "bad"]))
    with pytest.raises(ValueError, match="t2.json entry 1"):
        load_npy_series(tmp_path / "x.npy", tmp_path / "t2.json")
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:100])
    with pytest.raises(ValueError, match="trunc.npy"):
        load_npy_series(tmp_path / "trunc.npy", tmp_path / "t.json")


# ----------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_bigearthnet_bands_against_rasterio() -> None:
    patch = data_path("bigearthnet_mm", "s2", "S2A_MSIL2A_20170617T113321_4_55")
    r = read_s2_bandset(patch)
    assert r.data.shape == (10, 120, 120) and r.meta["crs"] == "EPSG:32629"
    with rasterio.open(patch / f"{patch.name}_B02.tif") as ds:
        np.testing.assert_array_equal(r.data[0], ds.read(1).astype(np.float32))
    with rasterio.open(patch / f"{patch.name}_B8A.tif") as ds:
        b8a = ds.read(1).astype(np.float32)  # (60, 60) at 20 m
    # 20 m pixel (i, j) covers 10 m pixels 2i..2i+1; bilinear at pixel centres: 0.75 / 0.25 weights
    i, j = 10, 20
    expected = 0.75 * (0.75 * b8a[i, j] + 0.25 * b8a[i, j - 1]) + 0.25 * (
        0.75 * b8a[i - 1, j] + 0.25 * b8a[i - 1, j - 1]
    )
    assert r.meta["bands"][7] == "B8A"
    assert r.data[7, 2 * i, 2 * j] == pytest.approx(expected, rel=1e-5)


@pytest.mark.data
def test_real_sen1floods11_s2_and_s1() -> None:
    root = data_path("sen1floods11")
    s2 = select_s2_bands(read_raster(root / "S2" / "Spain_7370579_S2Hand.tif"))
    with rasterio.open(root / "S2" / "Spain_7370579_S2Hand.tif") as ds:
        ref = ds.read([2, 3, 4, 5, 6, 7, 8, 9, 12, 13]).astype(np.float32)
    np.testing.assert_array_equal(s2.data, ref)
    s1 = read_s1(root / "S1" / "Spain_7370579_S1Hand.tif")
    assert s1.meta["source_units"] == "db"
    with rasterio.open(root / "S1" / "Spain_7370579_S1Hand.tif") as ds:
        np.testing.assert_array_equal(s1.data, ds.read())


@pytest.mark.data
def test_real_rasters_nodata_mask() -> None:
    f = data_path("rasters", "RGB.byte.tif")
    r = read_raster(f, window=(100, 50, 64, 64))
    with rasterio.open(f) as ds:
        ref = ds.read(window=Window(100, 50, 64, 64))
    np.testing.assert_array_equal(r.invalid, (ref == 0).any(axis=0))
    np.testing.assert_array_equal(r.data[:, ~r.invalid], ref[:, ~r.invalid].astype(np.float32))
    full = read_raster(f)
    assert 0.2 < full.invalid.mean() < 0.6  # the rotated scene's black collar


def test_rgb_nir_hr(tmp_path) -> None:
    data = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30, 40)])
    img = read_image(write_tif(tmp_path / "rgbn.tif", data))
    assert img.meta["bands"] == ["R", "G", "B", "NIR"] and img.data[:, 0, 0].tolist() == [10, 20, 30, 40]
