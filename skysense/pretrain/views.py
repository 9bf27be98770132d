"""Two augmented views u, v of a multi-modal sample with known geometry (paper Sec. 3.2, MGCL inputs).

Works on **batched** sample dicts (the model's input contract) with **per-sample** geometry::

    hr (B, C, H, W); s2, s1 (B, T, C, H, W); *_dates (B, T) int64; *_mask (B, T) bool; lat, lon (B,)

Geometry lives in the *tile frame*: fractions of the original tile, ``y`` down and ``x`` right in
[0, 1], shared by every modality whatever its pixel size (a 64-px ``s2`` tile and a 2048-px ``hr``
tile cover the same ground). A view is, in this order: a crop ``box = (y0, x0, y1, x1)`` resampled
to a square of ``size[m]`` pixels (stretched where the box is not square), an optional horizontal
flip (x -> 1 - x), vertical flip (y -> 1 - y), then ``rot`` counter-clockwise quarter turns exactly
as ``torch.rot90(img, rot, (-2, -1))``.
:func:`view_to_tile` maps view fractions (r, c) back to the tile frame; the same map builds the
resampling grid, so pixels and the correspondence of feature cells can never disagree.

Series keep a random subset of dates (``num_dates``, paper: 20 ``s2``, 10 ``s1``), in their
original order; with ``shared_dates`` both views keep the same dates, so date index t means the
same acquisition in u and v. Dates can be jittered by up to ``date_jitter`` days per view (DTPE
sees them). ``hr`` may get a brightness/contrast jitter. Keys other than the model inputs
(targets, meta) are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from skysense.config import SERIES, check_ranges

IMAGES: tuple[str, ...] = ("hr", "s2", "s1")


@dataclass
class ViewConfig:
    """Augmentations of one view (both views draw independently from the same distribution)."""

    scale: tuple[float, float] = (0.4, 1.0)  # crop area as a fraction of the tile
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect (width / height), log-uniform
    size: dict[str, int] = field(default_factory=dict)  # output side per modality; default = input height
    hflip: float = 0.5  # probabilities
    vflip: float = 0.5
    rot90: bool = True  # random quarter turns (remote sensing has no canonical "up")
    num_dates: dict[str, int] = field(default_factory=lambda: {"s2": 20, "s1": 10})
    shared_dates: bool = True  # both views keep the same dates
    date_jitter: int = 0  # max |shift| in days, drawn per view and date
    hr_jitter: float = 0.0  # brightness/contrast amplitude on normalised hr (0 = off)
    hr_grayscale: float = 0.0  # probability of replacing hr by its luminance (BYOL/DINO: 0.2)
    hr_blur: float = 0.0  # probability of a Gaussian blur of hr, sigma ~ U(0.1, 2) view pixels
    local_crops: int = 0  # DINO multi-crop: extra small views, student only, image level (0 = off)
    local_scale: tuple[float, float] = (0.05, 0.25)  # their crop area
    local_size: dict[str, int] = field(default_factory=dict)  # their side; default = half the view's

    def __post_init__(self) -> None:
        odds = dict.fromkeys(("hflip", "vflip", "hr_grayscale", "hr_blur"), (0, 1))
        check_ranges(
            "pretrain.views.",
            self,
            at_least=dict.fromkeys(("date_jitter", "hr_jitter", "local_crops"), 0),
            within=odds,
        )
        for name in ("scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"pretrain.views.{name}={getattr(self, name)!r}: need 0 < low <= high <= 1")
        for name in ("size", "num_dates", "local_size"):
            bad = {m: n for m, n in getattr(self, name).items() if not (isinstance(n, int) and n >= 1)}
            if bad:
                raise ValueError(f"pretrain.views.{name}: {bad}: every value must be a whole number >= 1")


@dataclass
class Geometry:
    """Per-sample geometry of a view: box (B, 4) float64 (y0, x0, y1, x1) tile fractions; hflip, vflip
    (B,) bool; rot (B,) int64 quarter turns; ``dates[m]`` (B, T_view) indices into the input series."""

    box: Tensor
    hflip: Tensor
    vflip: Tensor
    rot: Tensor
    dates: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class View:
    sample: dict[str, Any]
    geom: Geometry


def view_to_tile(geom: Geometry, r: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """View fractions (r down, c right) (B, ...) -> tile fractions (y, x) (B, ...), float64."""
    r, c = r.to(torch.float64), c.to(torch.float64)
    shape = (-1,) + (1,) * (r.dim() - 1)
    k = geom.rot.reshape(shape) % 4
    # torch.rot90 once: out(r, c) = in(c, 1 - r); undo k turns.
    for _ in range(3):
        turn = k > 0
        r, c = torch.where(turn, c, r), torch.where(turn, 1 - r, c)
        k = k - turn.to(k.dtype)
    r = torch.where(geom.vflip.reshape(shape), 1 - r, r)
    c = torch.where(geom.hflip.reshape(shape), 1 - c, c)
    y0, x0, y1, x1 = (geom.box[:, i].reshape(shape) for i in range(4))
    return y0 + r * (y1 - y0), x0 + c * (x1 - x0)


def tile_to_view(geom: Geometry, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`view_to_tile`: tile fractions (B, ...) -> view fractions (B, ...)."""
    y, x = y.to(torch.float64), x.to(torch.float64)
    shape = (-1,) + (1,) * (y.dim() - 1)
    y0, x0, y1, x1 = (geom.box[:, i].reshape(shape) for i in range(4))
    r, c = (y - y0) / (y1 - y0), (x - x0) / (x1 - x0)
    r = torch.where(geom.vflip.reshape(shape), 1 - r, r)
    c = torch.where(geom.hflip.reshape(shape), 1 - c, c)
    k = geom.rot.reshape(shape) % 4
    for _ in range(3):  # one turn forward: in(r, c) lands at out(1 - c, r)
        turn = k > 0
        r, c = torch.where(turn, 1 - c, r), torch.where(turn, r, c)
        k = k - turn.to(k.dtype)
    return r, c


