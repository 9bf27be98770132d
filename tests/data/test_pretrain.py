"""Pre-training dataset: geo-aligned tiles across resolutions and CRS, real Sen1Floods11 S1 + S2."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from skysense.cli import main
from skysense.data import collate
from skysense.data.inspect import detect_layout, inspect
from skysense.data.pretrain import PretrainDataset

from .conftest import data_path, write_tif

X0, Y0 = 500000.0, 5000000.0  # top-left of every synthetic raster (EPSG:32633)


def _field(res: float, n: int, bands: int) -> np.ndarray:
    """Value = index of the 40 m block column + 100 x block row: exact at 2.5, 10 and 20 m."""
    centres = (np.arange(n) + 0.5) * res
    blocks = (centres // 40).astype(np.float32)
    f = blocks[None, :] + 100 * blocks[:, None]  # (n, n)
    return np.repeat(f[None], bands, axis=0)


def _folder(tmp_path):
    root = tmp_path / "pre"
    for m in ("hr", "s2", "s1"):
        (root / m).mkdir(parents=True)
    write_tif(
        root / "hr" / "hr_20200601.tif", _field(2.5, 512, 3).astype(np.uint16), res=2.5, origin=(X0, Y0)
    )
    for d in ("20200110", "20200105", "20200301"):
        write_tif(
            root / "s2" / f"s2_{d}.tif",
            (_field(10, 128, 10) + 1000).astype(np.uint16),
            res=10,
            origin=(X0, Y0),
            nodata=0,
        )
    s1 = -_field(20, 64, 2) / 100 - 1  # dB: -1 .. -16.15
    s1[:, 0, 0] = np.nan
    write_tif(
        root / "s1" / "s1_20200107.tif", s1, res=20, origin=(X0, Y0), descriptions=["VV", "VH"], nodata=np.nan
    )
    return root


def test_tiles_are_aligned_across_resolutions(tmp_path) -> None:
    root = _folder(tmp_path)
    assert detect_layout(root) == "pretrain"
    ds = PretrainDataset(root, size=32, resampling="nearest")
    assert len(ds) == 16 and ds.ids[:2] == ["0_0", "0_1"]
    assert ds.pixels == {"hr": 128, "s2": 32, "s1": 16}
    s = ds[5]  # row 1, col 1: 320 m right and down of the corner
    assert (
        s["hr"].shape == (3, 128, 128)
        and s["s2"].shape == (3, 10, 32, 32)
        and s["s1"].shape == (1, 2, 16, 16)
    )
    days = [(dt.date(2020, 1, d) - dt.date(1970, 1, 1)).days for d in (5, 10)]
    assert s["s2_dates"].tolist()[:2] == days and s["hr_dates"].shape == (1,)
    s2 = s["s2"][0, 0].numpy() - 1000
    np.testing.assert_array_equal(s2, s["hr"][0].numpy()[::4, ::4])  # same ground, 4x finer hr
    np.testing.assert_allclose(-100 * (s["s1"][0, 0].numpy() + 1), s2[::2, ::2], atol=1e-3)
    with rasterio.open(root / "s2" / "s2_20200105.tif") as f:
        ref = f.read(1, window=Window(32, 32, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(s["s2"][0, 0].numpy(), ref)
    assert s["meta"]["s2"]["transform"] == (10.0, 0.0, X0 + 320, 0.0, -10.0, Y0 - 320)
    corner = ds[0]
    assert corner["s1_invalid"][0, 0, 0] and corner["s1"][0, :, 0, 0].tolist() == [0.0, 0.0]
    assert corner["s1_invalid"].sum() == 1
    assert 45.0 < corner["lat"].item() < 45.2 and 14.9 < corner["lon"].item() < 15.1
    b = collate([ds[0], ds[1]])
    assert b["s2"].shape == (2, 3, 10, 32, 32) and b["hr"].shape == (2, 3, 128, 128)


def test_subset_and_reprojection(tmp_path) -> None:
    root = _folder(tmp_path)
    only = PretrainDataset(root, modalities=("s1",), size=16)
    assert set(only[0]) >= {"s1", "s1_dates", "s1_invalid", "lat", "lon"} and "s2" not in only[0]
    # an s1 file in geographic coordinates is reprojected onto the s2 grid
    with rasterio.open(root / "s1" / "s1_20200107.tif") as src:
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(src, crs="EPSG:4326") as vrt:
            data, t = vrt.read(), vrt.transform
    (root / "s1" / "s1_20200107.tif").unlink()
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=2, dtype="float32")
    with rasterio.open(
        root / "s1" / "s1_20200107.tif", "w", crs="EPSG:4326", transform=t, nodata=np.nan, **profile
    ) as f:
        f.write(data)
        f.set_band_description(1, "VV")
        f.set_band_description(2, "VH")
    ds = PretrainDataset(root, modalities=("s2", "s1"), size=32)
    s = ds[0]
    # the pixel size of a reprojected file is estimated from its footprint: about 20 m
    assert (
        s["meta"]["s1"]["crs"] == "EPSG:32633"
        and s["s1"].shape[:2] == (1, 2)
        and 15 <= s["s1"].shape[-1] <= 18
    )
    valid = ~s["s1_invalid"][0]
    assert valid.float().mean() > 0.8 and (s["s1"][0, 0][valid] < 0).all()


def test_errors(tmp_path) -> None:
    root = _folder(tmp_path)
    write_tif(root / "s2" / "s2_20200401.tif", np.ones((10, 8, 8), np.uint16), res=10, origin=(0, 0))
    with pytest.raises(ValueError, match=r"s2_20200401.tif: its extent .* does not overlap"):
        PretrainDataset(root)
    (root / "s2" / "s2_20200401.tif").unlink()
    write_tif(root / "s2" / "s2_undated.tif", np.ones((10, 8, 8), np.uint16), res=10, origin=(X0, Y0))
    with pytest.raises(ValueError, match="s2_undated.tif"):
        PretrainDataset(root)
    with pytest.raises(ValueError, match="smaller than one 64-px tile"):
        PretrainDataset(root, dates={"s2_undated.tif": "2020-05-01"})
    (root / "s2" / "s2_undated.tif").unlink()
    write_tif(root / "s1" / "s1_20200301.tif", np.ones((2, 8, 8), np.float32), crs=None)
    with pytest.raises(ValueError, match="s1_20200301.tif: no CRS"):
        PretrainDataset(root)
    with pytest.raises(FileNotFoundError, match="no modality folder"):
        PretrainDataset(tmp_path, modalities=("s2",))


@pytest.mark.data
def test_real_sen1floods11_s1_s2(tmp_path, capsys) -> None:
    src = data_path("sen1floods11")
    root = tmp_path / "flood"
    (root / "s1").mkdir(parents=True)
    (root / "s2").mkdir()
    (root / "s1" / "Spain_7370579_S1Hand.tif").symlink_to(src / "S1" / "Spain_7370579_S1Hand.tif")
    (root / "s2" / "Spain_7370579_S2Hand.tif").symlink_to(src / "S2" / "Spain_7370579_S2Hand.tif")
    dates = {"Spain_7370579_S1Hand.tif": "2019/09/17", "Spain_7370579_S2Hand.tif": "2019/09/18"}
    ds = PretrainDataset(root, size=64, dates=dates, resampling="nearest")
    assert len(ds) == 64
    s = ds[9]  # row 1, col 1
    assert s["s1_dates"].tolist() == [18156] and s["s2_dates"].tolist() == [18157]
    with rasterio.open(src / "S2" / "Spain_7370579_S2Hand.tif") as f:
        ref = f.read([2, 3, 4, 5, 6, 7, 8, 9, 12, 13], window=Window(64, 64, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(s["s2"][0].numpy(), ref)
    with rasterio.open(src / "S1" / "Spain_7370579_S1Hand.tif") as f:
        np.testing.assert_array_equal(s["s1"][0].numpy(), f.read(window=Window(64, 64, 64, 64)))
    rep = inspect(root, dates=dates)
    assert rep["layout"] == "pretrain" and rep["num_samples"] == 64
    (root / "dates.json").write_text(json.dumps(dates))  # the sidecar lets the CLI find the dates
    assert main(["data", "inspect", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dates"]["s1"]["first"] == "2019-09-17"


def test_empty_tiles_are_skipped_and_counted(tmp_path) -> None:
    root = tmp_path / "pre"
    (root / "s2").mkdir(parents=True)
    data = (_field(10, 64, 10) + 1000).astype(np.uint16)
    data[:, :32, :32] = 0  # tile 0_0 is nodata everywhere
    write_tif(root / "s2" / "s2_20200110.tif", data, res=10, origin=(X0, Y0), nodata=0)
    with pytest.warns(UserWarning, match=r"1 of 4 tiles have no valid pixel in any modality .*\(0_0\)"):
        ds = PretrainDataset(root, size=32)
    assert ds.ids == ["0_1", "1_0", "1_1"] and ds.skipped_empty == 1
    assert len(PretrainDataset(root, size=32, skip_empty=False)) == 4
    data[:] = 0
    write_tif(root / "s2" / "s2_20200110.tif", data, res=10, origin=(X0, Y0), nodata=0)
    with pytest.raises(ValueError, match="every one of the 4 tiles is nodata"):
        PretrainDataset(root, size=32)


def test_duplicate_dates_are_warned_about(tmp_path) -> None:
    root = _folder(tmp_path)
    write_tif(
        root / "s2" / "copy_2020-01-10.tif", np.ones((10, 128, 128), np.uint16) * 5, res=10, origin=(X0, Y0)
    )
    with pytest.warns(
        UserWarning, match=r"same acquisition date \(2020-01-10: .*copy_2020-01-10.tif, s2_20200110"
    ):
        PretrainDataset(root, size=32)


def test_reprojected_edges_are_invalid(tmp_path) -> None:
    root = tmp_path / "pre"
    (root / "s2").mkdir(parents=True)
    (root / "s1").mkdir()
    write_tif(root / "s2" / "s2_20200110.tif", np.full((10, 64, 64), 900, np.uint16), res=10, origin=(X0, Y0))
    # S1 without a nodata value on EPSG:32632: the warper's fill outside it must not pass as data
    from rasterio.warp import transform as warp_transform

    xs, ys = warp_transform("EPSG:32633", "EPSG:32632", [X0], [Y0])
    s1 = np.full((2, 40, 40), -12.0, np.float32)  # inside the s2 file: its bounding box sets the area
    write_tif(
        root / "s1" / "s1_20200110.tif", s1, crs="EPSG:32632", origin=(xs[0] + 100, ys[0] - 100), res=10
    )
    ds = PretrainDataset(root, size=32, resampling="nearest")
    s = ds[0]
    inv = s["s1_invalid"][0]
    assert inv.any() and not inv.all()  # the rotated footprint leaves a corner uncovered
    assert (s["s1"][0, :, ~inv] == -12.0).all() and (s["s1"][0, :, inv] == 0).all()
