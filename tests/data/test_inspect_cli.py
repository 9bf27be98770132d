"""Layout detection, `skysense data inspect`, `skysense stats` (through cli.main and the console script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from skysense.bands import load_stats
from skysense.cli import main
from skysense.data import SceneClassification
from skysense.data.inspect import detect_layout, inspect
from skysense.data.stats import compute_stats

from .conftest import data_path, write_tif

SCRIPT = Path(sys.executable).parent / "skysense"


@pytest.mark.parametrize(
    ("parts", "layout"),
    [
        (("aid",), "scene_classification"),
        (("bigearthnet_mm",), "bigearthnet_mm"),
        (("sen1floods11",), "sen1floods11"),
        (("eolearn_slovenia",), "eopatch"),
        (("levir_cd",), "change_detection"),
        (("seg_samples", "loveda"), "segmentation"),
        (("sits", "cerrado_2classes.npz"), "sits_npz"),
        (("rasters",), "rasters"),
    ],
)
@pytest.mark.data
def test_detect_real_layouts(parts: tuple[str, ...], layout: str) -> None:
    assert detect_layout(data_path(*parts)) == layout


@pytest.mark.data
def test_inspect_real_bigearthnet_json(capsys) -> None:
    root = data_path("bigearthnet_mm")
    assert main(["data", "inspect", str(root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["layout"] == "bigearthnet_mm" and rep["num_samples"] == 3
    assert rep["modalities"]["s2"]["bands"][7] == "B8A" and rep["modalities"]["s1"]["units"] == "dB"
    assert rep["modalities"]["s2"]["shapes"] == [[1, 10, 120, 120]]
    assert rep["crs"] == ["EPSG:32629"] and any("unpaired s1: 3" in p for p in rep["problems"])


@pytest.mark.data
def test_inspect_real_levir_reports_broken_pair() -> None:
    rep = inspect(data_path("levir_cd"))
    assert rep["num_samples"] == 11 and rep["target_values"] == [0, 1]
    assert any("test_113_0256" in p and "(383, 768)" in p for p in rep["problems"])


@pytest.mark.data
@pytest.mark.slow
def test_inspect_text_and_console_script() -> None:
    root = data_path("sen1floods11")
    out = subprocess.run(
        [str(SCRIPT), "data", "inspect", str(root)], capture_output=True, text=True, check=True
    ).stdout
    assert "layout: sen1floods11" in out and "s1 dates: 2019-09-17" in out and "crs: EPSG:4326" in out


@pytest.mark.slow
def test_cli_help_and_errors(tmp_path, capsys) -> None:
    for cmd in (["data", "--help"], ["data", "inspect", "--help"], ["stats", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
    (tmp_path / "empty").mkdir()
    assert main(["data", "inspect", str(tmp_path / "empty")]) == 2
    assert "empty folder" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "nope: not found" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    assert main(["stats", str(tmp_path / "junk")]) == 2
    assert "no dataset layout recognised" in capsys.readouterr().err
    r = subprocess.run([str(SCRIPT), "stats", str(tmp_path / "empty")], capture_output=True, text=True)
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr


def test_inspect_written_rasters_reports_crs_mismatch(tmp_path) -> None:
    write_tif(tmp_path / "a_20200101.tif", np.ones((2, 4, 4), np.uint16), crs="EPSG:32633", nodata=0)
    write_tif(tmp_path / "b_20200111.tif", np.ones((2, 4, 4), np.uint16), crs="EPSG:32632")
    rep = inspect(tmp_path)
    assert rep["layout"] == "rasters" and rep["num_samples"] == 2
    assert [f["date"] for f in rep["files"]] == ["2020-01-01", "2020-01-11"] and rep["files"][0][
        "nodata"
    ] == 0.0
    assert any("2 different CRS" in p for p in rep["problems"])


def _scene_folder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    pixels = []
    for cls in ("x", "y"):
        (tmp_path / cls).mkdir(parents=True)
        for i in range(2):
            a = rng.integers(1, 255, (3, 6, 6)).astype(np.uint8)
            a[:, 0, 0] = 0  # nodata: excluded from the statistics
            write_tif(tmp_path / cls / f"{i}.tif", a, nodata=0)
            pixels.append(a.reshape(3, -1)[:, 1:])
    return tmp_path, np.concatenate(pixels, axis=1).astype(np.float64)


def test_stats_match_numpy_and_skip_nodata(tmp_path) -> None:
    root, valid = _scene_folder(tmp_path / "scenes")
    stats, counts = compute_stats(SceneClassification(root), progress=False)
    assert counts["hr"] == valid.shape[1] == 4 * 35
    np.testing.assert_allclose(stats["hr"].mean, valid.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(stats["hr"].std, valid.std(axis=1), rtol=1e-10)
    out = tmp_path / "st.json"
    assert main(["stats", str(root), "--json", "--out", str(out)]) == 0
    assert load_stats(out)["hr"].bands == ("R", "G", "B")
    np.testing.assert_allclose(load_stats(out)["hr"].mean, valid.mean(axis=1), rtol=1e-10)


@pytest.mark.data
def test_stats_real_s1_db() -> None:
    root = data_path("bigearthnet_mm")
    from skysense.data import BigEarthNetMM

    stats, counts = compute_stats(BigEarthNetMM(root, modalities=("s1",)), progress=False)
    vv = []
    for f in sorted((root / "s1").glob("*/*_VV.tif")):
        with rasterio.open(f) as ds:
            vv.append(ds.read(1).ravel())
    assert counts["s1"] == 6 * 120 * 120
    assert stats["s1"].mean[0] == pytest.approx(float(np.concatenate(vv).astype(np.float64).mean()), rel=1e-6)


@pytest.mark.data
def test_quicklook_png(tmp_path) -> None:
    root = data_path("levir_cd")
    out = tmp_path / "ql.png"
    assert main(["data", "inspect", str(root), "--png", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_spread_picks_cover_small_datasets() -> None:
    from skysense.data.inspect import spread

    assert spread(3, 8) == [0, 1, 2] and spread(1, 4) == [0] and spread(10, 4) == [0, 3, 6, 9]


def test_inspect_all_samples_names_a_corrupt_file(tmp_path) -> None:
    root, _ = _scene_folder(tmp_path / "scenes")
    good = (root / "x" / "0.tif").read_bytes()
    (root / "y" / "broken.tif").write_bytes(good[: len(good) // 2])
    rep = inspect(root, max_samples=0)
    assert rep["samples_checked"] == 5
    assert any("broken.tif" in p for p in rep["problems"])
