"""Sentinel-2 products as ESA ships them: L1C and L2A SAFE folders, ``*_B02_10m.jp2`` names, dates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from skysense.bands import S2_BANDS, S2_RESOLUTION_M
from skysense.data.readers import find_s2_band_files, read_s2_bandset
from skysense.data.safe import s2_product_date

from .conftest import write_tif

SIDE_M = 120.0  # 12 px at 10 m, 6 at 20 m, 2 at 60 m
ORIGIN = (600000.0, 5000000.0)


def _write_band(path: Path, value: int, res: int, zero_row: int | None = None) -> Path:
    n = int(SIDE_M / res)
    data = np.full((1, n, n), value, dtype=np.uint16)
    data[0, 0, 0] = value + 1  # not constant, so a resampled copy would differ
    if zero_row is not None:
        data[0, zero_row] = 0  # outside the swath: the products' NODATA value
    if path.suffix == ".jp2":
        with rasterio.open(
            path, "w", driver="JP2OpenJPEG", width=n, height=n, count=1, dtype="uint16",
            crs="EPSG:32632", transform=from_origin(*ORIGIN, res, res), QUALITY=100, REVERSIBLE="YES",
        ) as ds:  # fmt: skip
            ds.write(data)
        return path
    return write_tif(path, data, crs="EPSG:32632", origin=ORIGIN, res=res)


def _value(band: str) -> int:
    return 1000 + 10 * list(S2_RESOLUTION_M).index(band)


def make_l2a(root: Path) -> Path:
    safe = root / "S2A_MSIL2A_20210302T101021_N0214_R022_T32TQM_20210302T121234.SAFE"
    img = safe / "GRANULE" / "L2A_T32TQM_A029000_20210302T101325" / "IMG_DATA"
    stem = "T32TQM_20210302T101021"
    for folder in ("R10m", "R20m", "R60m"):
        (img / folder).mkdir(parents=True)
    for band, res in S2_RESOLUTION_M.items():
        if band == "B10":  # no cirrus band in L2A
            continue
        name = f"B{int(band[1:]) if band != 'B8A' else '8A':0>2}"
        ext = ".jp2" if res == 10 else ".tif"
        _write_band(img / f"R{res}m" / f"{stem}_{name}_{res}m{ext}", _value(band), res)
        for coarser in (r for r in (20, 60) if r > res):  # ESA's resampled copies: decoys
            _write_band(img / f"R{coarser}m" / f"{stem}_{name}_{coarser}m.tif", 7, coarser)
    _write_band(img / "R10m" / f"{stem}_TCI_10m.tif", 1, 10)
    _write_band(img / "R20m" / f"{stem}_SCL_20m.tif", 4, 20)
    (safe / "MTD_MSIL2A.xml").write_text(
        "<?xml version='1.0'?><n1:Level-2A_User_Product><General_Info><Product_Info>"
        "<PRODUCT_START_TIME>2021-03-04T10:10:21.024Z</PRODUCT_START_TIME>"
        "</Product_Info></General_Info><Product_Image_Characteristics><BOA_ADD_OFFSET_VALUES_LIST>"
        + "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
        + "</BOA_ADD_OFFSET_VALUES_LIST><Spectral_Information_List>"
        + "".join(
            f'<Spectral_Information bandId="{i}" physicalBand="{b}"></Spectral_Information>'
            for i, b in enumerate(S2_RESOLUTION_M)
        )
        + "</Spectral_Information_List></Product_Image_Characteristics></n1:Level-2A_User_Product>"
    )
    return safe


def make_l1c(root: Path) -> Path:
    safe = root / "S2B_MSIL1C_20190817T101029_N0208_R022_T32TQM_20190817T122000.SAFE"
    granule = safe / "GRANULE" / "L1C_T32TQM_A012345_20190817T101325"
    (granule / "IMG_DATA").mkdir(parents=True)
    (granule / "QI_DATA").mkdir()
    for band, res in S2_RESOLUTION_M.items():
        name = f"B{int(band[1:]) if band != 'B8A' else '8A':0>2}"
        _write_band(granule / "IMG_DATA" / f"T32TQM_20190817T101029_{name}.jp2", _value(band), res)
    _write_band(granule / "QI_DATA" / "MSK_DETFOO_B02.tif", 1, 10)  # a mask, not a band
    return safe


def test_l2a_safe_takes_each_band_at_its_native_resolution(tmp_path) -> None:
    safe = make_l2a(tmp_path)
    files = find_s2_band_files(safe)
    assert sorted(files) == sorted(b for b in S2_RESOLUTION_M if b != "B10")
    for band, f in files.items():
        assert f.parent.name == f"R{S2_RESOLUTION_M[band]}m", (band, f)
    r = read_s2_bandset(safe, resampling="nearest")
    assert r.data.shape == (10, 12, 12)
    for i, band in enumerate(S2_BANDS):
        scale = S2_RESOLUTION_M[band] // 10
        want = np.full((12, 12), _value(band) - 1000, dtype=np.float32)  # BOA_ADD_OFFSET added
        want[:scale, :scale] += 1  # the top-left source pixel, replicated
        np.testing.assert_array_equal(r.data[i], want, err_msg=band)
    assert r.meta["date"] == "2021-03-04"  # MTD_MSIL2A.xml wins over the name's 20210302
    assert r.meta["add_offset"]["B8A"] == -1000.0 and not r.invalid.any()
    # the granule and IMG_DATA folders read the same
    granule = next((safe / "GRANULE").iterdir())
    for folder in (granule, granule / "IMG_DATA"):
        np.testing.assert_array_equal(read_s2_bandset(folder, resampling="nearest").data, r.data)


def test_l1c_safe_jp2_and_date_from_the_product_name(tmp_path) -> None:
    safe = make_l1c(tmp_path)
    b3 = next((safe / "GRANULE").glob("*/IMG_DATA/*_B03.jp2"))
    b3.unlink()
    _write_band(b3, _value("B3"), 10, zero_row=11)
    r = read_s2_bandset(safe, resampling="nearest")
    assert r.data.shape == (10, 12, 12)
    assert r.data[0, 5, 5] == _value("B2") and r.data[S2_BANDS.index("B12"), 5, 5] == _value("B12")
    assert r.invalid[11].all() and not r.invalid[:11].any() and "add_offset" not in r.meta
    assert all(p.endswith(".jp2") for p in r.meta["path"])
    assert r.meta["date"] == "2019-08-17"
    assert str(s2_product_date(next((safe / "GRANULE").iterdir()) / "IMG_DATA")) == "2019-08-17"


def test_esa_named_tifs_in_a_plain_folder_and_errors(tmp_path) -> None:
    for band in S2_BANDS:
        res = S2_RESOLUTION_M[band]
        name = f"B{int(band[1:]) if band != 'B8A' else '8A':0>2}"
        _write_band(tmp_path / f"T32TQM_20210302T101021_{name}_{res}m.tif", _value(band), res)
    r = read_s2_bandset(tmp_path)
    assert r.data.shape == (10, 12, 12) and "date" not in r.meta
    _write_band(tmp_path / "T32TQM_20210302T101021_B02_10m.jp2", 5, 10)
    with pytest.raises(ValueError, match="two files for band B2"):
        find_s2_band_files(tmp_path)
    safe = make_l1c(tmp_path / "p")
    (safe / "GRANULE" / "L1C_second").mkdir()
    with pytest.raises(ValueError, match="2 granules"):
        read_s2_bandset(safe)
