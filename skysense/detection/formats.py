"""Readers and writers of detection annotations: COCO JSON, DOTA ``labelTxt``, YOLO / YOLO-OBB, Pascal-VOC
XML (DIOR ``bndbox``, DIOR-R ``robndbox``) and the DeepForest CSV.

Every reader returns one :class:`Annotation` per image: ``boxes`` (N, 4) ``x1, y1, x2, y2`` pixels for
horizontal formats, or (N, 5) ``cx, cy, w, h, angle`` (the package's angle convention) for 4-corner
polygons, converted by :func:`~skysense.detection.boxes.poly_to_obb`; the corners as read stay in
``polygons`` (N, 4, 2). Class names stay names; :meth:`Annotation.labels` turns them into indices.

What is refused (:class:`AnnotationError`, naming the file, the line or object, and the fix): malformed
lines, non-finite numbers, unknown class names (where the classes are given), degenerate or negative-size
boxes, corners that are not a convex quadrilateral, boxes wholly outside the image. ``strict=False`` drops
such boxes with a warning instead (a malformed line is still dropped, never guessed).

Boxes partly outside the image (by more than :data:`EDGE_TOL` pixels): a horizontal box is clipped to the
image with a warning; an oriented box is kept whole with a warning, since clipping a rotated rectangle's
corners would bend it into another shape (DOTA tiles cut objects at their edges on purpose).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from skysense.detection.boxes import is_convex_quad, obb_to_hbb, obb_to_poly, poly_to_obb

EDGE_TOL = 1.0  # pixels a box may pass the image edge by before it counts as outside (rounding of labels)


class AnnotationError(ValueError):
    """A label that cannot be used as it is; the message names the file, the line and what to do."""


def _error(path: Path | str, where: str, problem: str, fix: str) -> AnnotationError:
    at = f"{path}, {where}" if where else str(path)
    return AnnotationError(f"{at}: {problem}; {fix}")


@dataclass
class Annotation:
    """One image's boxes as read from its label file (see the module docstring for the box layouts)."""

    image_id: str
    boxes: Tensor  # (N, 4) xyxy or (N, 5) obb, float32 pixels
    names: list[str]  # (N,) class names as written
    difficult: Tensor  # (N,) bool
    source: str = ""  # the label file
    where: list[str] = field(default_factory=list)  # (N,) line or object of each box, for messages
    polygons: Tensor | None = None  # (N, 4, 2) corners as read, for polygon formats
    size: tuple[int, int] | None = None  # (H, W) of the image, where known
    meta: dict[str, str] = field(default_factory=dict)  # DOTA header lines (imagesource, gsd)

    @property
    def oriented(self) -> bool:
        return self.boxes.shape[-1] == 5

    def labels(self, classes: Sequence[str]) -> Tensor:
        """(N,) int64 indices of the names in ``classes``; an unknown name is an :class:`AnnotationError`."""
        index = {c: i for i, c in enumerate(classes)}
        for name, where in zip(self.names, self.where or [""] * len(self.names)):
            if name not in index:
                raise _unknown(self.source, where, name, classes)
        return torch.tensor([index[n] for n in self.names], dtype=torch.int64)

    def horizontal(self) -> Tensor:
        """(N, 4) xyxy: the corners' bounding rectangle (exact for axis-aligned polygons), else the box's."""
        if self.polygons is not None:
            p = self.polygons
            return torch.cat([p.amin(1), p.amax(1)], 1) if len(p) else torch.zeros(0, 4)
        return obb_to_hbb(self.boxes) if self.oriented else self.boxes


def _unknown(path: Path | str, where: str, name: str, classes: Sequence[str]) -> AnnotationError:
    return _error(
        path,
        where,
        f"unknown class {name!r}",
        f"use one of {list(classes)} or add the class to the class list",
    )


@dataclass
class _Row:
    where: str
    coords: list[float]  # 4 (x1, y1, x2, y2) or 8 (x1, y1, .., x4, y4) pixels
    name: str
    difficult: bool = False


