"""Detection over images of any size: overlapping tiles, read by windows, boxes merged over the mosaic.

The detectors are trained on crops of 800-1024 pixels (paper Sec. 4.3, DIOR / DIOR-R / FAIR1M); a
scene is larger. It is cut into ``tile`` x ``tile`` tiles whose origins step by ``tile - overlap``
(the last tile of a row or column is moved back to end at the image's edge, so no tile is padded
unless the image is smaller than one tile); each tile is read through a rasterio window
(:class:`skysense.inference.Scene`'s reader: never the whole image), normalised, and run through the
detector in batches. The boxes are shifted to mosaic pixels and merged in two steps:

1. *Cut boxes.* A box whose hull comes within ``edge`` pixels of an inner border of its tile (a side
   shared with a neighbour, not the image's edge) is cut there. It is dropped when the neighbour
   across that border (the diagonal one for a corner) sees the object's far side with the same
   margin: that tile sees more of the object. Of two tiles the two rules never drop both views, so an
   object no wider than the overlap is found once, whole.
2. *Duplicates.* An object inside an overlap is found by each tile that holds it. Class-wise NMS
   (rotated IoU for oriented boxes) over the boxes that reach into a neighbour tile removes the copies;
   a box that reaches no other tile cannot have one and passes as it is.

Memory: tiles run one row of tiles (a *strip*) at a time; the NMS of a strip sees its own boxes and
the kept boxes of the strip above that reach into it, so its cost grows with the scene's width, not
its area. The result equals the detector on the whole image for objects that no tile border cuts
(and whose detection depends only on pixels within the tile); objects wider than the overlap may be
reported in parts: choose ``overlap`` at least the largest object's size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch import Tensor

from skysense.inference import Scene

__all__ = ["Detections", "Detector", "Image", "detect_tiled", "merge_nms", "tile_origins"]


@dataclass
class Detector:
    """A detector on a batch of tiles: ``run((B, C, T, T) normalised) -> B x {"boxes", "scores",
    "labels"}`` in tile pixels (``boxes`` (K, 4) ``x1, y1, x2, y2`` or (K, 5) ``cx, cy, w, h, angle``)."""

    run: Callable[[Tensor], list[dict[str, Tensor]]]
    normalise: Callable[[Tensor], Tensor]  # (B, C, T, T) raw pixel values -> the model's input
    classes: list[str]
    oriented: bool
    in_bands: int = 3


@dataclass
class Detections:
    """Boxes over a whole image, in its pixels, best score first."""

    boxes: Tensor  # (N, 4) x1, y1, x2, y2 or (N, 5) cx, cy, w, h, angle
    scores: Tensor  # (N,)
    labels: Tensor  # (N,) int64 indices into ``classes``
    classes: list[str] = field(default_factory=list)
    tiles: int = 0  # tiles the detector ran on

    def __len__(self) -> int:
        return int(self.scores.numel())

    @property
    def oriented(self) -> bool:
        return self.boxes.shape[-1] == 5


class Image(Scene):
    """One image, georeferenced or not (a GeoTIFF, a PNG of DOTA), read a window at a time by
    :meth:`Scene.read`: ``crs`` is None where the file has none."""

    def __init__(self, path: str | Path, in_bands: int) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: input image not found")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            d = rasterio.open(path)
        self.paths, self.keys, self.ds = [path], ["hr"], [d]
        try:
            self.alpha = [self._alpha(path, d, in_bands)]
        except ValueError:
            d.close()
            raise
        georeferenced = d.crs is not None and not d.transform.is_identity
        self.crs = d.crs if georeferenced else None
        self.transform = d.transform
        self.height, self.width = d.shape


def tile_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along an axis of ``size`` pixels: steps of ``tile - overlap``, the last tile moved
    back to end at the edge (one tile at 0 where ``size <= tile``)."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"tile {tile} and overlap {overlap}: need tile > 0 and 0 <= overlap < tile")
    if size <= tile:
        return [0]
    out = list(range(0, size - tile, tile - overlap))
    return out + [size - tile]


def hull(boxes: Tensor) -> Tensor:
    """(N, 4|5) boxes -> (N, 4) axis-aligned hulls ``x1, y1, x2, y2``."""
    if boxes.shape[-1] == 4:
        return boxes
    from skysense.detection.boxes import obb_to_hbb

    return obb_to_hbb(boxes)


def merge_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """Indices kept by class-wise NMS (rotated IoU for (N, 5) boxes), best score first."""
    if boxes.shape[-1] == 5:
        from skysense.detection.rotated_ops import batched_rotated_nms

        return batched_rotated_nms(boxes, scores, labels, iou)
    from torchvision.ops import batched_nms

    return batched_nms(boxes.float(), scores.float(), labels, iou)


@dataclass(frozen=True)
class _Layout:
    """The tiles of an image: origins ``ys`` x ``xs``, side ``tile``, border margin ``edge``."""

    ys: list[int]
    xs: list[int]
    tile: int
    edge: float
    height: int
    width: int

    def neighbour_sees(self, h: Tensor, i: int, j: int, di: Tensor, dj: Tensor) -> Tensor:
        """(N,) whether tile ``(i + di, j + dj)`` sees the far side of each cut box (hull ``h``) with
        the margin: its origin before the box's start (cut at the end) or its end after the box's end."""
        ok = torch.ones(len(h), dtype=torch.bool)
        for axis, (idx, d, starts) in enumerate(((j, dj, self.xs), (i, di, self.ys))):
            lo, hi = h[:, axis], h[:, axis + 2]
            nxt = starts[min(idx + 1, len(starts) - 1)] + self.edge
            prv = starts[max(idx - 1, 0)] + self.tile - self.edge
            ok &= torch.where(d > 0, lo >= nxt, torch.where(d < 0, hi <= prv, torch.ones_like(ok)))
        return ok

    def cut_and_shared(self, h: Tensor, i: int, j: int) -> tuple[Tensor, Tensor]:
        """(N,) masks of boxes (hulls ``h`` in mosaic pixels) of tile ``(i, j)``: dropped as cut (a
        neighbour sees more of them), and reaching into a neighbour tile (may have copies there)."""
        y0, x0, t = self.ys[i], self.xs[j], self.tile
        inner = [j > 0, i > 0, j < len(self.xs) - 1, i < len(self.ys) - 1]  # left, top, right, bottom
        # strict here and not in neighbour_sees: of two tiles at most one drops its view
        at = [h[:, 0] < x0 + self.edge, h[:, 1] < y0 + self.edge]
        at += [h[:, 2] > x0 + t - self.edge, h[:, 3] > y0 + t - self.edge]
        at = [a & flag for a, flag in zip(at, inner)]
        dj, di = at[2].long() - at[0].long(), at[3].long() - at[1].long()
        both = (at[0] & at[2]) | (at[1] & at[3])  # wider than the tile: no neighbour sees it whole
        cut = (dj != 0) | (di != 0)
        drop = cut & ~both & self.neighbour_sees(h, i, j, di, dj)
        reach = torch.zeros(len(h), dtype=torch.bool)
        if inner[0]:
            reach |= h[:, 0] < self.xs[j - 1] + t
        if inner[1]:
            reach |= h[:, 1] < self.ys[i - 1] + t
        if inner[2]:
            reach |= h[:, 2] > self.xs[j + 1]
        if inner[3]:
            reach |= h[:, 3] > self.ys[i + 1]
        return drop, reach


def _read_batch(image: Scene, detector: Detector, layout: _Layout, i: int, js: Sequence[int]) -> Tensor:
    """The normalised tiles ``js`` of strip ``i`` (B, C, T, T); nodata pixels 0 after normalising."""
    reads = [image.read(0, layout.ys[i], layout.xs[j], layout.tile) for j in js]
    x = detector.normalise(torch.from_numpy(np.stack([r[0] for r in reads])))
    bad = torch.from_numpy(np.stack([r[1] for r in reads])).unsqueeze(1)
    return x.masked_fill(bad, 0.0) if bool(bad.any()) else x


def _strip(
    image: Scene, detector: Detector, layout: _Layout, i: int, batch: int
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """``(j, detections of tile (i, j))`` for each tile of strip ``i``; a thread reads the next batch
    while the detector runs on this one."""
    cols = len(layout.xs)
    batches = [range(j0, min(j0 + batch, cols)) for j0 in range(0, cols, batch)]
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(_read_batch, image, detector, layout, i, batches[0])
        for k, js in enumerate(batches):
            x = ahead.result()
            if k + 1 < len(batches):
                ahead = pool.submit(_read_batch, image, detector, layout, i, batches[k + 1])
            yield from zip(js, detector.run(x))


def _to_mosaic(det: dict[str, Tensor], x0: int, y0: int, layout: _Layout) -> tuple[Tensor, Tensor, Tensor]:
    """A tile's boxes shifted to mosaic pixels (horizontal ones clipped to the image), scores, labels."""
    boxes = det["boxes"].detach().float().cpu().clone()
    boxes[:, 0] += x0
    boxes[:, 1] += y0
    if boxes.shape[-1] == 4:
        boxes[:, 2] += x0
        boxes[:, 3] += y0
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, layout.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, layout.height)
    return boxes, det["scores"].detach().float().cpu(), det["labels"].detach().long().cpu()


