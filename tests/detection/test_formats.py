"""Annotation readers and writers: files written here, the shared format fixtures and the real label files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import shapely
import torch

from skysense.detection.boxes import obb_to_poly
from skysense.detection.data import image_size
from skysense.detection.formats import (
    AnnotationError,
    read_coco,
    read_csv,
    read_dota,
    read_voc,
    read_yolo,
    write_coco,
    write_dota,
)
from tests.data.conftest import data_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def same_shape(obb: torch.Tensor, corners: list[float]) -> float:
    """Area of the symmetric difference between an oriented box and a polygon (shapely, independent)."""
    a = shapely.Polygon(obb_to_poly(obb.view(1, 5).double())[0].tolist())
    b = shapely.Polygon(list(zip(corners[0::2], corners[1::2])))
    return float(a.symmetric_difference(b).area)


# ----------------------------------------------------------------------------- DOTA


def test_dota_header_difficult_and_boxes(tmp_path: Path) -> None:
    f = write(
        tmp_path / "P1.txt",
        "imagesource:GoogleEarth\ngsd:0.146\n"
        "10 20 50 20 50 40 10 40 plane 0\n"
        "\n"
        "100 100 120 80 140 100 120 120 small-vehicle 1\n"
        "5 5 15 5 15 9 5 9 ship\n",
    )
    a = read_dota(f)
    assert a.meta == {"imagesource": "GoogleEarth", "gsd": "0.146"}
    assert a.names == ["plane", "small-vehicle", "ship"]
    assert a.difficult.tolist() == [False, True, False]
    assert a.where == ["line 3", "line 5", "line 6"]
    assert a.image_id == "P1" and a.oriented
    # axis-aligned rectangle: centre (30, 30), 40 along x, 20 along y, angle 0
    torch.testing.assert_close(a.boxes[0], torch.tensor([30.0, 30.0, 40.0, 20.0, 0.0]))
    # a square turned by 45 degrees, side 20 * sqrt(2)
    torch.testing.assert_close(a.boxes[1, :4], torch.tensor([120.0, 100.0, 20 * 2**0.5, 20 * 2**0.5]))
    assert abs(abs(float(a.boxes[1, 4])) - math.pi / 4) < 1e-5
    for k, corners in enumerate(a.polygons.view(-1, 8).tolist()):
        assert same_shape(a.boxes[k], corners) < 1e-3
    torch.testing.assert_close(a.horizontal()[1], torch.tensor([100.0, 80.0, 140.0, 120.0]))


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("10 20 50 20 50 40 10 40", "malformed line"),
        ("10 20 50 20 50 40 10 plane 0", "not a number"),  # 9 fields, a corner short
        ("10 20 50 20 50 40 10 x plane 0", "not a number"),
        ("10 20 50 20 50 nan 10 40 plane 0", "NaN or infinite"),
        ("10 20 50 20 50 40 10 40 plane 7", "malformed line"),
        ("10 20 50 20 50 20 10 20 plane 0", "degenerate polygon"),
        ("10 20 50 40 50 20 10 40 plane 0", "not a convex quadrilateral"),  # bow-tie order
        ("10 20 30 25 50 20 30 40 plane 0", "not a convex quadrilateral"),  # dented
        ("10 20 50 20 50 40 10 40 tank 0", "unknown class 'tank'"),
        ("210 20 250 20 250 40 210 40 plane 0", "wholly outside"),
    ],
)
def test_dota_bad_lines_name_file_and_line(tmp_path: Path, line: str, says: str) -> None:
    f = write(tmp_path / "bad.txt", f"1 1 3 1 3 3 1 3 plane 0\n{line}\n")
    with pytest.raises(AnnotationError, match=says) as e:
        read_dota(f, size=(100, 200), classes=["plane", "ship"])
    assert str(f) in str(e.value) and "line 2" in str(e.value)


def test_dota_not_strict_drops_bad_boxes_with_a_warning(tmp_path: Path) -> None:
    f = write(tmp_path / "b.txt", "1 1 3 1 3 3 1 3 plane 0\n10 20 50 40 50 20 10 40 plane 0\n1 2 3\n")
    with pytest.warns(UserWarning, match="dropped"):
        a = read_dota(f, strict=False)
    assert a.where == ["line 1"] and a.boxes.shape == (1, 5)


def test_oriented_box_past_the_edge_is_kept_whole(tmp_path: Path) -> None:
    f = write(tmp_path / "e.txt", "90 10 110 10 110 30 90 30 ship 0\n")
    with pytest.warns(UserWarning, match="line 1 \\(kept whole\\)"):
        a = read_dota(f, size=(50, 100))
    torch.testing.assert_close(a.boxes[0], torch.tensor([100.0, 20.0, 20.0, 20.0, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # half a pixel over is rounding: no warning
        read_dota(write(tmp_path / "r.txt", "90 10 100.5 10 100.5 30 90 30 ship 0\n"), size=(50, 100))


def test_empty_label_file_is_a_negative(tmp_path: Path) -> None:
    a = read_dota(write(tmp_path / "n.txt", ""))
    assert a.boxes.shape == (0, 5) and a.names == [] and a.difficult.shape == (0,)
    y = read_yolo(write(tmp_path / "y.txt", "\n"), (10, 10), ["car"])
    assert y.boxes.shape == (0, 4) and y.labels(["car"]).shape == (0,)


# ----------------------------------------------------------------------------- YOLO


def test_yolo_boxes_in_pixels_and_labels(tmp_path: Path) -> None:
    f = write(tmp_path / "0001.txt", "1 0.5 0.25 0.2 0.1\n0 0.1 0.9 0.1 0.2\n")
    a = read_yolo(f, (200, 400), ["car", "truck"])
    torch.testing.assert_close(
        a.boxes, torch.tensor([[160.0, 40.0, 240.0, 60.0], [20.0, 160.0, 60.0, 200.0]])
    )
    assert a.names == ["truck", "car"]
    assert a.labels(["car", "truck"]).tolist() == [1, 0]
    with pytest.raises(AnnotationError, match="unknown class 'truck'"):
        a.labels(["car"])


def test_yolo_obb_polygon(tmp_path: Path) -> None:
    f = write(tmp_path / "t.txt", "0 0.1 0.2 0.3 0.2 0.3 0.4 0.1 0.4\n")
    a = read_yolo(f, (100, 200), ["plane"], polygon=True)
    torch.testing.assert_close(a.boxes[0], torch.tensor([40.0, 30.0, 40.0, 20.0, 0.0]))
    assert same_shape(a.boxes[0], [20, 20, 60, 20, 60, 40, 20, 40]) < 1e-3


def test_yolo_errors(tmp_path: Path) -> None:
    f = write(tmp_path / "t.txt", "0 0.1 0.2 0.3 0.2 0.3 0.4 0.1 0.4\n")
    with pytest.raises(AnnotationError, match="line 1.*polygon=True"):
        read_yolo(f, (100, 200), ["plane"])
    with pytest.raises(AnnotationError, match="class index 3 but only 2 classes"):
        read_yolo(write(tmp_path / "c.txt", "3 0.5 0.5 0.1 0.1\n"), (10, 10), ["a", "b"])
    with pytest.raises(AnnotationError, match="degenerate or negative-size"):
        read_yolo(write(tmp_path / "d.txt", "0 0.5 0.5 -0.1 0.1\n"), (10, 10), ["a"])


def test_horizontal_box_partly_outside_is_clipped(tmp_path: Path) -> None:
    f = write(tmp_path / "c.txt", "0 0.95 0.5 0.3 0.2\n")
    with pytest.warns(UserWarning, match="line 1 \\(clipped\\)"):
        a = read_yolo(f, (100, 100), ["a"])
    torch.testing.assert_close(a.boxes, torch.tensor([[80.0, 40.0, 100.0, 60.0]]))
    with pytest.raises(AnnotationError, match="wholly outside the 100x100 image"):
        read_yolo(write(tmp_path / "o.txt", "0 1.5 0.5 0.3 0.2\n"), (100, 100), ["a"])


# ----------------------------------------------------------------------------- Pascal VOC, COCO, CSV

VOC = """<annotation><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>"""
BND = "<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
BND += "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"


def test_voc_horizontal_and_errors(tmp_path: Path) -> None:
    objs = BND.format(n="ship", d=0, b=(1, 2, 30, 40)) + BND.format(n="car", d=1, b=(5, 5, 9, 9))
    a = read_voc(write(tmp_path / "00001.xml", VOC.format(w=50, h=60, objects=objs)))
    torch.testing.assert_close(a.boxes, torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]))
    assert a.names == ["ship", "car"] and a.difficult.tolist() == [False, True] and a.size == (60, 50)
    bad = BND.format(n="ship", d=0, b=(30, 2, 1, 40))
    with pytest.raises(AnnotationError, match="object 1: degenerate or negative-size"):
        read_voc(write(tmp_path / "b.xml", VOC.format(w=50, h=60, objects=bad)))
    with pytest.raises(AnnotationError, match="not readable XML"):
        read_voc(write(tmp_path / "c.xml", "<annotation>"))
    rob = (
        "<object><name>x</name><robndbox>"
        + "".join(f"<{t}>1</{t}>" for t in ("x_left_top",))
        + "</robndbox></object>"
    )
    with pytest.raises(AnnotationError, match="mixes <bndbox> and <robndbox>"):
        read_voc(write(tmp_path / "m.xml", VOC.format(w=50, h=60, objects=objs + rob)))
    with pytest.raises(AnnotationError, match="object 1: <robndbox/y_left_top> is missing"):
        read_voc(write(tmp_path / "r.xml", VOC.format(w=50, h=60, objects=rob)))


def test_coco_read_and_round_trip(tmp_path: Path) -> None:
    doc = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 9, "file_name": "b.png"},
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "ship"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 20, 30, 5]},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
        ],
    }
    f = write(tmp_path / "c.json", json.dumps(doc))
    a, b = read_coco(f)
    assert (a.image_id, b.image_id, a.size, b.size) == ("a", "b", (80, 100), None)
    torch.testing.assert_close(a.boxes, torch.tensor([[10.0, 20.0, 40.0, 25.0], [0.0, 0.0, 4.0, 4.0]]))
    assert a.names == ["ship", "car"] and a.difficult.tolist() == [False, True] and b.boxes.shape == (0, 4)
    out = write_coco(
        tmp_path / "o.json", ["a", "b"], [a.boxes, b.boxes], [a.labels(["car", "ship"]), b.labels(["car"])],
        None, ["car", "ship"], sizes=[(80, 100), (5, 5)],
    )  # fmt: skip
    a2, b2 = read_coco(out)
    torch.testing.assert_close(a2.boxes, a.boxes)
    assert a2.names == a.names and b2.boxes.shape == (0, 4)
    doc["annotations"][0]["image_id"] = 8
    with pytest.raises(AnnotationError, match="annotation 0 \\(id 1\\): image_id 8 is not in 'images'"):
        read_coco(write(tmp_path / "d.json", json.dumps(doc)))


def test_coco_writes_oriented_boxes_and_scores(tmp_path: Path) -> None:
    obb = torch.tensor([[50.0, 40.0, 20.0, 10.0, math.pi / 6]])
    f = write_coco(tmp_path / "p.json", ["x"], [obb], [torch.tensor([0])], [torch.tensor([0.75])], ["ship"])
    ann = json.loads(f.read_text())["annotations"][0]
    assert ann["score"] == 0.75 and ann["category_id"] == 1
    torch.testing.assert_close(torch.tensor(ann["obb"]), obb[0])
    corners = ann["segmentation"][0]
    poly = shapely.Polygon(list(zip(corners[0::2], corners[1::2])))
    x, y, w, h = ann["bbox"]
    assert [x, y, x + w, y + h] == pytest.approx(list(poly.bounds), abs=1e-4)
    assert poly.area == pytest.approx(200.0, rel=1e-5)


def test_csv_rows_by_image(tmp_path: Path) -> None:
    f = write(
        tmp_path / "b.csv", "image_path,xmin,ymin,xmax,ymax,label\na.tif,1,2,3,4,Tree\nb.tif,5,6,7,8,Tree\n"
    )
    out = read_csv(f)
    assert (
        sorted(out) == ["a", "b"]
        and out["b"].boxes.tolist() == [[5, 6, 7, 8]]
        and out["b"].where == ["line 3"]
    )
    with pytest.raises(AnnotationError, match="missing column"):
        read_csv(write(tmp_path / "c.csv", "image,xmin\n"))


# ----------------------------------------------------------------------------- DOTA writer


def test_write_dota_round_trip(tmp_path: Path) -> None:
    obb = torch.tensor([[120.0, 100.0, 40.0, 16.0, 0.4], [30.0, 30.0, 10.0, 6.0, -1.2]])
    f = write_dota(tmp_path / "P9.txt", obb, torch.tensor([1, 0]), None, ["plane", "small vehicle"])
    a = read_dota(f, classes=["plane", "small-vehicle"])
    assert a.names == ["small-vehicle", "plane"] and not a.difficult.any()
    for k in range(2):  # corners written to 0.1 px
        assert same_shape(obb[k], a.polygons[k].reshape(-1).tolist()) < 0.1 * float(obb[k, 2] + obb[k, 3]) * 2
    xyxy = torch.tensor([[1.0, 2.0, 11.0, 7.0]])
    g = write_dota(tmp_path / "P10.txt", xyxy, torch.tensor([0]), torch.tensor([0.5]), ["plane"])
    assert g.read_text() == "1.0 2.0 11.0 2.0 11.0 7.0 1.0 7.0 plane 0.5000\n"


# ----------------------------------------------------------------------------- shared fixtures and real files


@pytest.mark.data
def test_format_fixtures_dota_and_dior_r() -> None:
    main = data_path("detection", "format_fixtures", "dota_main", "labelTxt", "P0004__1__0___0.txt")
    with pytest.raises(AnnotationError, match="line 4: corners .* not a convex quadrilateral"):
        read_dota(main)  # the fixture's deliberately odd polygon
    with pytest.warns(UserWarning, match="line 4"):
        a = read_dota(main, strict=False)
    assert a.names == ["plane"] * 3 and a.difficult.tolist() == [False, False, True]
    b = read_dota(data_path("detection", "format_fixtures", "dota_1x", "labelTxt", "P2805__1024__0___0.txt"))
    assert b.boxes.shape == (4, 5) and (b.boxes[:, 4].abs() > 0.05).all()
    xml = data_path(
        "detection", "format_fixtures", "dior_r_1x", "Annotations", "Oriented Bounding Boxes", "00001.xml"
    )
    r = read_voc(xml)
    assert r.names == ["golffield"] and r.size == (800, 800)
    torch.testing.assert_close(r.boxes[0], torch.tensor([408.5, 454.5, 551.0, 435.0, 0.0]))


@pytest.mark.data
def test_neon_csv_and_xml_hold_the_same_boxes() -> None:
    folder = data_path("detection", "neon_trees")
    from_csv = read_csv(folder / "OSBS_029.csv", sizes={"OSBS_029": (400, 400)})["OSBS_029"]
    from_xml = read_voc(folder / "OSBS_029.xml")
    assert len(from_csv.names) == 61 and from_csv.names == from_xml.names == ["Tree"] * 61
    torch.testing.assert_close(from_csv.boxes, from_xml.boxes)
    soap = read_voc(folder / "SOAP_061.xml")
    assert sorted(set(soap.names)) == ["Alive", "Dead"] and soap.names.count("Dead") == 28


@pytest.mark.data
def test_ucas_polygons_are_rectangles_that_the_boxes_reproduce() -> None:
    folder = data_path("detection", "ucas_aod")
    total, rotated = 0, 0
    for f in sorted((folder / "labels").glob("*/*.txt")):
        size = image_size(folder / "images" / f.parent.name / f"{f.stem}.jpg")
        a = read_yolo(f, size, ["plane", "car"], polygon=True)
        for k, corners in enumerate(a.polygons.view(-1, 8).tolist()):
            area = shapely.Polygon(list(zip(corners[0::2], corners[1::2]))).area
            assert same_shape(a.boxes[k], corners) < 0.02 * area
        total += len(a.names)
        off_axis = torch.remainder(a.boxes[:, 4], math.pi / 2)  # 0 or pi/2 for an axis-aligned box
        rotated += int((torch.minimum(off_axis, math.pi / 2 - off_axis) > math.radians(1)).sum())
    assert (total, rotated) == (375, 366)  # the README's count: turned by over one degree
