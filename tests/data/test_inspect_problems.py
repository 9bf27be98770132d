"""`skysense data inspect` reports what the readers refuse (the same checks), and exits 1 when nothing
is usable: one small file or folder per case, made here."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from skysense.cli import main
from skysense.data.inspect import detect_layout, inspect, usable
from skysense.data.readers import read_image, read_raster, read_s1, read_s2_bandset, select_s2_bands

from .conftest import write_tif


def _truncated(d: Path) -> Path:
    full = write_tif(d / "full.tif", np.random.default_rng(0).random((1, 256, 256), np.float32), tiled=True)
    data = full.read_bytes()
    full.unlink()
    f = d / "truncated.tif"
    f.write_bytes(data[: len(data) // 2])  # the header, at the start, still opens
    with rasterio.open(f) as ds:
        assert ds.shape == (256, 256)
    return f


def _all_nan(d: Path) -> Path:
    return write_tif(d / "nan.tif", np.full((2, 8, 8), np.nan, np.float32))


def _all_nodata(d: Path) -> Path:
    return write_tif(d / "nodata.tif", np.zeros((3, 8, 8), np.uint16), nodata=0)


def _one_pixel(d: Path) -> Path:
    return write_tif(d / "pixel.tif", np.ones((3, 1, 1), np.uint8))


def _strip(d: Path) -> Path:
    return write_tif(d / "strip.tif", np.ones((3, 3, 20000), np.uint8))


def _s2_three_bands(d: Path) -> Path:
    return write_tif(d / "s2.tif", np.full((3, 8, 8), 900, np.uint16), descriptions=["B2", "B3", "B4"])


def _bandset_partial(d: Path) -> Path:
    for b in ("B02", "B03", "B04"):
        write_tif(d / f"S2A_MSIL2A_20170617T113321_4_55_{b}.tif", np.full((1, 8, 8), 900, np.uint16))
    return d


def _s1_patch_vv_only(d: Path) -> Path:
    write_tif(d / "S1A_IW_GRDH_20170617_VV.tif", np.full((1, 8, 8), -12.0, np.float32))
    return d


REFUSED: dict[str, tuple[Callable[[Path], Path], Callable[[Path], object], str]] = {
    "truncated TIFF": (_truncated, read_raster, "cannot read pixels"),
    "all NaN": (_all_nan, read_raster, "every pixel is nodata"),
    "100% nodata": (_all_nodata, read_raster, "every pixel is nodata"),
    "1x1": (_one_pixel, read_image, r"1 x 1 raster"),
    "20000x3 strip": (_strip, read_image, r"3 x 20000 strip"),
    "S2 stack of 3 bands": (_s2_three_bands, lambda f: select_s2_bands(read_raster(f)), "missing Sentinel-2"),
    "S2 band set folder": (_bandset_partial, read_s2_bandset, r"missing Sentinel-2 band\(s\) B5"),
    "S1 patch folder": (_s1_patch_vv_only, lambda d: read_s1(sorted(d.iterdir())), r"expected 2 \(VV, VH\)"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_inspect_agrees_with_the_readers(case: str, tmp_path, capsys) -> None:
    make, reader, message = REFUSED[case]
    target = make(tmp_path)
    with pytest.raises(ValueError, match=message):
        reader(target)
    rep = inspect(target)
    assert usable(rep) == 0
    assert any(re.search(message, p) for p in rep["problems"]), rep["problems"]
    assert main(["data", "inspect", str(target)]) == 1
    assert "nothing usable" in capsys.readouterr().err


def test_readable_but_odd_files_are_problems_of_a_usable_file(tmp_path, capsys) -> None:
    # a JPEG renamed .tif, and a transform without a CRS: read, but listed
    with rasterio.open(
        tmp_path / "photo.jpg", "w", driver="JPEG", width=8, height=8, count=3, dtype="uint8"
    ) as ds:
        ds.write(np.full((3, 8, 8), 100, np.uint8))
    shutil.move(tmp_path / "photo.jpg", tmp_path / "photo.tif")
    write_tif(tmp_path / "nocrs.tif", np.ones((3, 8, 8), np.uint8), crs=None)
    for f, message in (("photo.tif", "content is JPEG, not GTiff"), ("nocrs.tif", "a transform but no CRS")):
        assert any(message in n for n in read_raster(tmp_path / f).meta["notes"])
        rep = inspect(tmp_path / f)
        assert usable(rep) == 1 and any(message in p for p in rep["problems"])
        assert main(["data", "inspect", str(tmp_path / f)]) == 0
    capsys.readouterr()


def test_band_set_and_patch_folders_given_directly(tmp_path) -> None:
    s2 = tmp_path / "S2A_MSIL2A_20170617T113321_4_55"
    s2.mkdir()
    for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"):
        res = 10 if b in ("B02", "B03", "B04", "B08") else 20
        write_tif(s2 / f"{s2.name}_{b}.tif", np.full((1, 160 // res, 160 // res), 900, np.uint16), res=res)
    assert detect_layout(s2) == "s2_bandset"
    rep = inspect(s2)
    assert rep["usable"] == 1 and rep["modalities"]["s2"]["shapes"] == [[10, 16, 16]]
    s1 = tmp_path / "S1A_patch"
    s1.mkdir()
    rng = np.random.default_rng(0)
    for pol in ("VV", "VH"):
        write_tif(s1 / f"S1A_patch_{pol}.tif", rng.uniform(0.01, 0.1, (1, 8, 8)).astype(np.float32))
    assert detect_layout(s1) == "s1_patch"
    rep = inspect(s1)
    assert rep["usable"] == 1 and rep["modalities"]["s1"]["units"] == "dB"
