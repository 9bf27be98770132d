"""Large-scene inference: ``embed`` and ``predict`` over GeoTIFFs of any size, in bounded memory.

The scene is cut into ``tile`` x ``tile`` pixel tiles whose origins step by ``tile - overlap``; each
tile is read through a rasterio window (never the whole scene), normalised by the weights' input
contract and run through the model in batches (:mod:`skysense.inference_heads`), a thread reading the
next batch meanwhile. Each tile's output map (stride ``f`` of the input) is
blended into the output grid with separable weights ``w(y, x) = r(y) r(x)``. Across the ``k = overlap /
f`` cells two neighbours share, each tile's ``r`` is 0 over the outer ``k / 4`` cells (next to its own
edge, where the zero padding beyond the tile reaches into the receptive field), rises linearly over the
next ``k / 2`` and is 1 beyond; the two weights sum to 1 everywhere in the overlap, so the tiles
cross-fade without seams. On a side at the scene's edge ``r`` stays 1. The output is ``sum w f / sum w``;
it equals the whole-image output wherever the model's receptive field reaches at most ``overlap / 4``
pixels (and the tile's own content is what the whole image holds there).

Tiles are run one tile row (a *strip*) at a time; once a strip is done, the output rows no later tile
touches are final and are written to the GeoTIFF. The rows shared with the next strip (the overlap)
are carried in memory, so memory grows with the scene's width, not its area. ``overlap <= tile / 2``
keeps that carry to one strip: a run that starts at strip ``s`` (a resume, or a rank's share) first
recomputes strip ``s - 1`` without writing it, which gives bit for bit the carry of an uninterrupted
run (the batches of a strip are always the same tiles in the same order).

Files: ranks write ``OUT.rank{r}of{N}.partial`` (their strips' rows, CRS and transform of their part)
and record each finished strip in ``<part>.json`` (atomic); when every strip is written, rank 0
renames the one part (or joins the parts, or copies them into a Cloud-Optimised GeoTIFF) to ``OUT``.
A killed run leaves parts and progress files and no ``OUT``: rerunning the same command skips the
finished strips. A Zarr output (:mod:`skysense.inference_zarr`) is one store the ranks share, a chunk
per strip, with a progress file per rank. The output grid is the input grid scaled by the stride
(``transform * scale(f)``); the last band, ``valid``, is the fraction of valid (not nodata, and for
dated stacks not without a clear date, :mod:`skysense.inference_stack`) input pixels of each cell;
cells with none are NaN.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import ColorInterp
from rasterio.windows import Window
from torch import Tensor

from skysense.inference_files import (
    Summary,
    TiffPart,
    finalise,
    fingerprint_of,
    peak_rss_mb,
    profile_of,
    record,
    strips_done,
)
from skysense.inference_heads import (
    LEVELS,
    MODEL_STRIDE,
    Head,
    encoder_head,
    task_head,
)
from skysense.runtime import PRECISIONS

__all__ = [
    "LEVELS",
    "PRECISIONS",
    "Grid",
    "Head",
    "Scene",
    "encoder_head",
    "infer",
    "task_head",
]


# ----------------------------------------------------------------------------- the tiling
@dataclass(frozen=True)
class Grid:
    """Tiles over an ``height`` x ``width`` scene and the output grid of ``stride``."""

    height: int
    width: int
    tile: int
    overlap: int
    stride: int

    def __post_init__(self) -> None:
        if self.tile <= 0 or self.tile % MODEL_STRIDE or self.overlap % MODEL_STRIDE:
            raise ValueError(
                f"tile {self.tile} and overlap {self.overlap} must be multiples of {MODEL_STRIDE} pixels"
            )
        if not 0 <= 2 * self.overlap <= self.tile:
            raise ValueError(f"overlap {self.overlap} must be between 0 and half the tile ({self.tile // 2})")

    @property
    def step(self) -> int:
        return self.tile - self.overlap

    def count(self, size: int) -> int:
        """Tiles along an axis of ``size`` pixels: the last one reaches past the edge (zero-padded)."""
        return max(1, math.ceil((size - self.overlap) / self.step))

    @property
    def rows(self) -> int:
        return self.count(self.height)

    @property
    def cols(self) -> int:
        return self.count(self.width)

    @property
    def out_shape(self) -> tuple[int, int]:
        return math.ceil(self.height / self.stride), math.ceil(self.width / self.stride)

    def final_rows(self, s: int) -> tuple[int, int]:
        """Output rows that are final once strip ``s`` is done."""
        end = self.out_shape[0] if s == self.rows - 1 else (s + 1) * self.step // self.stride
        return s * self.step // self.stride, end

    def ramp(self, before: bool, after: bool) -> np.ndarray:
        """(n,) blending weights along a tile of ``n = tile / stride`` cells (see the module doc): on a
        side shared with a neighbour (``before``/``after``), 0 over the outer ``k / 4`` of the ``k``
        overlap cells, then a linear rise to 1 over the next ``k / 2``; 1 on a side at the scene edge."""
        n, k = self.tile // self.stride, self.overlap // self.stride
        r = np.ones(n)
        if k:
            m = k // 4
            t = np.arange(n) + 0.5
            rise = np.clip((t - m) / (k - 2 * m), 0.0, 1.0)
            r = np.minimum(r, rise) if before else r
            r = np.minimum(r, rise[::-1]) if after else r
        return r


def lonlat(
    crs: Any, transform: Any, rows: Sequence[int], cols: Sequence[int], size: int
) -> dict[str, Tensor]:
    """``lat``/``lon`` (B,) degrees of the tiles' centres (one warp call for the batch): the
    geo-context region of the fused map."""
    from rasterio.warp import transform as warp_points

    xs, ys = zip(*[transform @ (c + size / 2, r + size / 2) for r, c in zip(rows, cols)])
    lon, lat = warp_points(crs, "EPSG:4326", list(xs), list(ys))
    return {"lat": torch.tensor(lat, dtype=torch.float32), "lon": torch.tensor(lon, dtype=torch.float32)}


class Scene:
    """The input rasters (one, or a before/after pair on one grid), read a window at a time."""

    def __init__(self, paths: Sequence[str | Path], in_bands: int, keys: Sequence[str] = ("hr",)) -> None:
        self.paths = [Path(p) for p in paths]
        self.keys = list(keys)[: len(self.paths)]
        self.ds = []
        for p in self.paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: input raster not found")
            self.ds.append(rasterio.open(p))
        ref = self.ds[0]
        for p, d in zip(self.paths, self.ds):
            if d.crs is None or d.transform.is_identity:
                raise ValueError(
                    f"{p}: no CRS or geotransform: georeference it first (e.g. gdal_edit.py -a_srs EPSG:xxxx "
                    "-a_ullr ulx uly lrx lry)"
                )
            if (d.crs, d.transform, d.shape) != (ref.crs, ref.transform, ref.shape):
                raise ValueError(
                    f"{p}: grid (CRS, transform, size) differs from {self.paths[0]}: put both dates on one "
                    "grid first (gdalwarp -t_srs ... -tr ... -te ...)"
                )
        self.alpha = [self._alpha(p, d, in_bands) for p, d in zip(self.paths, self.ds)]
        self.crs, self.transform = ref.crs, ref.transform
        self.height, self.width = ref.shape

    @staticmethod
    def _alpha(path: Path, d: Any, in_bands: int) -> int | None:
        """The alpha band's index (a transparent pixel is nodata), or None; checks the band count."""
        if d.count == in_bands:
            return None
        if d.count == in_bands + 1 and d.colorinterp[-1] == ColorInterp.alpha:
            return int(d.count)
        raise ValueError(
            f"{path}: {d.count} band(s), but the weights take {in_bands}: select the model's bands first "
            "(e.g. gdal_translate -b 1 -b 2 -b 3)"
        )

    def read(self, i: int, row: int, col: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile (C, size, size) float32 and invalid (size, size) bool of input ``i``; outside is invalid."""
        d = self.ds[i]
        h, w = min(size, self.height - row), min(size, self.width - col)
        win = Window(col, row, w, h)
        bands = [b for b in range(1, d.count + 1) if b != self.alpha[i]]
        raw = d.read(bands, window=win)
        bad = np.zeros((h, w), dtype=bool)
        if raw.dtype.kind == "f":
            bad |= np.isnan(raw).any(0)
        if d.nodata is not None and not np.isnan(d.nodata):
            bad |= (raw == d.nodata).any(0)
        if self.alpha[i]:
            bad |= d.read(self.alpha[i], window=win) == 0
        x = np.zeros((len(bands), size, size), np.float32)
        invalid = np.ones((size, size), dtype=bool)
        x[:, :h, :w] = np.where(bad, 0, raw)
        invalid[:h, :w] = bad
        return x, invalid

    def tile(self, row: int, col: int, size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``{key: (C, size, size), key_invalid: (size, size)}`` and the invalid pixels (of any input)."""
        reads = [self.read(i, row, col, size) for i in range(len(self.paths))]
        invalid = np.any([inv for _, inv in reads], axis=0)
        out = {k: x for k, (x, _) in zip(self.keys, reads)}
        return out | {f"{k}_invalid": invalid for k in self.keys}, invalid

    def km2(self, rows: int | None = None) -> float:
        """Area of ``rows`` rows (default all) in km² (geographic CRSs: at the scene's mid latitude)."""
        t = self.transform
        area = abs(t.a * t.e - t.b * t.d)
        if self.crs.is_geographic:
            lat = (t @ (self.width / 2, self.height / 2))[1]
            area *= 111.32e3**2 * math.cos(math.radians(lat))
        return area * (self.height if rows is None else rows) * self.width / 1e6

    def close(self) -> None:
        for d in self.ds:
            d.close()


def tile_batch(
    scene: Any, head: Head, grid: Grid, s: int, js: Sequence[int]
) -> tuple[dict[str, Any], Tensor]:
    """The model's sample of tiles ``js`` of strip ``s`` (normalised, nodata 0, lat/lon) and the valid
    fraction of each output cell (B, 1, n, n)."""
    tiles = [scene.tile(s * grid.step, j * grid.step, grid.tile) for j in js]
    sample: dict[str, Any] = {}
    for key in (k for k in tiles[0][0] if not k.endswith(("_invalid", "_cloud"))):
        x = torch.from_numpy(np.stack([t[0][key] for t in tiles]))
        if key.endswith("_dates"):
            sample[key] = x
            continue
        bad = torch.from_numpy(np.stack([t[0][f"{key}_invalid"] for t in tiles])).unsqueeze(-3)
        x = head.normalise[key.split("_")[0]](x)
        sample[key] = x.masked_fill(bad, 0.0) if bool(bad.any()) else x  # nodata -> 0
        if f"{key}_cloud" in tiles[0][0]:  # a stack: where each date is left out of the fusion
            cloud = torch.from_numpy(np.stack([t[0][f"{key}_cloud"] for t in tiles]))
            sample[f"{key}_masked"] = bad.squeeze(-3) | cloud
    invalid = torch.from_numpy(np.stack([t[1] for t in tiles]))
    rows, cols = [s * grid.step] * len(js), [j * grid.step for j in js]
    sample |= lonlat(scene.crs, scene.transform, rows, cols, grid.tile)
    return sample, F.avg_pool2d((~invalid).float()[:, None], grid.stride)


def run_strip(scene: Any, head: Head, grid: Grid, s: int, carry: np.ndarray | None, batch: int) -> np.ndarray:
    """Blend strip ``s``'s tiles onto ``carry`` (the rows it shares with strip ``s - 1``); a thread
    reads and normalises the next batch while the model runs on this one.

    Returns (K + 2, rows, cols) sums: K weighted outputs, the weighted valid fraction, the weight."""
    from concurrent.futures import ThreadPoolExecutor

    n = grid.tile // grid.stride
    oh, ow = grid.out_shape
    r0 = s * grid.step // grid.stride
    rows = min(n, oh - r0)
    acc = np.zeros((head.channels + 2, n, (grid.cols - 1) * grid.step // grid.stride + n), np.float32)
    if carry is not None:
        acc[:, : carry.shape[1], : carry.shape[2]] = carry
    ry = grid.ramp(s > 0, s < grid.rows - 1)
    batches = [range(j0, min(j0 + batch, grid.cols)) for j0 in range(0, grid.cols, batch)]
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(tile_batch, scene, head, grid, s, batches[0])
        for i, js in enumerate(batches):
            sample, valid_t = ahead.result()
            if i + 1 < len(batches):
                ahead = pool.submit(tile_batch, scene, head, grid, s, batches[i + 1])
            out = head.run(sample).numpy()  # (B, K, n, n)
            valid = valid_t.numpy()
            for b, j in enumerate(js):
                w = (ry[:, None] * grid.ramp(j > 0, j < grid.cols - 1)[None, :]).astype(np.float32)
                c0 = j * grid.step // grid.stride
                acc[:, :, c0 : c0 + n] += np.concatenate([out[b] * w, valid[b] * w, w[None]])
    return acc[:, :rows, :ow]


def finish_rows(head: Head, acc: np.ndarray) -> np.ndarray:
    """Blended sums (K + 2, h, w) -> written bands (len(bands) + 1, h, w): outputs, ``valid``; NaN where
    no input pixel is valid."""
    den = acc[-1]
    valid = acc[-2] / den
    bands = head.finish(acc[:-2] / den)
    bands[:, valid <= 0] = np.nan
    return np.concatenate([bands, valid[None]]).astype(np.float32)


def _share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous strips [a, b) of ``rank``: every rank's part is a band of whole output rows."""
    return rank * n // world, (rank + 1) * n // world


def run_part(
    scene: Any, head: Head, grid: Grid, part: Any, strips: tuple[int, int], fingerprint: dict[str, Any],
    batch: int = 4, progress: bool = True, stop_after: int | None = None,
) -> int:  # fmt: skip
    """Strips [a, b) into ``part`` (a :class:`~skysense.inference_files.TiffPart` or
    :class:`~skysense.inference_zarr.ZarrPart`), resuming after the strips its record holds; returns the
    tiles computed. ``stop_after``: raise after that many strips (tests kill a run this way)."""
    from tqdm import tqdm

    a, b = strips
    done = strips_done(part.record, fingerprint) if part.exists() else 0
    if done == 0:
        part.create()
    if a + done >= b:
        return 0
    bar = tqdm(total=(b - a) * grid.cols, initial=done * grid.cols, unit="tile", disable=not progress)
    tiles, carry, t0 = 0, None, time.perf_counter()
    for s in range(max(0, a + done - 1), b):
        acc = run_strip(scene, head, grid, s, carry, batch)
        f0, f1 = grid.final_rows(s)
        carry = acc[:, f1 - f0 :].copy()
        if s < a + done:  # the strip before the first to write: only its carry is needed
            continue
        tiles += grid.cols
        part.write(finish_rows(head, acc[:, : f1 - f0]), f0)
        record(part.record, fingerprint, s + 1 - a)
        km2 = scene.km2(min(grid.height - a * grid.step, (s + 1 - a) * grid.step))
        bar.update(grid.cols)
        bar.set_postfix_str(f"{km2:.2f} km², {tiles / (time.perf_counter() - t0):.2f} tiles/s")
        if stop_after is not None and s + 1 - a - done >= stop_after:
            raise KeyboardInterrupt(f"stopped after {stop_after} strip(s)")
    bar.close()
    return tiles


def _ranks() -> tuple[int, int, int]:
    """(rank, world, local rank) of a torchrun launch (0, 1, 0 otherwise); joins a gloo group for the
    barriers (a long timeout: ranks wait for the slowest one's strips)."""
    import datetime

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


FORMATS = ("gtiff", "cog", "zarr")


def infer(
    inputs: Sequence[str | Path] | Any, out: str | Path, head: Head, *, model_file: str | Path,
    tile: int = 512, overlap: int = 64, batch: int = 4, progress: bool = True, overwrite: bool = False,
    settings: dict[str, Any] | None = None, stop_after: int | None = None, cog: bool = False,
    fmt: str = "gtiff",
) -> Summary:  # fmt: skip
    """Run ``head`` over the scene ``inputs`` (raster paths, or a scene such as
    :class:`skysense.inference_stack.StackScene`) into ``out`` (see the module doc): a GeoTIFF, a
    Cloud-Optimised one (``fmt="cog"``, or ``cog``) or a Zarr store (``fmt="zarr"``,
    :mod:`skysense.inference_zarr`).

    Under torchrun every rank calls this with the same arguments and computes its share of the strips;
    rank 0 writes ``out``. An existing ``out`` is a finished run: returned at once unless ``overwrite``."""
    fmt = "cog" if cog else fmt
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "zarr":
        from skysense.inference_zarr import zarr_module

        zarr_module()  # the clear error where zarr is missing, before any work
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: the output folder does not exist: create it first")
    if out.exists() and not overwrite:
        return Summary(0, 0.0, 0.0, peak_rss_mb(), out=f"{out} (already complete; --overwrite recomputes it)")
    # GDAL caches the blocks it reads, by default up to 5 % of RAM: bound it, so memory does not grow
    # with the scene (GDAL reads the setting before its first block read)
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    rank, world, _ = _ranks()
    scene: Any = inputs if hasattr(inputs, "tile") else Scene(inputs, head.in_bands, head.inputs)
    try:
        grid = Grid(scene.height, scene.width, tile, 0 if head.fixed_tile else overlap, head.stride)
        settings = {**(settings or {}), "bands": head.bands}
        fp = fingerprint_of(scene.paths, str(model_file), grid, settings)
        shares = [_share(grid.rows, r, world) for r in range(world)]
        t0 = time.perf_counter()
        tiles = 0
        writer = _Writer(out, fmt, scene, head, grid, _tags(scene, grid, model_file, settings), world)
        if rank == 0:
            writer.prepare(fp)
        _barrier(world)
        if shares[rank][1] > shares[rank][0]:
            part = writer.part(rank, shares[rank])
            show = progress and rank == 0
            tiles = run_part(scene, head, grid, part, shares[rank], fp, batch, show, stop_after)
        _barrier(world)
        if rank == 0:
            writer.finalise([r for r, sh in enumerate(shares) if sh[1] > sh[0]])
        _barrier(world)
        seconds = time.perf_counter() - t0
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
        km2 = scene.km2() * tiles / (grid.rows * grid.cols)
        return Summary(tiles, km2, seconds, peak_rss_mb(), gpu, str(out))
    finally:
        scene.close()


def _tags(scene: Any, grid: Grid, model_file: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The run's metadata written with the output: settings, inputs, model, tiling, the stacks' dates."""
    return {
        **{k: v for k, v in settings.items() if k != "bands"},
        "inputs": ",".join(str(p) for p in scene.paths),
        "model": str(model_file),
        "stride": grid.stride,
        "tile": grid.tile,
        "overlap": grid.overlap,
        "blending": "linear ramp over the overlap, separable (skysense.inference)",
        **getattr(scene, "tags", {}),
    }


class _Writer:
    """The output of one format: each rank's part, and ``out`` made from them once all are written."""

    def __init__(
        self, out: Path, fmt: str, scene: Any, head: Head, grid: Grid, tags: dict[str, Any], world: int
    ) -> None:
        self.out, self.fmt, self.scene, self.head, self.grid, self.world = out, fmt, scene, head, grid, world
        self.tags = tags
        self.zarr = None
        if fmt == "zarr":
            from skysense.inference_zarr import ZarrOutput

            self.zarr = ZarrOutput(out, scene, head.bands, grid, tags)

    def _tiff(self, rank: int) -> Path:
        return self.out.with_name(f"{self.out.name}.rank{rank}of{self.world}.partial")

    def prepare(self, fingerprint: dict[str, Any]) -> None:
        if self.zarr is not None:
            self.zarr.prepare(fingerprint, self.world)

    def part(self, rank: int, strips: tuple[int, int]) -> Any:
        if self.zarr is not None:
            return self.zarr.part(rank, self.world)
        r0, r1 = self.grid.final_rows(strips[0])[0], self.grid.final_rows(strips[1] - 1)[1]
        profile = profile_of(self.scene, self.head, self.grid, r0, r1)
        return TiffPart(self._tiff(rank), profile, self.head.bands, self.tags, r0)

    def finalise(self, ranks: Sequence[int]) -> None:
        if self.zarr is not None:
            self.zarr.finalise(self.world)
            return
        parts = [self._tiff(r) for r in ranks]
        finalise(parts, self.out, self.fmt == "cog")
        for p in parts:
            p.unlink(missing_ok=True)
            Path(f"{p}.json").unlink(missing_ok=True)
