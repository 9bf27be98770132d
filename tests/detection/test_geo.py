"""Detections on the map (:mod:`skysense.detection.geo`) and the detection run of ``skysense predict``
(:mod:`skysense.detection.predict`), with a stub detector."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import rasterio
import torch
from rasterio.transform import Affine, from_origin

from skysense.detection.geo import check_output, feature_collection, write
from skysense.detection.predict import detect_file
from skysense.detection.tiling import Detections
from tests.detection.stub import CLASSES, scene, stub_detector, write_tif


def dets(boxes: list[list[float]], labels: list[int] | None = None) -> Detections:
    n = len(boxes)
    b = torch.tensor(boxes, dtype=torch.float64).reshape(n, -1)
    return Detections(b, torch.linspace(0.9, 0.5, n), torch.tensor(labels or [0] * n), list(CLASSES))


def ring(fc: dict, k: int = 0) -> list[list[float]]:
    return fc["features"][k]["geometry"]["coordinates"][0]


def signed_area(pts: list[list[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))


def test_a_known_pixel_lands_on_its_map_coordinates(tmp_path: Path) -> None:
    """The box of pixel (row 20, col 10) of a GeoTIFF written here: its corners are what rasterio's own
    ``xy`` gives for that pixel's corners (an independent reference), in a counter-clockwise closed ring."""
    path = write_tif(
        tmp_path / "s.tif", scene(64, 64, []), transform=from_origin(500_000.0, 4_200_000.0, 0.5, 0.5)
    )
    with rasterio.open(path) as src:
        fc = feature_collection(dets([[10, 20, 11, 21]], [2]), src.crs, src.transform, "s.tif")
        want = {
            src.xy(r, c, offset=o)
            for r, c, o in [(20, 10, "ul"), (20, 10, "ur"), (20, 10, "lr"), (20, 10, "ll")]
        }
    pts = ring(fc)
    assert pts[0] == pts[-1] and len(pts) == 5
    assert {tuple(p) for p in pts[:-1]} == {(float(x), float(y)) for x, y in want}
    assert {tuple(p) for p in pts[:-1]} == {(500_005.0, 4_199_990.0), (500_005.5, 4_199_990.0),
                                           (500_005.5, 4_199_989.5), (500_005.0, 4_199_989.5)}  # fmt: skip
    assert signed_area(pts) == pytest.approx(0.25)  # counter-clockwise, 0.5 m x 0.5 m
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert fc["features"][0]["properties"] == {"class": "blue", "label": 2, "score": 0.9}


def test_rotated_grid_and_oriented_box(tmp_path: Path) -> None:
    """A grid turned by 30 degrees and an oriented box: corners through rasterio's ``xy``, area kept."""
    t = from_origin(300_000.0, 5_000_000.0, 2.0, 2.0) @ Affine.rotation(30)
    path = write_tif(tmp_path / "r.tif", scene(32, 32, []), transform=t)
    box = [[12.0, 8.0, 6.0, 2.0, math.pi / 6]]  # cx, cy, w, h, angle: corners off the pixel grid
    with rasterio.open(path) as src:
        fc = feature_collection(dets(box), src.crs, src.transform)
        pts = ring(fc)
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        corner = (12 - 3 * c + 1 * s, 8 - 3 * s - 1 * c)  # c - u w/2 - v h/2 in pixels (x, y)
        want = src.transform @ corner
    assert any(p == pytest.approx(list(want)) for p in pts)
    assert signed_area(pts) == pytest.approx(6 * 2 * 4.0)  # 2 m pixels


def test_no_crs_refuses_geojson_and_writes_dota_and_coco(tmp_path: Path) -> None:
    d = dets([[1, 2, 5, 9], [10, 10, 20, 12]], [0, 1])
    with pytest.raises(ValueError, match="no CRS.*NAME.txt"):
        check_output(tmp_path / "o.geojson", None, "img.png")
    with pytest.raises(ValueError, match="suffix"):
        check_output(tmp_path / "o.shp", None, "img.png")
    txt = write(tmp_path / "o.txt", d, None, Affine.identity(), "img.png", 30, 40)
    first = txt.read_text().splitlines()[0].split()
    assert [float(v) for v in first[:8]] == [1, 2, 5, 2, 5, 9, 1, 9] and first[8] == "red"
    coco = json.loads(write(tmp_path / "o.json", d, None, Affine.identity(), "img.png", 30, 40).read_text())
    assert coco["images"][0] == {"id": 1, "file_name": "img.png", "height": 30, "width": 40}
    assert [a["bbox"] for a in coco["annotations"]] == [[1, 2, 4, 7], [10, 10, 10, 2]]