def cell_centres(batch: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Centres of an (h, w) grid in view fractions, each (B, h*w) float64, row-major."""
    h, w = grid
    r = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    c = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    return rr.reshape(1, -1).expand(batch, -1), cc.reshape(1, -1).expand(batch, -1)


def correspondence(
    geom_u: Geometry, geom_v: Geometry, grid_u: tuple[int, int], grid_v: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Partner in v of every feature cell of u: the v cell containing the ground point of u's centre.

    Returns ``index`` (B, hu*wu) int64, a row-major flat index into v's (hv, wv) grid, and ``valid``
    (B, hu*wu) bool, False where u's centre falls outside view v (then ``index`` is 0).
    Pairs are (i, index[b, i]) for every i with valid[b, i].
    """
    b = geom_u.box.shape[0]
    r, c = cell_centres(b, grid_u)
    y, x = view_to_tile(geom_u, r, c)
    rv, cv = tile_to_view(geom_v, y, x)
    hv, wv = grid_v
    valid = (rv >= 0) & (rv < 1) & (cv >= 0) & (cv < 1)
    i = (rv * hv).floor().clamp(0, hv - 1).to(torch.int64)
    j = (cv * wv).floor().clamp(0, wv - 1).to(torch.int64)
    return torch.where(valid, i * wv + j, torch.zeros_like(i)), valid


def sampling_grid(geom: Geometry, size: int) -> Tensor:
    """``F.grid_sample`` grid (B, size, size, 2) of a view: (x, y) in [-1, 1], align_corners=False."""
    r, c = cell_centres(geom.box.shape[0], (size, size))
    y, x = view_to_tile(geom, r, c)
    return torch.stack([2 * x - 1, 2 * y - 1], dim=-1).reshape(-1, size, size, 2)


def random_geometry(batch: int, cfg: ViewConfig, gen: torch.Generator | None = None) -> Geometry:
    """Random crop box, flips and quarter turns per sample (RandomResizedCrop-style box)."""

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=gen, dtype=torch.float64)

    area = uniform(*cfg.scale)
    ratio = torch.exp(uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1])))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    y0, x0 = uniform(0, 1) * (1 - h), uniform(0, 1) * (1 - w)
    hflip = torch.rand(batch, generator=gen) < cfg.hflip
    vflip = torch.rand(batch, generator=gen) < cfg.vflip
    rot = torch.randint(0, 4 if cfg.rot90 else 1, (batch,), generator=gen)
    return Geometry(torch.stack([y0, x0, y0 + h, x0 + w], dim=1), hflip, vflip, rot)


def subsample_dates(mask: Tensor, n: int, gen: torch.Generator | None = None) -> Tensor:
    """Indices (B, T') of up to ``n`` random non-padded dates per sample, in their original order.

    ``mask`` (B, T) bool, True = padding. T' = min(n, most valid dates of any sample); a sample with
    fewer valid dates is filled with its padded indices (which stay masked).
    """
    b, t = mask.shape
    keep = min(n, int((~mask).sum(1).max()))
    score = torch.rand(b, t, generator=gen).masked_fill(mask, 2.0)  # padded steps sort last
    return score.argsort(dim=1)[:, :keep].sort(dim=1).values


