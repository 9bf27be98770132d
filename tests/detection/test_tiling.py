"""Tiled detection (:mod:`skysense.detection.tiling`) against the detector on the whole image, with a
stub detector whose answer is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp

from skysense.detection.tiling import Detections, detect_tiled, tile_origins
from tests.detection.stub import as_rows, random_squares, scene, stub_detector, write_tif


def whole(img, oriented: bool = False) -> list[tuple]:
    """The stub on the whole image at once."""
    det = stub_detector(oriented)
    out = det.run(det.normalise(torch.from_numpy(img).float()[None]))[0]
    return as_rows(out["boxes"], out["scores"], out["labels"])


def rows(d: Detections) -> list[tuple]:
    return as_rows(d.boxes, d.scores, d.labels)


@pytest.mark.parametrize(
    ("size", "tile", "overlap"), [(300, 128, 32), (128, 128, 32), (90, 128, 32), (460, 100, 0)]
)
def test_origins_cover_the_axis(size: int, tile: int, overlap: int) -> None:
    o = tile_origins(size, tile, overlap)
    assert o[0] == 0 and o == sorted(set(o))
    assert o[-1] + tile == max(size, tile)  # the last tile ends at the edge (or is padded past a small image)
    steps = [b - a for a, b in zip(o, o[1:])]
    assert all(0 < s <= tile - overlap for s in steps)  # neighbours overlap by at least `overlap`


def test_bad_tiling_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(100, 64, 64)


@pytest.mark.parametrize(
    ("oriented", "h", "w", "tiles"),
    [(False, 300, 460, 3 * 5), (True, 300, 460, 3 * 5), (False, 230, 400, 3 * 4)],
)
def test_tiled_equals_whole_image(tmp_path: Path, oriented: bool, h: int, w: int, tiles: int) -> None:
    """Squares no larger than the overlap: every one found once, with the whole image's box, also
    those cut by tile borders; the scene is no multiple of the tile (128); at 230 rows the last tile
    row starts at 102, 6 rows after the one before, so three tile rows share rows 102-127."""
    img = scene(h, w, random_squares(h, w, 60, sides=(4, 24)))
    path = write_tif(tmp_path / "s.tif", img)
    want = whole(img, oriented)
    got = detect_tiled(path, stub_detector(oriented), tile=128, overlap=32, batch=3, progress=False)
    assert rows(got) == want
    assert got.tiles == tiles
    assert torch.all(got.scores[:-1] >= got.scores[1:])  # best first


def test_object_cut_by_borders_is_found_once(tmp_path: Path) -> None:
    """Tiles at 0 and 96 (128 wide): squares across a vertical border, a horizontal one and a corner
    shared by four tiles, and one just inside a tile's edge; each once, whole."""
    squares = [(120, 20, 16, 0), (20, 120, 12, 1), (118, 118, 14, 2), (200, 112, 16, 0), (60, 126, 2, 1)]
    img = scene(224, 224, squares)
    path = write_tif(tmp_path / "s.tif", img)
    got = detect_tiled(path, stub_detector(), tile=128, overlap=32, progress=False)
    assert rows(got) == whole(img)
    assert len(got) == len(squares)


def test_object_wider_than_the_overlap_is_kept_in_parts(tmp_path: Path) -> None:
    """A square of 40 pixels over a border with 16 of overlap: no tile sees it whole, both parts stay."""
    img = scene(128, 200, [(70, 40, 40, 0)])
    path = write_tif(tmp_path / "s.tif", img)
    got = detect_tiled(path, stub_detector(), tile=100, overlap=16, progress=False)
    assert sorted(got.boxes[:, 0].tolist()) == [70.0, 84.0]  # tile 1 starts at 84: its part starts there
    assert got.boxes[:, 2].max() == 110.0 and got.boxes[:, 2].min() == 100.0


def test_copies_in_the_overlap_are_merged(tmp_path: Path) -> None:
    """A square inside an overlap is seen whole by two tiles: one detection remains."""
    img = scene(128, 224, [(100, 50, 20, 2)])  # tiles at 0 and 96: x 100..120 lies in both
    got = detect_tiled(
        write_tif(tmp_path / "s.tif", img), stub_detector(), tile=128, overlap=32, progress=False
    )
    assert got.boxes.tolist() == [[100.0, 50.0, 120.0, 70.0]] and got.labels.tolist() == [2]


def test_image_smaller_than_a_tile_and_no_crs(tmp_path: Path) -> None:
    img = scene(50, 70, [(10, 10, 8, 1), (60, 40, 10, 0)])
    path = write_tif(tmp_path / "s.tif", img, crs=None)
    got = detect_tiled(path, stub_detector(), tile=128, overlap=32, progress=False)
    assert rows(got) == whole(img) and got.tiles == 1


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        detect_tiled(tmp_path / "none.tif", stub_detector(), progress=False)
    path = write_tif(tmp_path / "two.tif", scene(40, 40, [])[:2])
    with pytest.raises(ValueError, match="band"):
        detect_tiled(path, stub_detector(), tile=32, overlap=8, progress=False)


def test_transparent_pixels_are_no_objects(tmp_path: Path) -> None:
    """An alpha band: a square under transparent pixels is not there (nodata reads as 0 after normalising)."""
    import numpy as np

    img = scene(100, 100, [(10, 10, 12, 0), (60, 60, 12, 1)])
    alpha = np.full((1, 100, 100), 255, np.uint8)
    alpha[0, 50:, 50:] = 0
    path = write_tif(tmp_path / "a.tif", np.concatenate([img, alpha]))
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    got = detect_tiled(path, stub_detector(), tile=64, overlap=16, progress=False)
    assert got.boxes.tolist() == [[10.0, 10.0, 22.0, 22.0]]
