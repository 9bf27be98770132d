"""Pre-training dataset reading ``root/{hr,s2,s1}/*.tif`` (real rasters) into geo-aligned multi-modal samples.

Each file of a modality folder is one acquisition (date from ``dates``, the file's tags or its
name). Samples are square tiles in map coordinates of the reference CRS (that of the first file
of ``ref``, default ``s2``): the area covered by every file of every chosen modality is cut into
non-overlapping tiles of ``size`` pixels of the reference modality; every modality is read over
the same bounds at its own native pixel size (``sizes`` overrides), reprojected on the fly
(``WarpedVRT``) where its CRS differs. So a 64-px 10 m ``s2`` tile (640 m) pairs with a 256-px
2.5 m ``hr`` tile and a 64-px ``s1`` tile over exactly the same ground.

Sample: ``hr`` (C, H, W) + ``hr_dates`` (1,) (the latest hr file), ``s2``/``s1`` (T, C, h, w) +
dates (T,) sorted by date, ``*_invalid``, ``lat``/``lon`` of the tile centre; any subset of
modalities via ``modalities``. Sample id: ``<row>_<col>`` of the tile.

Cells a reprojected file does not cover are invalid. A tile with no valid pixel in any modality is
left out when the dataset is built (``skip_empty``, default), counted in ``skipped_empty`` with a
warning naming the first few. Two files of one modality with the same date are warned about.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling as GDALResampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds

from skysense.bands import S2_BANDS
from skysense.config import MODALITIES as MODALITY_ORDER
from skysense.data.checks import check_dn_dtype, check_real
from skysense.data.datasets import GeoDataset, Sample, put_lonlat
from skysense.data.readers import (
    RASTER_SUFFIXES,
    Raster,
    Resampling,
    as_s1_db,
    crs_string,
    date_of_file,
    open_raster,
    parse_date,
    select_s2_bands,
    warn_duplicate_dates,
)
from skysense.dates import to_days

Bounds = tuple[float, float, float, float]  # left, bottom, right, top


def _intersect(a: Bounds, b: Bounds) -> Bounds:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


class PretrainDataset(GeoDataset):
    """Geo-aligned ``hr``/``s2``/``s1`` tiles from ``root/<modality>/*.tif`` (see module doc).

    ``modalities``: subset to use (default: every modality folder found). ``size``: tile side in
    pixels of ``ref``. ``dates``: ``{file name: date}`` for files whose date is neither in their tags
    nor in their name (a ``root/dates.json`` with that mapping is read too). ``resampling``:
    ``bilinear`` or ``nearest`` (GDAL, used when a modality is read at another resolution or CRS).
    """

    layout = "pretrain"
    expected = "modality folders hr/, s2/, s1/ of georeferenced rasters"

    def __init__(
        self,
        root: str | Path,
        modalities: Sequence[str] | None = None,
        size: int = 64,
        ref: str | None = None,
        sizes: dict[str, int] | None = None,
        dates: dict[str, str | _dt.date] | None = None,
        resampling: Resampling = "bilinear",
        s2_bands: Sequence[str] = S2_BANDS,
        s1_units: str = "auto",
        skip_empty: bool = True,
        **kw: Any,
    ) -> None:
        self.skip_empty, self.skipped_empty = skip_empty, 0
        self.want, self.size, self.ref_name, self.user_sizes = modalities, size, ref, dict(sizes or {})
        self.user_dates = {k: v for k, v in (dates or {}).items()}
        self.resampling, self.s2_bands, self.s1_units = resampling, tuple(s2_bands), s1_units
        super().__init__(root, **kw)

    # -- scanning: files, dates, common area, tiles

    def _date(self, f: Path) -> _dt.date:
        if f.name in self.user_dates:
            d = self.user_dates[f.name]
            return d if isinstance(d, _dt.date) else parse_date(str(d), f"dates[{f.name!r}]")
        return date_of_file(f)

    def _scan(self) -> list[dict[str, Any]]:
        sidecar = self.root / "dates.json"
        if sidecar.exists():  # {file name: date} for files whose names and tags carry no date
            try:
                found = json.loads(sidecar.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{sidecar}: not valid JSON: {e}") from None
            if not isinstance(found, dict):
                raise ValueError(f"{sidecar}: expected an object {{file name: date}}")
            self.user_dates = {**found, **self.user_dates}
        dirs = {
            d.name.lower(): d for d in self.root.iterdir() if d.is_dir() and d.name.lower() in MODALITY_ORDER
        }
        mods = [m for m in MODALITY_ORDER if m in (self.want or dirs)]
        missing = [m for m in mods if m not in dirs]
        if missing or not mods:
            raise FileNotFoundError(
                f"{self.root}: no modality folder(s) {missing or list(MODALITY_ORDER)} ({self.expected})"
            )
        self.files: dict[str, list[tuple[Path, _dt.date]]] = {}
        for m in mods:
            files = sorted(f for f in dirs[m].iterdir() if f.suffix.lower() in RASTER_SUFFIXES)
            if not files:
                raise ValueError(f"{dirs[m]}: no raster files for modality {m}")
            dated = sorted(((f, self._date(f)) for f in files), key=lambda x: x[1])
            self.files[m] = dated[-1:] if m == "hr" else dated  # hr: one image, the latest
            warn_duplicate_dates([(f.name, d) for f, d in self.files[m]], str(dirs[m]))
        self.modalities = mods
        self.ref = self.ref_name or ("s2" if "s2" in mods else mods[0])
        if self.ref not in mods:
            raise ValueError(f"reference modality {self.ref!r} not among {mods}")
        with open_raster(self.files[self.ref][0][0]) as ds:
            if ds.crs is None or ds.transform.is_identity:
                raise ValueError(
                    f"{self.files[self.ref][0][0]}: not georeferenced; pre-training tiles need a CRS"
                )
            self.crs = ds.crs
            ref_res = abs(ds.transform.a)
        area: Bounds | None = None
        self.native_res: dict[str, float] = {}
        for m in mods:
            for f, _ in self.files[m]:
                with open_raster(f) as ds:
                    if ds.crs is None:
                        raise ValueError(
                            f"{f}: no CRS; cannot align it with {self.files[self.ref][0][0].name}"
                        )
                    b = transform_bounds(ds.crs, self.crs, *ds.bounds)
                    if m not in self.native_res:  # pixel size in reference-CRS units
                        self.native_res[m] = (b[2] - b[0]) / ds.width
                new = b if area is None else _intersect(area, b)
                if new[0] >= new[2] or new[1] >= new[3]:
                    raise ValueError(
                        f"{f}: its extent {tuple(round(v, 6) for v in b)} does not overlap the other files"
                    )
                area = new
        assert area is not None
        self.area = area
        self.tile = self.size * ref_res  # tile side in map units
        cols = int((area[2] - area[0]) / self.tile + 1e-6)  # tolerance: 512 px / 64 px is 8, not 7.999999
        rows = int((area[3] - area[1]) / self.tile + 1e-6)
        if rows == 0 or cols == 0:
            raise ValueError(
                f"{self.root}: the area all files cover ({area[2] - area[0]:.6g} x {area[3] - area[1]:.6g}) "
                f"is smaller than one {self.size}-px tile of {self.ref} ({self.tile:.6g} map units)"
            )
        self.pixels = {
            m: self.user_sizes.get(m) or max(1, round(self.tile / self.native_res[m])) for m in mods
        }
        self.pixels[self.ref] = self.user_sizes.get(self.ref, self.size)
        tiles = [{"id": f"{r}_{c}", "row": r, "col": c} for r in range(rows) for c in range(cols)]
        return self._drop_empty(tiles) if self.skip_empty else tiles

    def _has_valid(self, rec: dict[str, Any]) -> bool:
        """Whether any file of any modality has a valid pixel in the tile (the reference first)."""
        bounds = self.bounds_of(rec)
        for m in sorted(self.modalities, key=lambda m: m != self.ref):
            for f, _ in self.files[m]:
                if not self._read(f, bounds, self.pixels[m]).invalid.all():
                    return True
        return False

    def _drop_empty(self, tiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = [t for t in tiles if self._has_valid(t)]
        self.skipped_empty = len(tiles) - len(keep)
        if self.skipped_empty:
            gone = [t["id"] for t in tiles if t not in keep]
            warnings.warn(
                f"{self.root}: {self.skipped_empty} of {len(tiles)} tiles have no valid pixel in any "
                f"modality and are skipped ({', '.join(gone[:5])}{' ...' * (len(gone) > 5)})",
                stacklevel=4,
            )
        if tiles and not keep:
            raise ValueError(f"{self.root}: every one of the {len(tiles)} tiles is nodata/NaN in every file")
        return keep

    # -- loading one tile

    def bounds_of(self, rec: dict[str, Any]) -> Bounds:
        left = self.area[0] + rec["col"] * self.tile
        top = self.area[3] - rec["row"] * self.tile
        return (left, top - self.tile, left + self.tile, top)

    def _read(self, f: Path, bounds: Bounds, n: int) -> Raster:
        """Pixels of ``f`` over ``bounds`` (reference CRS) as (C, n, n), nodata/NaN flagged."""
        rs = GDALResampling.bilinear if self.resampling == "bilinear" else GDALResampling.nearest
        with open_raster(f) as src:
            check_real(src.dtypes[0], f)
            nodata = src.nodata
            # without a nodata value, an alpha band marks the cells the reprojected file does not cover
            alpha = {"add_alpha": True} if nodata is None else {}
            ds: Any = src if src.crs == self.crs else WarpedVRT(src, crs=self.crs, resampling=rs, **alpha)
            outside = None
            try:
                win = from_bounds(*bounds, transform=ds.transform)
                bands = list(range(1, src.count + 1))
                data = ds.read(bands, window=win, out_shape=(src.count, n, n), resampling=rs, boundless=False)
                if alpha and ds is not src:
                    last = src.count + 1  # the alpha band
                    mask = ds.read(last, window=win, out_shape=(n, n), resampling=GDALResampling.nearest)
                    outside = mask == 0
            except rasterio.errors.RasterioIOError as e:
                raise ValueError(f"{f}: cannot read pixels (truncated or corrupt file?): {e}") from None
            finally:
                if ds is not src:
                    ds.close()
            descriptions = [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]
            dtype = src.dtypes[0]
        invalid = np.isnan(data).any(axis=0) if data.dtype.kind == "f" else np.zeros((n, n), bool)
        if nodata is not None and not np.isnan(nodata):
            invalid |= (data == nodata).any(axis=0)
        if outside is not None:
            invalid |= outside
        out = data.astype(np.float32)
        out[:, invalid] = 0.0
        res = (bounds[2] - bounds[0]) / n
        meta = {
            "path": str(f),
            "crs": crs_string(self.crs),
            "transform": (res, 0.0, bounds[0], 0.0, -res, bounds[3]),
            "nodata": None if nodata is None else float(nodata),
            "dtype": dtype,
            "bands": descriptions,
            "width": n,
            "height": n,
        }
        return Raster(out, invalid, meta)

    def _as_modality(self, m: str, r: Raster) -> Raster:
        if m == "s2":
            return select_s2_bands(r, self.s2_bands)
        if m == "s1":
            return as_s1_db(r, self.s1_units)  # type: ignore[arg-type]
        check_dn_dtype(r.meta["dtype"], r.meta["path"])
        if r.data.shape[0] not in (3, 4):
            raise ValueError(
                f"{r.meta['path']}: {r.data.shape[0]} band(s); hr must be RGB (3) or RGB-NIR (4)"
            )
        return Raster(
            r.data, r.invalid, dict(r.meta, bands=["R", "G", "B", "NIR"][: r.data.shape[0]], units="DN")
        )

    def _load(self, rec: dict[str, Any]) -> Sample:
        bounds = self.bounds_of(rec)
        sample: Sample = {"meta": {"bounds": bounds}}
        for m in self.modalities:
            rasters = [self._as_modality(m, self._read(f, bounds, self.pixels[m])) for f, _ in self.files[m]]
            days = to_days([d for _, d in self.files[m]])
            data = torch.from_numpy(np.stack([r.data for r in rasters]))  # (T, C, h, w)
            invalid = torch.from_numpy(np.stack([r.invalid for r in rasters]))  # (T, h, w)
            sample[m], sample[f"{m}_invalid"], sample[f"{m}_dates"] = data, invalid, days
            if m == "hr":
                sample[m], sample[f"{m}_invalid"] = data[0], invalid[0]
            meta = dict(rasters[0].meta, path=[r.meta["path"] for r in rasters])
            sample["meta"][m] = meta
        cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        xs, ys = warp_transform(CRS.from_user_input(self.crs), "EPSG:4326", [cx], [cy])
        put_lonlat(sample, (float(xs[0]), float(ys[0])))
        return sample
