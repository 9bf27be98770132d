"""Rotated-box operations of the oriented detector (paper Sec. 4.3, Oriented R-CNN on DIOR-R and FAIR1M):
IoU of oriented boxes, rotated NMS and rotated RoI Align.

Plain PyTorch, vectorised, on any device: no compiled detection framework (mmcv, mmrotate, detectron2) is
installed here. Boxes follow ``skysense.detection``'s convention ``cx, cy, w, h, angle`` in pixels, radians.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from skysense.detection.boxes import _check_last, obb_to_poly, poly_area

CHUNK = 2**14  # polygon pairs clipped at once: a few hundred bytes each, so some 10 MB


def _oriented(poly: Tensor) -> Tensor:
    """(N, K, 2) convex polygons -> the same with a positive shoelace area (the inside on the left)."""
    return torch.where((poly_area(poly) < 0)[:, None, None], poly.flip(1), poly)


def _clip(poly: Tensor, e0: Tensor, e1: Tensor) -> Tensor:
    """Sutherland-Hodgman step: (2, P, K) convex polygons (x and y planes, contiguous for speed) cut by the
    half-planes left of the lines ``e0 -> e1`` (2, P, 1 each) -> (2, P, K + 1).

    Each edge ``prev -> cur`` yields its crossing of the line, if any, then ``cur`` if inside. Fewer than
    K + 1 corners are padded with copies of the first, which adds no area; no corner left gives a point.
    """
    _, n, k = poly.shape
    d, rel = e1 - e0, poly - e0
    s = d[0] * rel[1] - d[1] * rel[0]  # (P, K) > 0 left of the line
    prev, s_prev = poly.roll(1, dims=2), s.roll(1, dims=1)
    inside, crosses = s >= 0, (s >= 0) != (s_prev >= 0)
    t = s_prev / torch.where(crosses, s_prev - s, 1.0)
    cut = prev + t * (poly - prev)
    cand = torch.stack([cut, poly], dim=3).reshape(2, n, 2 * k)
    valid = torch.stack([crosses, inside], dim=2).reshape(n, 2 * k)
    # compact the valid corners to the front, over copies of the first; extras (only from rounding) go to a
    # slot that is dropped
    pos = valid.cumsum(1) - 1
    pos = torch.where(valid & (pos < k + 1), pos, k + 1).expand(2, -1, -1)
    first = cand.gather(2, valid.byte().argmax(1)[None, :, None].expand(2, -1, 1))
    out = first.expand(-1, -1, k + 2).contiguous()
    return out.scatter_(2, pos, cand)[..., : k + 1]


def _area(poly: Tensor) -> Tensor:
    """(2, P, K) -> (P,) shoelace areas."""
    x, y = poly[0], poly[1]
    return 0.5 * (x * y.roll(-1, dims=1) - x.roll(-1, dims=1) * y).sum(1)


def _pair_iou(pa: Tensor, pb: Tensor, dtype: torch.dtype) -> Tensor:
    """(P, Ka, 2), (P, Kb, 2) positively oriented convex polygons -> (P,) IoU of each pair, clipped in
    ``dtype`` about the first polygon's mean (float32 then loses no more than the boxes' own rounding)."""
    origin = pa.mean(dim=1, keepdim=True)
    pa, pb = (pa - origin).to(dtype).permute(2, 0, 1), (pb - origin).to(dtype).permute(2, 0, 1)
    inter = pa.contiguous()
    for i in range(pb.shape[2]):
        inter = _clip(inter, pb[..., i : i + 1], pb[..., (i + 1) % pb.shape[2]][..., None])
    inter_area = _area(inter).clamp_min(0)
    union = _area(pa) + _area(pb) - inter_area
    return torch.where(union > 0, inter_area / union.clamp_min(torch.finfo(union.dtype).tiny), 0.0)


def _envelope(poly: Tensor) -> Tensor:
    """(N, K, 2) -> (N, 4) horizontal envelopes ``x1, y1, x2, y2``."""
    return torch.cat([poly.min(dim=1).values, poly.max(dim=1).values], dim=1)


def _envelopes_meet(ea: Tensor, eb: Tensor) -> Tensor:
    """(N, 4), (M, 4) -> (N, M) bool: the envelopes overlap with a positive area (the cheap prefilter)."""
    lo = torch.maximum(ea[:, None, :2], eb[None, :, :2])
    hi = torch.minimum(ea[:, None, 2:], eb[None, :, 2:])
    return (hi > lo).all(dim=-1)


def _iou_of_pairs(
    pa: Tensor, pb: Tensor, i: Tensor, j: Tensor, chunk_size: int, dtype: torch.dtype
) -> Tensor:
    """IoU of the polygon pairs ``(pa[i], pb[j])``, ``chunk_size`` pairs at a time -> (P,)."""
    out = [
        _pair_iou(pa[i[s : s + chunk_size]], pb[j[s : s + chunk_size]], dtype)
        for s in range(0, len(i), chunk_size)
    ]
    return torch.cat(out) if out else pa.new_zeros(0, dtype=dtype)


def _as_polygons(a: Tensor, name: str) -> Tensor:
    if a.dim() != 3 or a.shape[-1] != 2 or a.shape[1] < 3:
        raise ValueError(f"{name} must have shape (N, K, 2) with K >= 3 corners, got {tuple(a.shape)}")
    return _oriented(a.double())


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _poly_iou(pa: Tensor, pb: Tensor, chunk_size: int, dtype: torch.dtype) -> Tensor:
    iou = torch.zeros(len(pa), len(pb), dtype=dtype, device=pa.device)
    i, j = _envelopes_meet(_envelope(pa), _envelope(pb)).nonzero().unbind(1)
    iou[i, j] = _iou_of_pairs(pa, pb, i, j, chunk_size, dtype)
    return iou


def poly_iou(a: Tensor, b: Tensor, chunk_size: int = CHUNK) -> Tensor:
    """(N, Ka, 2), (M, Kb, 2) convex polygons (either turning order) -> (N, M) IoU, by Sutherland-Hodgman
    clipping of each pair whose horizontal envelopes overlap; the other pairs are 0.

    Memory: the (N, M) output, the pair list and ``chunk_size`` pairs of clipping at a time. Each pair is
    moved to its first polygon's mean in float64, then clipped in float32 (float64 for float64 input).
    """
    pa, pb = _as_polygons(a, "a"), _as_polygons(b, "b")
    return _poly_iou(pa, pb, chunk_size, _work_dtype(a)).to(a.dtype)


def rotated_iou(a: Tensor, b: Tensor, chunk_size: int = CHUNK) -> Tensor:
    """(N, 5), (M, 5) oriented boxes -> (N, M) IoU (see ``poly_iou``). A box of zero area has IoU 0."""
    _check_last(a, (5,), "a")
    _check_last(b, (5,), "b")
    pa, pb = _oriented(obb_to_poly(a.double())), _oriented(obb_to_poly(b.double()))
    return _poly_iou(pa, pb, chunk_size, _work_dtype(a)).to(a.dtype)


def _overlaps_below(
    poly: Tensor, rows: Tensor, dropped: np.ndarray, thr: float, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i`` in ``rows``, ``j > i`` not yet dropped, with IoU above ``thr``; sorted by i."""
    env = _envelope(poly)
    later = torch.arange(len(poly))[None] > rows[:, None]  # lower scores only
    meet = _envelopes_meet(env[rows.to(env.device)], env).cpu() & later & ~torch.from_numpy(dropped)
    i, j = meet.nonzero().unbind(1)
    iou = _iou_of_pairs(poly, poly, rows[i].to(poly.device), j.to(poly.device), CHUNK, dtype)
    hit = (iou > thr).cpu()
    return rows[i[hit]].numpy(), j[hit].numpy()  # nonzero is row-major


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, block: int = 1024) -> Tensor:
    """Greedy NMS of oriented boxes: (N, 5), (N,) -> int64 indices of the kept boxes, highest score first.

    A box is dropped when its IoU with a kept box of higher score exceeds ``iou_threshold`` (as in
    ``torchvision.ops.nms``). Rows are taken ``block`` at a time, and only boxes not yet dropped are
    compared, so memory stays at ``block * N`` flags plus the overlapping pairs.
    """
    _check_last(boxes, (5,), "boxes")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape ({len(boxes)},), got {tuple(scores.shape)}")
    return _nms(boxes.double(), scores, iou_threshold, block, _work_dtype(boxes))


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, block: int, dtype: torch.dtype) -> Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    poly = _oriented(obb_to_poly(boxes[order]))
    dropped = np.zeros(len(poly), dtype=bool)
    keep: list[int] = []
    for r0 in range(0, len(poly), block):
        rows = torch.arange(r0, min(r0 + block, len(poly)))
        rows = rows[~torch.from_numpy(dropped[r0 : r0 + block])]
        i, j = _overlaps_below(poly, rows, dropped, iou_threshold, dtype)
        start, end = np.searchsorted(i, rows.numpy(), "left"), np.searchsorted(i, rows.numpy(), "right")
        for r, s, e in zip(rows.tolist(), start, end):
            if not dropped[r]:
                keep.append(r)
                dropped[j[s:e]] = True
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_rotated_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category ``idxs`` (N,): (N, 5), (N,) -> kept indices, highest score first.

    Offset trick: each category's boxes move by ``idx * (span + 1)`` along x and y, so boxes of different
    categories never overlap and one ``rotated_nms`` does all.
    """
    _check_last(boxes, (5,), "boxes")
    if scores.shape != boxes.shape[:1] or idxs.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores and idxs must have shape ({len(boxes)},), got {tuple(scores.shape)}, {tuple(idxs.shape)}"
        )
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    poly = obb_to_poly(boxes.double())
    span = (poly.max() - poly.min()).item() + 1
    moved = boxes.double().clone()  # float64: the moves must not round the boxes
    moved[:, :2] += idxs.double()[:, None] * span
    return _nms(moved, scores, iou_threshold, 1024, _work_dtype(boxes))


def _roi_grid(rois: Tensor, oh: int, ow: int, n: int, scale: float, aligned: bool) -> Tensor:
    """(K, 6) RoIs -> (K, oh*n, ow*n, 2) sample points ``(x, y)`` in feature pixel indices (centres at
    integers): bin centres of an n x n grid per output cell, in each RoI's own turned frame."""
    cx, cy, w, h, a = (rois[:, k, None, None] for k in range(1, 6))
    off = 0.5 if aligned else 0.0  # aligned: pixel i covers [i, i + 1) in input coordinates
    cx, cy, w, h = cx * scale - off, cy * scale - off, w * scale, h * scale
    if not aligned:  # as torchvision: RoIs at least one feature pixel wide
        w, h = w.clamp_min(1.0), h.clamp_min(1.0)
    ty = (torch.arange(oh * n, device=rois.device, dtype=rois.dtype) + 0.5) / (oh * n) - 0.5
    tx = (torch.arange(ow * n, device=rois.device, dtype=rois.dtype) + 0.5) / (ow * n) - 0.5
    lx, ly = w * tx[None, None, :], h * ty[None, :, None]  # along w and along h
    cos, sin = torch.cos(a), torch.sin(a)
    return torch.stack([cx + lx * cos - ly * sin, cy + lx * sin + ly * cos], dim=-1)