def _floats(fields: Sequence[str], path: Path, where: str, layout: str) -> list[float]:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise _error(
            path, where, f"a value is not a number in {' '.join(fields)!r}", f"write {layout}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise _error(path, where, "NaN or infinite coordinate", f"write finite numbers: {layout}")
    return values


def _check_geometry(
    row: _Row, path: Path, size: tuple[int, int] | None, shape_ok: tuple[bool, bool] = (True, True)
) -> tuple[list[float], str | None]:
    """The row's coordinates (clipped if horizontal and partly outside) and a note, or AnnotationError.

    ``shape_ok``: a polygon's (non-zero area, convex), computed for all rows at once by the caller.
    """
    c = row.coords
    if len(c) == 4 and (c[2] <= c[0] or c[3] <= c[1]):
        raise _error(
            path, row.where, f"degenerate or negative-size box {c} (needs x2 > x1 and y2 > y1)",
            "fix the corners or drop the box",
        )  # fmt: skip
    if not shape_ok[0]:
        raise _error(
            path, row.where, f"degenerate polygon {c} (zero area)", "fix the corners or drop the box"
        )
    if not shape_ok[1]:
        raise _error(
            path, row.where, f"corners {c} are not a convex quadrilateral (crossed or dented)",
            "list the 4 corners in order around the box, or drop the box",
        )  # fmt: skip
    if size is None:
        return c, None
    h, w = size
    xs, ys = c[0::2], c[1::2]
    if max(xs) <= 0 or min(xs) >= w or max(ys) <= 0 or min(ys) >= h:
        raise _error(
            path, row.where, f"box {c} lies wholly outside the {w}x{h} image",
            "check the label belongs to this image and is in pixels (or normalised for YOLO)",
        )  # fmt: skip
    outside = min(xs) < -EDGE_TOL or min(ys) < -EDGE_TOL or max(xs) > w + EDGE_TOL or max(ys) > h + EDGE_TOL
    if len(c) == 4:  # within EDGE_TOL the clip is silent rounding
        c = [min(max(c[0], 0.0), w), min(max(c[1], 0.0), h), min(max(c[2], 0.0), w), min(max(c[3], 0.0), h)]
    return c, ("clipped" if len(c) == 4 else "kept whole") if outside else None


def _build(
    path: Path,
    rows: list[_Row],
    polygon: bool,
    size: tuple[int, int] | None,
    classes: Sequence[str] | None,
    strict: bool,
    image_id: str | None = None,
) -> Annotation:
    """Check every row and assemble the image's :class:`Annotation`."""
    n = len(rows)
    shape_ok = [(True, True)] * n
    if polygon:  # all rows at once: the minimum-area rectangles, zero-size ones and the convexity
        quads = torch.tensor([r.coords for r in rows], dtype=torch.float64).view(n, 4, 2)
        obb = poly_to_obb(quads) if n else quads.new_zeros(0, 5)
        shape_ok = list(zip((obb[:, 2] * obb[:, 3] > 1e-6).tolist(), is_convex_quad(quads).tolist()))
    kept: list[int] = []
    past_edge: list[str] = []
    for k, (row, ok) in enumerate(zip(rows, shape_ok)):
        try:
            if classes is not None and row.name not in classes:
                raise _unknown(path, row.where, row.name, classes)
            row.coords, note = _check_geometry(row, path, size, ok)
        except AnnotationError as e:
            _drop(e, strict, "box", stacklevel=4)
            continue
        if note:
            past_edge.append(f"{row.where} ({note})")
        kept.append(k)
    if past_edge:
        warnings.warn(
            f"{path}: {len(past_edge)} box(es) extend past the image edge: {', '.join(past_edge[:5])}"
            + (" ..." if len(past_edge) > 5 else ""),
            stacklevel=3,
        )
    coords = torch.tensor([rows[k].coords for k in kept], dtype=torch.float32).view(
        len(kept), 8 if polygon else 4
    )
    return Annotation(
        image_id=image_id or path.stem,
        boxes=obb[kept].float() if polygon else coords.view(-1, 4),
        names=[rows[k].name for k in kept],
        difficult=torch.tensor([rows[k].difficult for k in kept], dtype=torch.bool),
        source=str(path),
        where=[rows[k].where for k in kept],
        polygons=coords.view(-1, 4, 2) if polygon else None,
        size=size,
    )


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines of a text file."""
    text = Path(path).read_text(encoding="utf-8-sig")
    return [(i, line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


DOTA_LAYOUT = "'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]' in pixels"


def _drop(error: AnnotationError, strict: bool, what: str, stacklevel: int) -> None:
    """A bad entry: strict readers raise, lenient ones warn and drop the ``what`` (box, line, object)."""
    if strict:
        raise error
    warnings.warn(f"{error} ({what} dropped)", stacklevel=stacklevel)


def read_dota(
    path: str | Path,
    size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
    strict: bool = True,
) -> Annotation:
    """DOTA ``labelTxt``: optional ``imagesource:``/``gsd:`` header lines, then one polygon per line.

    ``size`` (H, W) enables the outside-the-image checks. Boxes come back as (N, 5) oriented boxes.
    """
    path = Path(path)
    rows, meta = [], {}
    for i, f in _lines(path):
        where = f"line {i}"
        if len(f) == 1 and ":" in f[0] and f[0].split(":")[0] in ("imagesource", "gsd"):
            key, _, value = f[0].partition(":")
            meta[key] = value
            continue
        try:
            if len(f) not in (9, 10) or (len(f) == 10 and f[9] not in ("0", "1")):
                raise _error(path, where, f"malformed line {' '.join(f)!r}", f"write {DOTA_LAYOUT}")
            rows.append(
                _Row(where, _floats(f[:8], path, where, DOTA_LAYOUT), f[8], len(f) == 10 and f[9] != "0")
            )
        except AnnotationError as e:
            _drop(e, strict, "line", stacklevel=3)
    ann = _build(path, rows, True, size, classes, strict)
    ann.meta = meta
    return ann


def read_yolo(
    path: str | Path,
    size: tuple[int, int],
    classes: Sequence[str],
    polygon: bool = False,
    strict: bool = True,
) -> Annotation:
    """YOLO ``cls xc yc w h`` (``polygon=False``) or YOLO-OBB ``cls x1 y1 .. x4 y4`` (``polygon=True``),
    all normalised to 0..1 by the image ``size`` (H, W); ``cls`` indexes ``classes``."""
    path = Path(path)
    h, w = size
    n_fields = 9 if polygon else 5
    layout = "'cls x1 y1 x2 y2 x3 y3 x4 y4'" if polygon else "'cls xc yc w h'"
    layout += " normalised to 0..1"
    other = "; a 9-field line is YOLO-OBB (polygon=True)" if not polygon else "; 5 fields is plain YOLO"
    rows = []
    for i, f in _lines(path):
        where = f"line {i}"
        try:
            if len(f) != n_fields or not f[0].isdigit():
                raise _error(path, where, f"malformed line {' '.join(f)!r}", f"write {layout}{other}")
            if int(f[0]) >= len(classes):
                raise _error(
                    path, where, f"class index {f[0]} but only {len(classes)} classes {list(classes)}",
                    "fix the index or give the full class list",
                )  # fmt: skip
            v = _floats(f[1:], path, where, layout)
        except AnnotationError as e:
            _drop(e, strict, "line", stacklevel=3)
            continue
        if polygon:
            coords = [v[k] * (w if k % 2 == 0 else h) for k in range(8)]
        else:
            xc, yc, bw, bh = v[0] * w, v[1] * h, v[2] * w, v[3] * h
            coords = [xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2]
        rows.append(_Row(where, coords, classes[int(f[0])]))
    return _build(path, rows, polygon, size, classes, strict)


def _xml_number(obj: ET.Element, tag: str, path: Path, where: str) -> float:
    node = obj.find(tag)
    if node is None or node.text is None:
        raise _error(path, where, f"<{tag}> is missing", "give every box all its corner coordinates")
    return _floats([node.text.strip()], path, where, f"a number in <{tag}>")[0]


ROBNDBOX = (
    "x_left_top", "y_left_top", "x_right_top", "y_right_top",
    "x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom",
)  # fmt: skip


def read_voc(
    path: str | Path,
    size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
    strict: bool = True,
) -> Annotation:
    """Pascal-VOC XML: DIOR / NEON ``<bndbox>`` (xyxy, taken as written) or DIOR-R ``<robndbox>`` 4 corners.

    ``size`` (H, W) defaults to the file's ``<size>``. A file mixing both box kinds is refused.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise _error(path, "", f"not readable XML ({e})", "fix or re-export the annotation file") from None
    if size is None:
        try:
            w, h = (int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
        except ValueError:
            raise _error(path, "<size>", "width/height are not numbers", "fix <size> or remove it") from None
        size = (h, w) if w > 0 and h > 0 else None
    objects = root.findall("object")
    kinds = {"robndbox" if o.find("robndbox") is not None else "bndbox" for o in objects}
    if len(kinds) > 1:
        raise _error(path, "", "mixes <bndbox> and <robndbox> objects", "write one box kind per dataset")
    polygon = kinds == {"robndbox"}
    rows = []
    for k, obj in enumerate(objects, 1):
        where = f"object {k}"
        tags = [f"robndbox/{t}" for t in ROBNDBOX] if polygon else [f"bndbox/{t}" for t in XYXY_TAGS]
        name = (obj.findtext("name") or "").strip()
        try:
            coords = [_xml_number(obj, t, path, where) for t in tags]
        except AnnotationError as e:
            _drop(e, strict, "object", stacklevel=3)
            continue
        rows.append(_Row(where, coords, name, (obj.findtext("difficult") or "0").strip() == "1"))
    return _build(path, rows, polygon, size, classes, strict)


XYXY_TAGS = ("xmin", "ymin", "xmax", "ymax")


def read_coco(
    path: str | Path, classes: Sequence[str] | None = None, strict: bool = True
) -> list[Annotation]:
    """COCO JSON: one :class:`Annotation` per entry of ``images`` (file order), ``bbox`` [x, y, w, h] -> xyxy.

    ``iscrowd`` boxes become ``difficult`` (neither counted nor penalised by the AP). The image id is the
    file name's stem.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: im for im in doc["images"]}
        names = {c["id"]: c["name"] for c in doc.get("categories", [])}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise _error(
            path, "", f"not a COCO file ({e!r})", "give a JSON with 'images', 'annotations', 'categories'"
        ) from None
    rows: dict[Any, list[_Row]] = {i: [] for i in images}
    for k, a in enumerate(doc.get("annotations", [])):
        where = f"annotation {k} (id {a.get('id')})"
        bbox, image, cat = a.get("bbox"), a.get("image_id"), a.get("category_id")
        if image not in images:
            raise _error(
                path, where, f"image_id {image!r} is not in 'images'", "list the image or drop the box"
            )
        if cat not in names:
            raise _error(path, where, f"category_id {cat!r} is not in 'categories'", "add the category")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise _error(path, where, f"bbox {bbox!r} is not [x, y, w, h]", "write bbox as [x, y, w, h]")
        x, y, w, h = _floats([str(b) for b in bbox], path, where, "bbox [x, y, w, h]")
        rows[image].append(_Row(where, [x, y, x + w, y + h], names[cat], bool(a.get("iscrowd", 0))))
    out = []
    for i, im in images.items():
        size = (int(im["height"]), int(im["width"])) if im.get("height") and im.get("width") else None
        out.append(_build(path, rows[i], False, size, classes, strict, Path(str(im["file_name"])).stem))
    return out


CSV_COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


def read_csv(
    path: str | Path,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    classes: Sequence[str] | None = None,
    strict: bool = True,
) -> dict[str, Annotation]:
    """DeepForest CSV ``image_path,xmin,ymin,xmax,ymax,label`` (pixels): image stem -> :class:`Annotation`.

    ``sizes`` maps an image stem to its (H, W) for the outside-the-image checks.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise _error(
                path, "line 1", f"missing column(s) {missing}", f"write the header {','.join(CSV_COLUMNS)}"
            )
        rows: dict[str, list[_Row]] = {}
        for i, r in enumerate(reader, 2):
            where = f"line {i}"
            if any(r.get(c) is None for c in CSV_COLUMNS):
                raise _error(path, where, "too few values", f"write {','.join(CSV_COLUMNS)} on every line")
            coords = _floats([r[c] for c in XYXY_TAGS], path, where, "xmin,ymin,xmax,ymax in pixels")
            rows.setdefault(Path(r["image_path"]).stem, []).append(_Row(where, coords, r["label"].strip()))
    sizes = sizes or {}
    return {
        stem: _build(path, rs, False, sizes.get(stem), classes, strict, stem) for stem, rs in rows.items()
    }


# ----------------------------------------------------------------------------- writers


def box_corners(boxes: Tensor) -> Tensor:
    """(N, 4, 2) corners of (N, 4) xyxy or (N, 5) oriented boxes."""
    if boxes.shape[-1] == 5:
        return obb_to_poly(boxes)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], -1).view(-1, 4, 2)


