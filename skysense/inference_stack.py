"""Multi-modal scenes for large-scene inference: dated ``s2``/``s1`` stacks, optionally with an ``hr``
GeoTIFF, on different grids and CRSs, aligned in map coordinates onto one output grid.

A stack is a folder of GeoTIFFs, one per date, the date in the file name (``s2_20210614.tif``,
``2021-06-14.tif``). The reference grid is the ``hr`` image's (else the first ``s2`` date's, else the
first ``s1`` date's), cut to the window where every file overlaps; a clear error where they do not.
Every other file is reprojected onto the reference grid coarsened by a factor ``k`` through GDAL's
warper (:class:`rasterio.vrt.WarpedVRT`, bilinear): ``k`` is the largest power of two up to 32 not
above the file's own pixel size over the reference's, so a 10 m stack under a 0.5 m image is read at
8 m, a window at a time, and tile edges fall on whole coarse pixels. Pixels outside a file or at its
nodata are invalid (zero after normalising, as the model expects) and, with cloudy pixels
(:mod:`skysense.inference_clouds`), leave their date out of the fusion at their cells. A cell is valid
where the hr image (if given) is and every stack has a clear date.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from skysense.data.readers import parse_date
from skysense.dates import to_days
from skysense.inference import Scene
from skysense.inference_clouds import CloudMask, is_sidecar, mask_band, orphan_sidecars

SERIES = ("s2", "s1")


def stack_files(folder: str | Path) -> list[tuple[Any, Path]]:
    """``(date, path)`` of every GeoTIFF in ``folder`` but cloud-mask sidecars, in date order; the date
    comes from the name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: stack folder not found (a folder of dated GeoTIFFs)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff") and not is_sidecar(p))
    if not files:
        raise ValueError(f"{folder}: no GeoTIFF (.tif) in the stack folder")
    orphans = orphan_sidecars(folder, files)
    if orphans:
        raise ValueError(f"{orphans[0]}: a cloud mask without its date file {orphans[0].stem[:-6]}.tif")
    dated = []
    for p in files:
        try:
            dated.append((parse_date(p.name, str(p)), p))
        except ValueError:
            raise ValueError(
                f"{p}: no date in the file name: name each date's file by its acquisition date, e.g. "
                "s2_20210614.tif or 2021-06-14.tif"
            ) from None
    return sorted(dated)


def _open(path: Path, bands: int, what: str) -> Any:
    ds = rasterio.open(path)
    if ds.crs is None or ds.transform.is_identity:
        ds.close()
        raise ValueError(f"{path}: no CRS or geotransform: georeference the {what} file first")
    if ds.count != bands and mask_band(ds, bands) is None:
        ds.close()
        raise ValueError(
            f"{path}: {ds.count} band(s), but the weights take {bands} {what} bands (and one more may be a "
            "cloud band described SCL or CLM)"
        )
    return ds


def _factor(ds: Any, crs: Any, res: float) -> int:
    """The power of two (1..32) nearest below the file's pixel size over the reference's ``res``."""
    left, bottom, right, _ = transform_bounds(ds.crs, crs, *ds.bounds)
    ratio = (right - left) / ds.width / res
    return int(2 ** max(0, min(5, math.floor(math.log2(max(ratio, 1.0))))))


