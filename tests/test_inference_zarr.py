"""Zarr output of large-scene inference: the GeoTIFF's bands and georeferencing, resume, a missing zarr
(:mod:`skysense.inference_zarr`)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from skysense.inference import Grid, infer
from tests.test_inference import ORIGIN, embed_one_and_two_ranks, local_head, read, write_scene

zarr = pytest.importorskip("zarr")


def test_zarr_holds_the_geotiff_bands_crs_and_transform(tmp_path):
    src = write_scene(tmp_path / "in.tif", 300, 280, nodata=0)
    with rasterio.open(src, "r+") as d:  # a nodata corner: NaN and valid 0 in both outputs
        d.write(np.zeros((3, 40, 40), np.uint8), window=((0, 40), (0, 40)))
    kw = {"model_file": src, "tile": 64, "overlap": 32, "progress": False}
    infer([src], tmp_path / "out.tif", local_head(4), **kw)
    infer([src], tmp_path / "out.zarr", local_head(4), fmt="zarr", **kw)
    tif, meta = read(tmp_path / "out.tif")
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    got = group["bands"][:]
    assert got.shape == tif.shape == (4, 75, 70)
    assert got.tobytes() == tif.tobytes()  # NaN where no input is valid, in both
    assert np.isnan(got[0, 0, 0]) and got[-1, 0, 0] == 0
    attrs = dict(group.attrs)
    assert attrs["band_names"] == ["r", "g", "b", "valid"] == list(meta["names"])
    assert attrs["epsg"] == 32633 and CRS.from_wkt(attrs["crs_wkt"]) == meta["crs"]
    assert Affine(*attrs["transform"]) == meta["transform"] == ORIGIN @ Affine.scale(4)
    with rasterio.open(tmp_path / "out.tif") as o:  # centre coordinates of the cells
        assert tuple(group["x"][[0, 69]]) == (o.xy(0, 0)[0], o.xy(0, 69)[0])
        assert tuple(group["y"][[0, 74]]) == (o.xy(0, 0)[1], o.xy(74, 0)[1])
        assert attrs["tile"] == o.tags()["tile"] == "64"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif", "out.zarr"]


def test_zarr_resumes_to_the_arrays_of_an_uninterrupted_run(tmp_path):
    src = write_scene(tmp_path / "in.tif", 320, 96)
    kw = {"model_file": src, "tile": 64, "overlap": 32, "batch": 2, "progress": False, "fmt": "zarr"}
    head = local_head(4)
    infer([src], tmp_path / "whole.zarr", head, **kw)
    out = tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        infer([src], out, head, stop_after=3, **kw)
    assert not out.exists() and (tmp_path / "out.zarr.partial").is_dir()
    summary = infer([src], out, head, **kw)
    grid = Grid(320, 96, 64, 32, 4)
    assert summary.tiles == (grid.rows - 3) * grid.cols  # the three recorded strips were not recomputed
    a = zarr.open_group(str(tmp_path / "whole.zarr"), mode="r")["bands"][:]
    b = zarr.open_group(str(out), mode="r")["bands"][:]
    assert a.tobytes() == b.tobytes()
    assert not list(tmp_path.glob("*partial*"))
    assert infer([src], out, head, **kw).tiles == 0  # finished
    assert infer([src], out, head, overwrite=True, **kw).tiles == grid.rows * grid.cols
    assert zarr.open_group(str(out), mode="r")["bands"][:].tobytes() == a.tobytes()


def test_zarr_store_of_another_run_is_refused(tmp_path):
    src = write_scene(tmp_path / "in.tif", 256, 64)
    kw = {"model_file": src, "tile": 64, "overlap": 32, "progress": False, "fmt": "zarr"}
    with pytest.raises(KeyboardInterrupt):
        infer([src], tmp_path / "o.zarr", local_head(4), stop_after=1, **kw)
    with pytest.raises(ValueError, match="unfinished run with other inputs or settings"):
        infer([src], tmp_path / "o.zarr", local_head(8), **kw)


def test_quicklook_reads_a_zarr_output(tmp_path):
    from skysense.inference_files import quicklook

    src = write_scene(tmp_path / "in.tif", 128, 128)
    kw = {"model_file": src, "tile": 64, "overlap": 32, "progress": False, "fmt": "zarr"}
    infer([src], tmp_path / "o.zarr", local_head(4), **kw)
    png = quicklook(tmp_path / "o.zarr", tmp_path / "o.png")
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (32, 32)


def test_missing_zarr_names_the_extra(tmp_path, monkeypatch):
    src = write_scene(tmp_path / "in.tif", 64, 64)
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr raises ImportError
    with pytest.raises(ImportError, match=r"pip install skysense\[zarr\]"):
        infer([src], tmp_path / "o.zarr", local_head(4), model_file=src, fmt="zarr", progress=False)
    assert not list(tmp_path.glob("o.zarr*"))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_write_one_store_as_one_process_does(tmp_path):
    one, two = embed_one_and_two_ranks(tmp_path, ".zarr", ("--format", "zarr"))
    a = zarr.open_group(str(one), mode="r")
    b = zarr.open_group(str(two), mode="r")
    assert a["bands"][:].tobytes() == b["bands"][:].tobytes()
    assert a.attrs["transform"] == b.attrs["transform"] and a.attrs["band_names"] == b.attrs["band_names"]
    assert not list(tmp_path.glob("*partial*"))