def test_detect_file_end_to_end(tmp_path: Path) -> None:
    """A GeoTIFF of squares -> GeoJSON: one feature per square, at its map position; again into an
    existing output is a no-op; a PNG without CRS -> refused as GeoJSON, fine as DOTA."""
    img = scene(200, 260, [(5, 5, 10, 0), (90, 100, 20, 1), (240, 180, 12, 2)])
    path = write_tif(tmp_path / "s.tif", img)
    out = tmp_path / "s.geojson"
    s = detect_file(path, out, stub_detector(), tile=128, overlap=32, progress=False)
    fc = json.loads(out.read_text())
    assert s.detections == 3 and s.per_class == {"red": 1, "green": 1, "blue": 1} and s.tiles == 2 * 3
    green = next(f for f in fc["features"] if f["properties"]["class"] == "green")
    xs, ys = zip(*green["geometry"]["coordinates"][0])
    assert (min(xs), max(ys)) == (500_000.0 + 90 * 0.5, 4_200_000.0 - 100 * 0.5)
    assert (max(xs), min(ys)) == (500_000.0 + 110 * 0.5, 4_200_000.0 - 120 * 0.5)
    again = detect_file(path, out, stub_detector(), tile=128, overlap=32, progress=False)
    assert "already complete" in again.out
    plain = write_tif(tmp_path / "p.tif", img, crs=None)
    with pytest.raises(ValueError, match="no CRS"):
        detect_file(plain, tmp_path / "p.geojson", stub_detector(), progress=False)
    assert not (tmp_path / "p.geojson").exists()
    detect_file(plain, tmp_path / "p.txt", stub_detector(), tile=128, overlap=32, progress=False)
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 3


def tiny_checkpoint(path: Path, task: str) -> Path:
    """A detector of the tiny preset (random init, 3 classes) saved as `skysense finetune` saves one."""
    import dataclasses

    from skysense.detection.models import DetectionHeadConfig, build_detector
    from skysense.detection.task import DetectionConfig
    from skysense.engine.state import save_checkpoint
    from skysense.models.skysense import build_model

    torch.manual_seed(0)
    encoder = build_model("tiny", s2=None, s1=None)
    model = build_detector(task, encoder, len(CLASSES))
    meta = {"task": task, "classes": CLASSES, "encoder": encoder.cfg.to_dict(), "input": "hr"}
    meta |= {"head": dataclasses.asdict(DetectionHeadConfig()), "image_size": 128}
    config = dataclasses.asdict(DetectionConfig(task=task))
    save_checkpoint(path, {"meta": meta, "model": model.state_dict(), "config": config})
    return path


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "oriented_detection"])
def test_predict_cli_with_a_detector_checkpoint(tmp_path: Path, task: str) -> None:
    """``skysense predict`` dispatches a detection checkpoint: on a one-tile image without CRS the DOTA
    file holds the detector's own boxes on the normalised image; on a GeoTIFF, GeoJSON with as many
    features; GeoJSON without a CRS and --format zarr are refused."""
    from skysense.cli import main
    from skysense.data.scenes import normalise_hr
    from skysense.detection.geo import pixel_polygons
    from skysense.detection.task import load_detector

    ck = tiny_checkpoint(tmp_path / "best.ckpt", task)
    img = scene(128, 128, [(20, 30, 24, 0), (80, 70, 30, 2)])
    plain = write_tif(tmp_path / "plain.tif", img, crs=None)
    common = ["--checkpoint", str(ck), "--tile", "128", "--overlap", "32", "--quiet", "--device", "cpu"]
    common += ["--precision", "fp32"]
    assert main(["predict", str(plain), "--out", str(tmp_path / "o.txt"), *common]) == 0
    model, _ = load_detector(ck)
    with torch.inference_mode():
        want = model(normalise_hr(torch.from_numpy(img))[None])[0]
    lines = [ln.split() for ln in (tmp_path / "o.txt").read_text().splitlines()]
    got = torch.tensor([[float(v) for v in ln[:8]] for ln in lines]).view(-1, 4, 2)
    assert len(lines) == len(want["scores"]) > 0
    assert torch.allclose(got, torch.from_numpy(pixel_polygons(want["boxes"])).float(), atol=0.06)
    assert [float(ln[9]) for ln in lines] == pytest.approx(want["scores"].tolist(), abs=6e-5)
    assert [ln[8] for ln in lines] == [CLASSES[k] for k in want["labels"].tolist()]
    geo = write_tif(tmp_path / "geo.tif", img)
    assert main(["predict", str(geo), "--out", str(tmp_path / "o.geojson"), *common]) == 0
    fc = json.loads((tmp_path / "o.geojson").read_text())
    assert len(fc["features"]) == len(lines) and fc["crs"]["properties"]["name"].endswith("32633")
    assert main(["predict", str(plain), "--out", str(tmp_path / "p.geojson"), *common]) == 2
    assert main(["predict", str(geo), "--out", str(tmp_path / "z.geojson"), "--format", "zarr", *common]) == 2