class StackScene:
    """The scene interface of :func:`skysense.inference.infer` over ``hr`` and/or dated stacks."""

    def __init__(
        self, hr: str | Path | None, stacks: dict[str, str | Path], in_bands: dict[str, int]
    ) -> None:
        self.keys = (["hr"] if hr else []) + [m for m in SERIES if m in stacks]
        if not self.keys:
            raise ValueError("no input: give an hr GeoTIFF and/or s2/s1 stack folders")
        missing = [m for m in self.keys if m not in in_bands]
        if missing:
            raise ValueError(f"the weights have no {missing} encoder (they take {sorted(in_bands)})")
        self.dated = {m: stack_files(stacks[m]) for m in SERIES if m in stacks}
        self.paths = ([Path(hr)] if hr else []) + [p for m in self.dated for _, p in self.dated[m]]
        self.hr = Scene([hr], in_bands["hr"]) if hr else None
        self.src = {m: [_open(p, in_bands[m], m) for _, p in files] for m, files in self.dated.items()}
        ref = self.hr.ds[0] if self.hr else self.src[self.keys[0]][0]
        self.crs = ref.crs
        self.window = self._overlap(ref)
        self.transform = ref.window_transform(self.window)
        self.height, self.width = int(self.window.height), int(self.window.width)
        res = abs(ref.transform.a)
        self.k = {m: 1 if ds[0] is ref else _factor(ds[0], self.crs, res) for m, ds in self.src.items()}
        self.vrt = {m: [self._warp(d, self.k[m]) for d in ds] for m, ds in self.src.items()}
        self.in_bands = in_bands
        self.clouds = {
            m: [CloudMask.of(p, d, in_bands[m], lambda s, r, k=self.k[m]: self._warp(s, k, r))
                for (_, p), d in zip(self.dated[m], self.src[m])]
            for m in self.src
        }  # fmt: skip
        self.days = {m: to_days([d for d, _ in files]).numpy() for m, files in self.dated.items()}

    @property
    def tags(self) -> dict[str, str]:
        """The dates used, per stack (written into the output's metadata)."""
        return {f"{m}_dates": ",".join(d.isoformat() for d, _ in files) for m, files in self.dated.items()}

    def _overlap(self, ref: Any) -> Window:
        """The window of ``ref``'s grid, in whole pixels, where every input file has pixels."""
        left, bottom, right, top = ref.bounds
        for d in [d for group in self.src.values() for d in group]:
            b = transform_bounds(d.crs, ref.crs, *d.bounds)
            left, bottom, right, top = max(left, b[0]), max(bottom, b[1]), min(right, b[2]), min(top, b[3])
        win = from_bounds(left, bottom, right, top, ref.transform) if left < right and bottom < top else None
        if win is not None:
            c0, r0 = math.ceil(win.col_off - 1e-6), math.ceil(win.row_off - 1e-6)
            c1 = math.floor(win.col_off + win.width + 1e-6)
            r1 = math.floor(win.row_off + win.height + 1e-6)
            if c1 > c0 and r1 > r0:
                return Window(c0, r0, c1 - c0, r1 - r0)
        names = ", ".join(str(p) for p in self.paths)
        raise ValueError(
            f"the inputs do not overlap ({names}): every modality and date must cover a common area; "
            "check their CRSs and extents (`skysense data inspect FILE`)"
        )

    def _warp(self, ds: Any, k: int, resampling: Resampling = Resampling.bilinear) -> WarpedVRT:
        """``ds`` on the reference window's grid coarsened ``k`` times, with an alpha band (0 = no data)."""
        return WarpedVRT(
            ds, crs=self.crs, transform=self.transform @ Affine.scale(k), width=math.ceil(self.width / k),
            height=math.ceil(self.height / k), resampling=resampling, add_alpha=True,
        )  # fmt: skip

    def _series(self, m: str, row: int, col: int, size: int) -> tuple[np.ndarray, ...]:
        """(T, C, n, n) float32, nodata (T, n, n) and cloud (T, n, n) of stack ``m`` at the tile,
        ``n = size / k``. Nodata is 0; cloudy pixels keep their values (see the module doc)."""
        k = self.k[m]
        n, r, c = size // k, row // k, col // k
        bands = list(range(1, self.in_bands[m] + 1))  # a mask band comes after them
        xs, bad, cloud = [], [], []
        for v, mask in zip(self.vrt[m], self.clouds[m]):
            h, w = min(n, v.height - r), min(n, v.width - c)
            win = Window(c, r, w, h)
            raw = v.read([*bands, v.count], window=win).astype(np.float32)  # bands, then alpha
            x = np.zeros((len(bands), n, n), np.float32)
            inv = np.ones((n, n), dtype=bool)
            inv[:h, :w] = (raw[-1] == 0) | np.isnan(raw[:-1]).any(0)
            x[:, :h, :w] = np.where(inv[:h, :w], 0.0, raw[:-1])
            cl = np.zeros((n, n), dtype=bool)
            if mask is not None:
                cl[:h, :w] = mask.read(win)
            xs.append(x)
            bad.append(inv)
            cloud.append(cl)
        return np.stack(xs), np.stack(bad), np.stack(cloud)

    def tile(self, row: int, col: int, size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The sample of the tile at (``row``, ``col``) of the output grid: ``hr`` (C, size, size) and
        ``s2``/``s1`` (T, C, n, n) with ``*_invalid`` (nodata), ``*_cloud`` and ``*_dates``; and the
        invalid pixels: the hr image's, and those where a stack has no clear date."""
        out: dict[str, np.ndarray] = {}
        invalid = np.zeros((size, size), dtype=bool)
        if self.hr is not None:
            x, inv = self.hr.read(0, row + int(self.window.row_off), col + int(self.window.col_off), size)
            inv[max(0, self.height - row) :] = True  # beyond the common window
            inv[:, max(0, self.width - col) :] = True
            out["hr"], out["hr_invalid"] = np.where(inv, 0.0, x).astype(np.float32), inv
            invalid |= inv
        for m in self.vrt:
            out[m], out[f"{m}_invalid"], out[f"{m}_cloud"] = self._series(m, row, col, size)
            out[f"{m}_dates"] = self.days[m]
            none_clear = (out[f"{m}_invalid"] | out[f"{m}_cloud"]).all(0)
            k = self.k[m]
            invalid |= none_clear.repeat(k, 0).repeat(k, 1)
        return out, invalid

    def km2(self, rows: int | None = None) -> float:
        return Scene.km2(self, rows)  # type: ignore[arg-type]

    def close(self) -> None:
        for masks in self.clouds.values():
            for mask in masks:
                if mask is not None:
                    mask.close()
        for vs in self.vrt.values():
            for v in vs:
                v.close()
        for ds in self.src.values():
            for d in ds:
                d.close()
        if self.hr is not None:
            self.hr.close()