def _cat(parts: list[tuple[Tensor, Tensor, Tensor]], width: int) -> tuple[Tensor, Tensor, Tensor]:
    if not parts:
        return torch.zeros(0, width), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    b, s, lab = zip(*parts)
    return torch.cat(b), torch.cat(s), torch.cat(lab)


def _merge_strip(
    layout: _Layout, i: int, shared: list[tuple[Tensor, Tensor, Tensor]], iou: float, width: int
) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """NMS over the boxes of strip ``i`` (and those held from above) that reach a neighbour tile:
    (final boxes, boxes held for the next strip because they reach into it)."""
    b, s, lab = _cat(shared, width)
    keep = merge_nms(b, s, lab, iou) if len(b) else torch.zeros(0, dtype=torch.long)
    b, s, lab = b[keep], s[keep], lab[keep]
    down = (
        hull(b)[:, 3] > layout.ys[i + 1] if i + 1 < len(layout.ys) else torch.zeros(len(b), dtype=torch.bool)
    )
    return (b[~down], s[~down], lab[~down]), (b[down], s[down], lab[down])


def detect_tiled(
    image: str | Path | Scene, detector: Detector, *, tile: int = 1024, overlap: int = 256, batch: int = 4,
    iou: float = 0.5, edge: float = 2.0, progress: bool = True,
) -> Detections:  # fmt: skip
    """Detections over the whole of ``image`` (a path, or an open :class:`Image`), in its pixels (see
    the module doc): ``iou`` is the class-wise NMS threshold of the copies in overlaps, ``edge`` the
    margin (pixels) within which a box counts as touching a tile border."""
    from tqdm import tqdm

    if edge <= 0:
        raise ValueError(f"edge {edge}: the border margin must be > 0 pixels (a cut box ends on the border)")
    img = image if isinstance(image, Scene) else Image(image, detector.in_bands)
    try:
        layout = _Layout(
            tile_origins(img.height, tile, overlap), tile_origins(img.width, tile, overlap), tile,
            edge, img.height, img.width,
        )  # fmt: skip
        width = 5 if detector.oriented else 4
        final: list[tuple[Tensor, Tensor, Tensor]] = []
        held: list[tuple[Tensor, Tensor, Tensor]] = []
        bar = tqdm(total=len(layout.ys) * len(layout.xs), unit="tile", disable=not progress)
        for i in range(len(layout.ys)):
            shared = held
            for j, det in _strip(img, detector, layout, i, batch):
                b, s, lab = _to_mosaic(det, layout.xs[j], layout.ys[i], layout)
                drop, reach = layout.cut_and_shared(hull(b), i, j)
                final.append((b[~drop & ~reach], s[~drop & ~reach], lab[~drop & ~reach]))
                shared.append((b[~drop & reach], s[~drop & reach], lab[~drop & reach]))
                bar.update(1)
            done, down = _merge_strip(layout, i, shared, iou, width)
            final.append(done)
            held = [down]
            bar.set_postfix_str(f"{sum(len(p[1]) for p in final)} boxes")
        bar.close()
        b, s, lab = _cat(final + held, width)
        order = torch.argsort(s, descending=True, stable=True)
        tiles = len(layout.ys) * len(layout.xs)
        return Detections(b[order], s[order], lab[order], list(detector.classes), tiles)
    finally:
        if img is not image:
            img.close()
