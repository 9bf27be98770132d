"""A stub detector whose answer is exact (bright squares), and small scenes of squares, for the tiling,
georeferencing and ``skysense predict`` tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from scipy import ndimage
from torch import Tensor, nn

from skysense.detection.tiling import Detector

CLASSES = ["red", "green", "blue"]


class Squares(nn.Module):
    """Each 8-connected blob of pixels brighter than 0.5 in some band is one object: its extent
    (``x1, y1, x2, y2``, or ``cx, cy, w, h, 0``), labelled by its brightest band, scored by that band's
    mean over the blob."""

    def __init__(self, oriented: bool = False) -> None:
        super().__init__()
        self.oriented = oriented

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        return [self.one(x) for x in images]

    def one(self, x: Tensor) -> dict[str, Tensor]:
        blobs, _ = ndimage.label((x.max(0).values > 0.5).numpy(), structure=np.ones((3, 3)))
        boxes, scores, labels = [], [], []
        for k, (ys, xs) in enumerate(ndimage.find_objects(blobs), start=1):
            band = x[:, ys, xs][:, torch.from_numpy(blobs[ys, xs] == k)].mean(1)
            x1, y1, x2, y2 = xs.start, ys.start, xs.stop, ys.stop
            box = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.0] if self.oriented else [x1, y1, x2, y2]
            boxes.append(box)
            scores.append(float(band.max()))
            labels.append(int(band.argmax()))
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5 if self.oriented else 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def stub_detector(oriented: bool = False) -> Detector:
    model = Squares(oriented)
    return Detector(model, lambda x: x / 255.0, list(CLASSES), oriented)


def scene(h: int, w: int, squares: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(3, h, w) uint8: dark noise, and squares ``(x, y, side, band)`` of brightness 200 + band."""
    gen = np.random.default_rng(0)
    img = gen.integers(0, 60, (3, h, w)).astype(np.uint8)
    for x, y, side, band in squares:
        img[band, y : y + side, x : x + side] = 200 + 10 * band
    return img


def random_squares(h: int, w: int, n: int, seed: int = 0, sides: tuple[int, int] = (4, 20)) -> list:
    """``n`` squares at least 2 pixels apart (so no two blobs touch)."""
    gen = np.random.default_rng(seed)
    taken = np.zeros((h, w), dtype=bool)
    out: list[tuple[int, int, int, int]] = []
    while len(out) < n:
        side = int(gen.integers(*sides))
        x, y = int(gen.integers(0, w - side + 1)), int(gen.integers(0, h - side + 1))
        if taken[max(0, y - 2) : y + side + 2, max(0, x - 2) : x + side + 2].any():
            continue
        taken[y : y + side, x : x + side] = True
        out.append((x, y, side, int(gen.integers(0, 3))))
    return out


def write_tif(path: Path, img: np.ndarray, crs: str | None = "EPSG:32633", transform=None) -> Path:
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "height": img.shape[1], "width": img.shape[2], "count": img.shape[0]}
    profile |= {"dtype": str(img.dtype)}
    if crs is not None:
        profile |= {"crs": crs, "transform": transform or from_origin(500_000.0, 4_200_000.0, 0.5, 0.5)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
    return path


def as_rows(boxes: Tensor, scores: Tensor, labels: Tensor) -> list[tuple]:
    """Detections as sorted tuples (exact comparison of two sets)."""
    rows = [
        (*[round(v, 4) for v in b], round(s, 5), lab)
        for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())
    ]
    return sorted(rows)
