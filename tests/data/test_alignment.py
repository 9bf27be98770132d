"""S1 and S2 of one chip on different CRSs: S1 is reprojected onto the S2 grid, its uncovered edges masked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from skysense.data.datasets import put_aligned
from skysense.data.readers import read_raster, read_s1

from .conftest import write_tif

S2_ORIGIN = (500000.0, 5000000.0)  # EPSG:32633, 10 m, 16 x 16 px: 160 m
POINT = (500075.0, 4999915.0)  # a ground point in S2 cell (row 8, col 7)


def _s1_in_utm32(tmp_path) -> tuple:
    """S1 (dB) on EPSG:32632, 10 m, covering the S2 chip but shifted: VV = -20 except a 3x3 block of
    -5 around POINT, VH = -25."""
    (x, y) = warp_transform(CRS.from_epsg(32633), CRS.from_epsg(32632), [POINT[0]], [POINT[1]])
    cx, cy = warp_transform(CRS.from_epsg(32633), CRS.from_epsg(32632), [S2_ORIGIN[0]], [S2_ORIGIN[1]])
    origin = (round(cx[0]) + 35.0, round(cy[0]) + 35.0)  # starts ~35 m inside the chip on the left
    n = 24
    data = np.stack([np.full((n, n), -20.0), np.full((n, n), -25.0)]).astype(np.float32)
    col, row = int((x[0] - origin[0]) // 10), int((origin[1] - y[0]) // 10)
    data[0, row - 1 : row + 2, col - 1 : col + 2] = -5.0
    path = write_tif(
        tmp_path / "s1.tif", data, crs="EPSG:32632", origin=origin, res=10, descriptions=["VV", "VH"]
    )
    return path, origin


def test_s1_on_another_crs_is_reprojected_onto_the_s2_grid(tmp_path) -> None:
    s2_data = np.full((10, 16, 16), 1000, np.uint16)
    s2 = read_raster(write_tif(tmp_path / "s2.tif", s2_data, crs="EPSG:32633", origin=S2_ORIGIN, res=10))
    s1_path, _ = _s1_in_utm32(tmp_path)
    s1 = read_s1(s1_path, units="db")
    sample: dict = {}
    days = torch.tensor([18000])
    put_aligned(sample, {"s1": (s1, days), "s2": (s2, days)}, "S1/S2 of chip x")  # Sen1Floods11's order
    assert sample["s1"].shape == (1, 2, 16, 16) and sample["s2"].shape == (1, 10, 16, 16)
    assert (
        sample["meta"]["s1"]["crs"] == "EPSG:32633"
        and sample["meta"]["s1"]["reprojected_from"] == "EPSG:32632"
    )
    row, col = int((S2_ORIGIN[1] - POINT[1]) // 10), int((POINT[0] - S2_ORIGIN[0]) // 10)
    assert (row, col) == (8, 7)
    assert sample["s1"][0, 0, row, col].item() == pytest.approx(-5.0)  # the known point, the same cell
    assert sample["s1"][0, 1, row, col].item() == pytest.approx(-25.0)
    # the S1 footprint starts inside the chip on the left: those edge cells are invalid and 0
    inv = sample["s1_invalid"][0]
    assert inv[:, :2].all() and not inv[:, 6:].any()
    assert sample["s1"][0, 0, 0, 15].item() == pytest.approx(-20.0)
    assert (sample["s1"][0][:, inv] == 0).all()
    assert not sample["s2_invalid"].any()


def test_no_overlap_is_refused(tmp_path) -> None:
    s2 = read_raster(write_tif(tmp_path / "s2.tif", np.ones((10, 8, 8), np.uint16), crs="EPSG:32633"))
    far = -np.ones((2, 8, 8), np.float32) * 12
    s1 = read_s1(write_tif(tmp_path / "s1.tif", far, crs="EPSG:32632", origin=(200000.0, 1000000.0)))
    with pytest.raises(ValueError, match="does not overlap"):
        put_aligned({}, {"s2": (s2, torch.tensor([1])), "s1": (s1, torch.tensor([1]))}, "pair")