def rotated_roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Tensor:
    """Rotated RoI Align (Oriented R-CNN's RoI head): (B, C, H, W) features, (K, 6) RoIs
    ``batch_index, cx, cy, w, h, angle`` in input pixels -> (K, C, oh, ow).

    Output cell ``(i, j)`` averages ``sampling_ratio**2`` bilinear samples spread evenly over its bin; row
    ``i`` runs along the RoI's ``h`` side, column ``j`` along its ``w`` side (``angle``'s direction). At
    angle 0 this is ``torchvision.ops.roi_align`` with the same arguments: samples more than one pixel outside
    the map read 0, those within it read the border (unaligned RoIs under one feature pixel are widened about
    their centre, torchvision's from their corner). Differentiable with respect to ``features``.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    _check_last(rois, (6,), "rois")
    if sampling_ratio < 1:
        raise ValueError(
            f"sampling_ratio must be a positive count of samples per bin side, got {sampling_ratio}"
        )
    bsz, c, height, width = features.shape
    batch = rois[:, 0].long()
    if len(rois) and (batch.min() < 0 or batch.max() >= bsz):
        raise ValueError(f"rois' batch indices must lie in [0, {bsz}), got {batch.min()}..{batch.max()}")
    n = sampling_ratio
    # sample points in float32 at least: half precision would misplace them by pixels on large maps
    work = torch.float64 if features.dtype == torch.float64 else torch.float32
    grid = _roi_grid(rois.to(work), oh, ow, n, spatial_scale, aligned)
    x, y = grid[..., 0], grid[..., 1]
    inside = ((x >= -1) & (x <= width) & (y >= -1) & (y <= height)).to(work)
    # grid_sample with align_corners=False: -1 and 1 are the map's outer pixel edges
    norm = torch.stack([(x + 0.5) / width * 2 - 1, (y + 0.5) / height * 2 - 1], dim=-1)
    parts, where = [], []
    for b in batch.unique().tolist():
        sel = (batch == b).nonzero().squeeze(1)
        g = norm[sel].reshape(1, len(sel) * oh * n, ow * n, 2)
        f = features[b : b + 1].to(work)
        v = F.grid_sample(f, g, mode="bilinear", padding_mode="border", align_corners=False)
        v = v * inside[sel].reshape(1, 1, len(sel) * oh * n, ow * n)
        parts.append(v.reshape(c, len(sel), oh, n, ow, n).mean(dim=(3, 5)).transpose(0, 1).to(features.dtype))
        where.append(sel)
    out = features.new_zeros(len(rois), c, oh, ow)
    if parts:
        out = out.index_put((torch.cat(where),), torch.cat(parts))
    return out