def _warp(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """x (B, ..., H, W) -> (B, ..., s, s) sampled at grid (B, s, s, 2)."""
    lead = x.shape[1:-2]
    flat = x.reshape(x.shape[0], -1, *x.shape[-2:])
    out = F.grid_sample(flat, grid.to(flat.dtype), mode=mode, padding_mode="border", align_corners=False)
    return out.reshape(x.shape[0], *lead, *out.shape[-2:])


def apply_view(
    sample: dict[str, Any],
    geom: Geometry,
    cfg: ViewConfig,
    gen: torch.Generator | None = None,
) -> dict[str, Any]:
    """Resample every modality of a batched sample to ``geom``; series to ``geom.dates``; jitter."""
    out: dict[str, Any] = {k: sample[k] for k in ("lat", "lon", "hr_dates") if k in sample}
    for m in IMAGES:
        if m not in sample:
            continue
        x = sample[m]
        inv = sample.get(f"{m}_invalid")
        if m in SERIES:
            idx = geom.dates[m]  # (B, T')
            x = x.gather(1, idx.reshape(*idx.shape, 1, 1, 1).expand(-1, -1, *x.shape[2:]))
            inv = (
                inv.gather(1, idx[..., None, None].expand(-1, -1, *inv.shape[2:]))
                if inv is not None
                else None
            )
            pad = sample.get(f"{m}_mask")
            out[f"{m}_mask"] = (
                pad.gather(1, idx) if pad is not None else torch.zeros_like(idx, dtype=torch.bool)
            )
            if f"{m}_dates" in sample:
                days = sample[f"{m}_dates"].gather(1, idx)
                if cfg.date_jitter > 0:
                    j = cfg.date_jitter
                    days = days + torch.randint(-j, j + 1, days.shape, generator=gen).to(days.device)
                out[f"{m}_dates"] = days
        size = cfg.size.get(m, x.shape[-2])
        grid = sampling_grid(geom, size).to(x.device)
        x = _warp(x, grid, "bilinear")
        if m == "hr" and cfg.hr_jitter > 0:
            a = cfg.hr_jitter
            contrast = 1 + a * (2 * torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 1)
            bright = a * (2 * torch.rand(x.shape[0], x.shape[1], 1, 1, generator=gen) - 1)
            x = x * contrast.to(x) + bright.to(x)
        if m == "hr":
            x = photometric(x, cfg, gen)
        out[m] = x
        if inv is not None:
            out[f"{m}_invalid"] = _warp(inv.to(x.dtype), grid, "nearest") > 0.5
    return out


def photometric(x: Tensor, cfg: ViewConfig, gen: torch.Generator | None = None) -> Tensor:
    """Grayscale (luminance of the first 3 bands, on the normalised values) and Gaussian blur, each with
    its probability per sample; x (B, C, H, W). Geometry is untouched, so correspondences still hold."""
    b = x.shape[0]
    gray = torch.rand(b, generator=gen) < cfg.hr_grayscale
    blur = torch.rand(b, generator=gen) < cfg.hr_blur
    sigma = 0.1 + 1.9 * torch.rand(b, generator=gen)
    if not (gray.any() or blur.any()):
        return x
    x = x.clone()
    if gray.any():
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        lum = (x[gray, :3] * w.view(1, 3, 1, 1)).sum(1, keepdim=True)  # (n, 1, H, W)
        x[gray, :3] = lum.expand(-1, 3, -1, -1)
    for i in blur.nonzero().flatten().tolist():
        s = float(sigma[i])
        k = min(2 * math.ceil(3 * s) + 1, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)  # reflect pad < size
        x[i] = TF.gaussian_blur(x[i], [k, k], [s, s])
    return x


def make_views(
    sample: dict[str, Any], cfg: ViewConfig, gen: torch.Generator | None = None
) -> tuple[View, View]:
    """Two independently augmented views of a batched sample (see module doc)."""
    b = next(sample[m].shape[0] for m in IMAGES if m in sample)
    geoms = [random_geometry(b, cfg, gen), random_geometry(b, cfg, gen)]
    for m in SERIES:
        if m not in sample:
            continue
        pad = sample.get(f"{m}_mask")
        pad = pad.cpu() if pad is not None else torch.zeros(sample[m].shape[:2], dtype=torch.bool)
        n = cfg.num_dates.get(m, pad.shape[1])
        first = subsample_dates(pad, n, gen)
        geoms[0].dates[m] = first.to(sample[m].device)
        second = first if cfg.shared_dates else subsample_dates(pad, n, gen)
        geoms[1].dates[m] = second.to(sample[m].device)
    u, v = (View(apply_view(sample, g, cfg, gen), g) for g in geoms)
    return u, v


def local_views(
    sample: dict[str, Any], u: View, cfg: ViewConfig, gen: torch.Generator | None = None
) -> list[View]:
    """``cfg.local_crops`` small views (DINO multi-crop): crops of ``local_scale`` resampled to ``local_size``
    (default: half the global view's side), the dates of view ``u``, the same photometric jitter."""
    b = u.geom.box.shape[0]
    size = {m: cfg.local_size.get(m, max(1, u.sample[m].shape[-1] // 2)) for m in IMAGES if m in u.sample}
    local_cfg = replace(cfg, scale=cfg.local_scale, size=size, date_jitter=0)
    out = []
    for _ in range(cfg.local_crops):
        geom = random_geometry(b, local_cfg, gen)
        geom.dates = dict(u.geom.dates)
        out.append(View(apply_view(sample, geom, local_cfg, gen), geom))
    return out