def write_dota(
    path: str | Path,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None,
    class_names: Sequence[str],
) -> Path:
    """One image's boxes as DOTA ``labelTxt`` lines ``x1 y1 .. x4 y4 class 0``, or, with ``scores``,
    ``x1 y1 .. x4 y4 class score`` (a detection file). ``boxes`` (N, 4) xyxy or (N, 5) oriented."""
    path = Path(path)
    lines = []
    for k, p in enumerate(box_corners(boxes.detach().float().cpu()).view(-1, 8).tolist()):
        last = f"{float(scores[k]):.4f}" if scores is not None else "0"
        name = class_names[int(labels[k])].replace(" ", "-")  # DOTA names never hold a space
        lines.append(" ".join(f"{v:.1f}" for v in p) + f" {name} {last}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_coco(
    path: str | Path,
    image_ids: Sequence[str],
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    scores: Sequence[Tensor] | None,
    class_names: Sequence[str],
    sizes: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """Boxes of several images as one COCO JSON (``images``, ``categories`` with ids from 1, ``annotations``).

    ``bbox`` is the [x, y, w, h] of each box's bounding rectangle; oriented boxes also get their 4 corners
    as ``segmentation`` and ``[cx, cy, w, h, angle]`` as ``obb``; ``score`` where scores are given.
    Image ``file_name`` is ``<image_id>`` and ``sizes`` (H, W) fill ``height``/``width`` where given.
    """
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, image_id in enumerate(image_ids):
        im: dict[str, Any] = {"id": i + 1, "file_name": image_id}
        if sizes is not None:
            im["height"], im["width"] = int(sizes[i][0]), int(sizes[i][1])
        images.append(im)
        b = boxes[i].detach().float().cpu()
        hbb = obb_to_hbb(b) if b.shape[-1] == 5 else b
        for k in range(len(b)):
            x1, y1, x2, y2 = hbb[k].tolist()
            a: dict[str, Any] = {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(labels[i][k]) + 1}
            a.update(bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0)
            if b.shape[-1] == 5:
                a["segmentation"] = [box_corners(b[k : k + 1]).view(-1).tolist()]
                a["obb"] = b[k].tolist()
            if scores is not None:
                a["score"] = float(scores[i][k])
            anns.append(a)
    cats = [{"id": c + 1, "name": n} for c, n in enumerate(class_names)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}), encoding="utf-8")
    return path
