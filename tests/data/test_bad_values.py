"""Values that do not match what they are declared to be: S1 units, complex SAR, int8 DN (all refused)."""

from __future__ import annotations

import numpy as np
import pytest

from skysense.data.readers import as_s1_db, read_image, read_raster, read_s1, read_s2_bandset
from skysense.data.safe import s2_image_folders

from .conftest import write_tif


def _s1(tmp_path, values: np.ndarray, name: str = "s1.tif"):
    return write_tif(tmp_path / name, values.astype(np.float32), descriptions=["VV", "VH"])


def _linear(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.01, 0.12, (2, 8, 8))  # linear power of land: VV median about 0.06


def test_linear_s1_declared_db_is_refused_with_what_was_seen(tmp_path) -> None:
    f = _s1(tmp_path, _linear())
    with pytest.raises(ValueError, match=r"non-negative values with median 0\.0\d+.*linear power, not dB"):
        read_s1(f, units="db")  # what BigEarthNetMM and Sen1Floods11 declare


def test_db_s1_declared_linear_is_refused_not_emptied(tmp_path) -> None:
    f = _s1(tmp_path, 10 * np.log10(_linear()))
    with pytest.raises(ValueError, match=r"negative values.*looks like dB, not linear power"):
        read_s1(f, units="linear")


def test_auto_units(tmp_path) -> None:
    lin = _linear()
    r = read_s1(_s1(tmp_path, lin), units="auto")
    assert r.meta["source_units"] == "linear"
    np.testing.assert_allclose(r.data, 10 * np.log10(lin.astype(np.float32)), rtol=1e-5)
    # a bright, all-positive dB crop (a city) is dB already: never converted a second time
    bright = np.random.default_rng(1).uniform(1.5, 9.0, (2, 8, 8)).astype(np.float32)
    r = read_s1(_s1(tmp_path, bright, "bright.tif"), units="auto")
    assert r.meta["source_units"] == "db"
    np.testing.assert_array_equal(r.data, bright)
    # dB as scaled integers is no backscatter in any units
    with pytest.raises(ValueError, match="no dB backscatter"):
        read_s1(_s1(tmp_path, 100 * 10 * np.log10(lin), "scaled.tif"), units="auto")


def test_complex_slc_is_refused(tmp_path) -> None:
    slc = (np.ones((2, 4, 4)) + 1j * np.arange(16).reshape(4, 4)).astype(np.complex64)
    f = write_tif(tmp_path / "slc.tif", slc)
    with pytest.raises(ValueError, match=r"complex pixels \(complex64\).*SLC"):
        read_raster(f)
    with pytest.raises(ValueError, match="complex"):
        read_s1(f)


def test_int8_dn_is_refused(tmp_path) -> None:
    f = write_tif(tmp_path / "hr.tif", np.full((3, 4, 4), -56, np.int8))  # 200 wrapped to int8
    with pytest.raises(ValueError, match="int8 pixels cannot hold digital numbers"):
        read_image(f)
    folder = tmp_path / "bands"
    folder.mkdir()
    for b in ("B02", "B03"):
        write_tif(folder / f"x_{b}.tif", np.full((1, 4, 4), 100, np.int8))
    with pytest.raises(ValueError, match="int8 pixels cannot hold Sentinel-2 reflectance DN"):
        read_s2_bandset(folder, bands=("B2", "B3"))
    assert s2_image_folders(folder) == [folder]


def test_as_s1_db_rejects_unknown_units(tmp_path) -> None:
    r = read_raster(_s1(tmp_path, -10 * np.ones((2, 2, 2))))
    with pytest.raises(ValueError, match="unknown Sentinel-1 units"):
        as_s1_db(r, "decibel")  # type: ignore[arg-type]
