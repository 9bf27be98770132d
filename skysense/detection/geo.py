"""Detections on the map: pixel boxes -> polygons in the image's CRS -> a GeoJSON FeatureCollection.

A box's corners are pixel coordinates (``x`` along columns, ``y`` along rows, the pixel ``(r, c)``
covering ``[c, c + 1) x [r, r + 1)``), which is the frame rasterio's affine ``transform`` maps to the
CRS: ``(X, Y) = transform * (x, y)``. Each box becomes one polygon (its four corners, the ring closed
and turned counter-clockwise on the map, as RFC 7946 asks) with properties ``class``, ``label`` and
``score``. The coordinates stay in the image's CRS (a projected CRS keeps metres, so areas and
distances hold), named in the collection's ``crs`` member, which GDAL/QGIS read.

Images without a CRS have no map coordinates: GeoJSON is refused, and their boxes go to DOTA
``labelTxt`` (``.txt``) or COCO JSON (``.json``) in pixels (:mod:`skysense.detection.formats`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from skysense.detection.tiling import Detections
from skysense.files import atomic_write

__all__ = ["FORMATS", "check_output", "feature_collection", "output_format", "pixel_polygons", "write"]

FORMATS = {".geojson": "geojson", ".txt": "dota", ".json": "coco"}


def pixel_polygons(boxes: Tensor) -> np.ndarray:
    """(N, 4) ``x1, y1, x2, y2`` or (N, 5) oriented boxes -> (N, 4, 2) corners ``(x, y)`` in pixels,
    clockwise on screen (rows down), starting top-left for horizontal boxes."""
    if boxes.shape[-1] == 5:
        from skysense.detection.boxes import obb_to_poly

        return obb_to_poly(boxes.double()).numpy()
    x1, y1, x2, y2 = boxes.double().unbind(1)
    return np.stack([np.stack(c, 1) for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], 1)


def map_polygons(polys: np.ndarray, transform: Any) -> np.ndarray:
    """(N, 4, 2) pixel corners -> (N, 4, 2) map coordinates ``transform * (x, y)``."""
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    x, y = polys[..., 0], polys[..., 1]
    return np.stack([a * x + b * y + c, d * x + e * y + f], -1)


def _ring(corners: np.ndarray) -> list[list[float]]:
    """Four map corners -> a closed, counter-clockwise ring (positive shoelace area, x east, y north)."""
    x, y = corners[:, 0], corners[:, 1]
    if float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) < 0:
        corners = corners[::-1]
    return [[float(u), float(v)] for u, v in [*corners, corners[0]]]


def crs_member(crs: Any) -> dict[str, Any]:
    """The collection's ``crs`` member: ``urn:ogc:def:crs:EPSG::code``, or the CRS's WKT without one."""
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def _no_crs(source: str | Path) -> ValueError:
    return ValueError(
        f"{source or 'the image'} has no CRS: GeoJSON needs map coordinates; write pixel boxes as DOTA "
        "labelTxt (--out NAME.txt) or COCO JSON (--out NAME.json), or georeference the image first "
        "(gdal_edit.py -a_srs EPSG:xxxx -a_ullr ulx uly lrx lry)"
    )


def feature_collection(
    dets: Detections, crs: Any, transform: Any, source: str = "", tags: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The detections as a GeoJSON FeatureCollection in ``crs`` (a rasterio CRS) via ``transform``."""
    if crs is None:
        raise _no_crs(source)
    rings = map_polygons(pixel_polygons(dets.boxes), transform)
    features = []
    for corners, score, label in zip(rings, dets.scores.tolist(), dets.labels.tolist()):
        name = dets.classes[label] if 0 <= label < len(dets.classes) else str(label)
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [_ring(corners)]},
                "properties": {"class": name, "label": int(label), "score": round(float(score), 6)},
            }
        )
    out: dict[str, Any] = {"type": "FeatureCollection", "crs": crs_member(crs), "features": features}
    if source or tags:
        out["properties"] = {"source": source, **(tags or {})}
    return out


def output_format(out: str | Path) -> str:
    """``geojson``, ``dota`` or ``coco`` from the suffix of ``out``; a clear error for any other."""
    kind = FORMATS.get(Path(out).suffix.lower())
    if kind is None:
        raise ValueError(
            f"{out}: detections are written as .geojson (polygons in the image's CRS), .txt (DOTA "
            "labelTxt, pixels) or .json (COCO, pixels): give --out one of these suffixes"
        )
    return kind


def check_output(out: str | Path, crs: Any, source: str | Path) -> str:
    """The output format of ``out``; refuses GeoJSON for an image without a CRS (before any work)."""
    kind = output_format(out)
    if kind == "geojson" and crs is None:
        raise _no_crs(source)
    return kind


def write(
    out: str | Path, dets: Detections, crs: Any, transform: Any, source: str | Path, height: int, width: int,
    tags: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write ``dets`` to ``out`` in the format its suffix names (:data:`FORMATS`), atomically."""
    kind = check_output(out, crs, source)
    if kind == "geojson":
        text = json.dumps(feature_collection(dets, crs, transform, str(source), tags))

        def put(tmp: Path) -> None:
            tmp.write_text(text + "\n")

        return atomic_write(out, put)
    from skysense.detection import formats

    if kind == "dota":
        return formats.write_dota(out, dets.boxes, dets.labels, dets.scores, dets.classes)
    name, size = Path(source).name, (height, width)
    return formats.write_coco(out, [name], [dets.boxes], [dets.labels], [dets.scores], dets.classes, [size])
