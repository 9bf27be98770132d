"""Readers of GeoTIFF/PNG/JPEG rasters, Sentinel-2 band sets, Sentinel-1 (dB/linear), dated stacks, .npy.

Every reader returns a :class:`Raster`: ``data`` float32 (C, H, W) in the file's physical units with
invalid pixels set to 0, ``invalid`` bool (H, W) (True = nodata, NaN or transparent alpha) and a
``meta`` dict (path, crs, transform, nodata, bands, dtype, units). Errors name the file and say
what is wrong; nothing reaches torch unchecked.

Resampling (Sentinel-2 20 m and 60 m bands onto the 10 m grid, :func:`resample`): ``bilinear`` by
default, on pixel centres (``torch.nn.functional.interpolate``, ``align_corners=False``, edge pixels
clamped), so a 2x upsampled 20 m pixel keeps its value at its own centre and no value leaves the
range of its neighbours; ``nearest`` replicates each source pixel (exact 2x2 / 6x6 blocks). A target
pixel is invalid where any source pixel it draws on is invalid.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.errors
import torch
import torch.nn.functional as F
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from skysense.bands import S2_ALL_BANDS, S2_BANDS, S2_L2A_BANDS, s1_band_name, s2_band_name
from skysense.data.checks import check_dn_dtype, check_real, check_shape, file_notes, s1_units
from skysense.data.safe import (
    pick_native,
    resolution_of,
    s2_add_offsets,
    s2_image_folders,
    s2_product_date,
    safe_root,
)
from skysense.dates import from_days, to_days

# Images without georeference (JPEG/PNG scenes, tiles) are expected: the readers record a missing CRS or
# transform in meta and check them themselves. A process-wide filter, because warnings.catch_warnings is not
# thread-safe and the scene loaders decode on several threads.
warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)

Resampling = Literal["bilinear", "nearest"]
RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2")


@dataclass
class Raster:
    """Pixels of one file (or band set): ``data`` (C, H, W) float32, ``invalid`` (H, W) bool, ``meta``."""

    data: np.ndarray  # (C, H, W) float32, 0 where invalid
    invalid: np.ndarray  # (H, W) bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[-2]), int(self.data.shape[-1])


def crs_string(crs: Any) -> str | None:
    """``EPSG:xxxx`` where the CRS has an EPSG code, else its WKT; ``None`` for no CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


@contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """``rasterio.open`` with errors that name the file (missing, unreadable, not a raster)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise ValueError(
            f"{path}: cannot open as a raster (unreadable, truncated or not an image): {e}"
        ) from None
    try:
        yield ds
    finally:
        ds.close()


def raster_meta(ds: Any, path: str | Path, window: Window | None = None) -> dict[str, Any]:
    """Metadata of an open dataset (of ``window`` where given): crs, transform 6-tuple, nodata, bands..."""
    transform = ds.window_transform(window) if window is not None else ds.transform
    georef = not transform.is_identity
    return {
        "path": str(path),
        "crs": crs_string(ds.crs),
        "transform": tuple(float(v) for v in transform[:6]) if georef else None,
        "nodata": None if ds.nodata is None else float(ds.nodata),
        "dtype": ds.dtypes[0],
        "bands": [d if d else f"band{i + 1}" for i, d in enumerate(ds.descriptions)],
        "width": int(window.width) if window is not None else ds.width,
        "height": int(window.height) if window is not None else ds.height,
        "res": tuple(float(r) for r in ds.res) if georef else None,
    }


def _invalid_of(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(C, H, W) -> (H, W) bool: True where any band is NaN or equals ``nodata``."""
    invalid = np.zeros(data.shape[-2:], dtype=bool)
    if data.dtype.kind == "f":
        invalid |= np.isnan(data).any(axis=0)
    if nodata is not None and not np.isnan(nodata):
        invalid |= (data == nodata).any(axis=0)
    return invalid


def read_raster(
    path: str | Path,
    bands: Sequence[int] | None = None,
    window: Window | tuple[int, int, int, int] | None = None,
    nodata: float | None = None,
    allow_empty: bool = False,
) -> Raster:
    """Read a raster file (GeoTIFF, PNG, JPEG...) into a :class:`Raster`.

    ``bands``: 1-based band indexes (default: all bands except an alpha band). ``window``:
    ``(col_off, row_off, width, height)`` in pixels or a rasterio ``Window``. ``nodata`` overrides
    the file's nodata value. A transparent alpha band (value 0) marks pixels invalid. A band GDAL
    calls alpha but holding values other than 0 and the dtype's maximum is data, not alpha (GDAL
    tags the 4th band of every 4-band uint8 GeoTIFF as alpha, NIR included). Raises ``ValueError``
    where every pixel is invalid unless ``allow_empty`` and for complex pixels; ``meta["notes"]``
    says where the content is not the format its suffix names or a transform comes without a CRS
    (:mod:`skysense.data.checks`; ``skysense data inspect`` lists them).
    """
    win = Window(*window) if isinstance(window, tuple) else window
    with open_raster(path) as ds:
        check_real(ds.dtypes[0], path)
        bad = [i for i in (bands or []) if not 1 <= i <= ds.count]
        if bad:
            raise ValueError(f"{path}: band index {bad} out of range, the file has {ds.count} band(s)")
        if win is not None and (
            win.col_off < 0
            or win.row_off < 0
            or win.col_off + win.width > ds.width
            or win.row_off + win.height > ds.height
        ):
            raise ValueError(f"{path}: window {win} outside the raster ({ds.width} x {ds.height} pixels)")
        try:
            alpha = [i + 1 for i, c in enumerate(ds.colorinterp) if c == ColorInterp.alpha]
            alpha_px = ds.read(alpha[0], window=win) if alpha else None
            if alpha_px is not None and alpha_px.dtype.kind in "ui":
                full = np.iinfo(alpha_px.dtype).max
                if not np.isin(alpha_px, (0, full)).all():  # not a mask: a data band (e.g. NIR)
                    alpha, alpha_px = [], None
            indexes = (
                list(bands) if bands is not None else [i for i in range(1, ds.count + 1) if i not in alpha]
            )
            data = ds.read(indexes, window=win)  # (C, H, W) file dtype
        except rasterio.errors.RasterioIOError as e:
            raise ValueError(f"{path}: cannot read pixels (truncated or corrupt file?): {e}") from None
        meta = raster_meta(ds, path, win)
        meta["bands"] = [meta["bands"][i - 1] for i in indexes]
        meta["notes"] = file_notes(
            path, Path(path).suffix, ds.driver, ds.crs is not None, meta["transform"] is not None
        )
    nod = nodata if nodata is not None else meta["nodata"]
    meta["nodata"] = nod
    invalid = _invalid_of(data, nod)
    if alpha_px is not None:
        invalid |= alpha_px == 0
    if invalid.all() and not allow_empty:
        raise ValueError(f"{path}: every pixel is nodata/NaN (nodata={nod}); nothing valid to read")
    out = data.astype(np.float32)
    out[:, invalid] = 0.0
    return Raster(out, invalid, meta)


def resample(
    data: np.ndarray, invalid: np.ndarray, size: tuple[int, int], mode: Resampling = "bilinear"
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``data`` (C, H, W) and ``invalid`` (H, W) to ``size`` (H', W') (see module doc).

    Invalid source pixels (0 in ``data``) taint every output pixel they contribute to.
    """
    if tuple(data.shape[-2:]) == tuple(size):
        return data, invalid
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]  # (1, C, H, W)
    m = torch.from_numpy(invalid.astype(np.float32))[None, None]  # (1, 1, H, W)
    if mode == "nearest":
        y = F.interpolate(x, size=size, mode="nearest-exact")
        mi = F.interpolate(m, size=size, mode="nearest-exact") > 0
    elif mode == "bilinear":
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        mi = F.interpolate(m, size=size, mode="bilinear", align_corners=False) > 0
    else:
        raise ValueError(f"unknown resampling {mode!r}: use 'bilinear' or 'nearest'")
    out, inv = y[0].numpy(), mi[0, 0].numpy()
    out[:, inv] = 0.0
    return out, inv


# ----------------------------------------------------------------------------- Sentinel-2 band sets

_BAND_FILE_RE = re.compile(r"[_\-.](B\d{1,2}A?)(?:_(\d{2})m)?\.(?:tif|tiff|jp2)$", re.IGNORECASE)


def find_s2_band_files(folder: str | Path) -> dict[str, Path]:
    """A folder's single-band files by canonical band name (``*_B02.tif`` -> ``B2``, ``*_B8A.jp2``...).

    ``folder`` may also be an ESA SAFE product, granule or ``IMG_DATA`` folder (L1C ``*_B02.jp2``;
    L2A ``R10m|R20m|R60m/*_B02_10m.jp2``): each band is taken at its native resolution, else the
    finest there is (see :mod:`skysense.data.safe`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of Sentinel-2 band files")
    found: dict[str, list[tuple[int | None, Path]]] = {}
    for d in s2_image_folders(folder):
        for f in sorted(d.iterdir()):
            m = _BAND_FILE_RE.search(f.name)
            if m and f.is_file():
                found.setdefault(s2_band_name(m.group(1)), []).append((resolution_of(f, m.group(2)), f))
    return {name: pick_native(name, cands) for name, cands in found.items()}


def check_same_grid(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Raise where two rasters' CRS or extents differ (extent to 1% of the coarser pixel)."""
    if a["crs"] != b["crs"]:
        raise ValueError(f"CRS mismatch in {what}: {a['path']} has {a['crs']}, {b['path']} has {b['crs']}")
    ba, bb = raster_bounds(a), raster_bounds(b)
    tol = 0.01 * max(abs(a["transform"][0]), abs(b["transform"][0]))
    if any(abs(x - y) > tol for x, y in zip(ba, bb)):
        raise ValueError(f"extent mismatch in {what}: {a['path']} covers {ba}, {b['path']} covers {bb}")


def raster_bounds(meta: dict[str, Any]) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) in map units from a meta dict's transform and size (north-up)."""
    if meta.get("transform") is None:
        raise ValueError(f"{meta.get('path')}: not georeferenced (no transform)")
    a, _, c, _, e, f = meta["transform"]
    right, bottom = c + a * meta["width"], f + e * meta["height"]
    return (min(c, right), min(f, bottom), max(c, right), max(f, bottom))


def read_s2_bandset(
    files: str | Path | dict[str, Path],
    bands: Sequence[str] = S2_BANDS,
    resampling: Resampling = "bilinear",
    allow_empty: bool = False,
) -> Raster:
    """Stack single-band Sentinel-2 files of one date on the grid of the finest band: (len(bands), H, W).

    ``files``: a folder of ``*_B02.tif``... files, a SAFE product/granule folder (see
    :func:`find_s2_band_files`) or ``{band name: path}``; ``bands`` in the output order (aliases such
    as ``B02``/``B08A`` accepted). All files must share CRS and extent. Inside a SAFE product 0 is
    nodata, the product's add-offsets are added (``meta["add_offset"]``) and the sensing date goes
    to ``meta["date"]`` (ISO); see :mod:`skysense.data.safe`.
    """
    where = str(files) if not isinstance(files, dict) else "band set"
    by_name = (
        find_s2_band_files(files)
        if not isinstance(files, dict)
        else {s2_band_name(k): Path(v) for k, v in files.items()}
    )
    want = [s2_band_name(b) for b in bands]
    missing = [b for b in want if b not in by_name]
    if missing:
        raise ValueError(
            f"{where}: missing Sentinel-2 band(s) {', '.join(missing)} (found: {', '.join(sorted(by_name))})"
        )
    folder = None if isinstance(files, dict) else Path(files)
    in_safe = folder is not None and safe_root(folder.resolve()) is not None
    rasters = [read_raster(by_name[b], allow_empty=True, nodata=0.0 if in_safe else None) for b in want]
    offsets = s2_add_offsets(folder) if folder is not None and in_safe else {}
    for b, r in zip(want, rasters):
        check_dn_dtype(r.meta["dtype"], r.meta["path"], "Sentinel-2 reflectance DN")
        r.data[:, ~r.invalid] += offsets.get(b, 0.0)  # baseline 04.00 on: DN of the earlier products
    ref = min(rasters, key=lambda r: abs(r.meta["transform"][0]) if r.meta["transform"] else 0.0)
    for r in rasters:
        if r.meta["transform"] is None:
            raise ValueError(f"{r.meta['path']}: Sentinel-2 band file without georeference")
        check_same_grid(ref.meta, r.meta, where)
    layers, invalid = [], np.zeros(ref.shape, dtype=bool)
    for r in rasters:
        d, inv = resample(r.data, r.invalid, ref.shape, resampling)
        layers.append(d)
        invalid |= inv
    data = np.concatenate(layers, axis=0)  # (C, H, W)
    data[:, invalid] = 0.0
    if invalid.all() and not allow_empty:
        raise ValueError(f"{where}: every pixel is nodata/NaN in at least one band")
    check_shape(*ref.shape, where)
    meta = dict(ref.meta)
    meta.update(
        path=[r.meta["path"] for r in rasters],
        bands=want,
        dtype=rasters[0].meta["dtype"],
        resampling=resampling,
        units="reflectance DN",
    )
    when = s2_product_date(folder) if folder is not None and in_safe else None
    if when is not None:  # a SAFE product: its sensing date
        meta["date"] = when.isoformat()
    if offsets:
        meta["add_offset"] = {b: offsets[b] for b in want if b in offsets}
    return Raster(data, invalid, meta)


def select_s2_bands(raster: Raster, bands: Sequence[str] = S2_BANDS) -> Raster:
    """Pick ``bands`` (in that order) from a multi-band Sentinel-2 raster.

    Band names come from the file's band descriptions; without them a 13-band file is taken as L1C
    order (B1..B12 with B10), 12 bands as L2A order (no B10), 10 bands as the spec's order.
    """
    names = raster.meta.get("bands", [])
    try:
        canon = [s2_band_name(n) for n in names]
    except ValueError:
        n = raster.data.shape[0]
        order = {13: S2_ALL_BANDS, 12: S2_L2A_BANDS, 10: S2_BANDS}.get(n)
        if order is None:
            raise ValueError(
                f"{raster.meta.get('path')}: {n} bands without Sentinel-2 band names in the file; "
                "expected band descriptions (B2, B3...) or 10, 12 or 13 bands in standard order"
            ) from None
        canon = list(order)
    want = [s2_band_name(b) for b in bands]
    missing = [b for b in want if b not in canon]
    if missing:
        raise ValueError(
            f"{raster.meta.get('path')}: missing Sentinel-2 band(s) {', '.join(missing)} (has {canon})"
        )
    idx = [canon.index(b) for b in want]
    check_dn_dtype(raster.meta.get("dtype", "float32"), raster.meta.get("path"), "Sentinel-2 reflectance DN")
    meta = dict(raster.meta, bands=want, units="reflectance DN")
    return Raster(raster.data[idx], raster.invalid, meta)


# ----------------------------------------------------------------------------- Sentinel-1


def linear_to_db(x: np.ndarray, invalid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backscatter (C, H, W) linear power -> dB (10 log10); values <= 0 become invalid."""
    bad = invalid | (x <= 0).any(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (10.0 * np.log10(np.where(x > 0, x, 1.0))).astype(np.float32)
    out[:, bad] = 0.0
    return out, bad


def as_s1_db(r: Raster, units: Literal["auto", "db", "linear"] = "auto") -> Raster:
    """A 2-band Sentinel-1 raster -> VV, VH in dB (bands ordered by their descriptions, else taken as VV, VH).

    ``units``: what the raster holds, checked against its values; ``auto`` takes non-negative data with
    a median under 1 as linear power and converts it (see :mod:`skysense.data.checks`).
    """
    where = r.meta.get("path")
    if r.data.shape[0] != 2:
        raise ValueError(f"{where}: Sentinel-1 data with {r.data.shape[0]} band(s), expected 2 (VV, VH)")
    try:
        names = [s1_band_name(n) for n in r.meta.get("bands", [])]
    except ValueError:
        names = ["VV", "VH"]
    if sorted(names) != ["VH", "VV"]:
        raise ValueError(f"{where}: expected bands VV and VH, found {names}")
    data, invalid = r.data[[names.index("VV"), names.index("VH")]], r.invalid
    units = s1_units(data[:, ~invalid].reshape(-1), units, where)
    if units == "linear":
        data, invalid = linear_to_db(data, invalid)
    return Raster(data, invalid, dict(r.meta, bands=["VV", "VH"], units="dB", source_units=units))


def read_s1(
    files: str | Path | Sequence[str | Path],
    units: Literal["auto", "db", "linear"] = "auto",
    allow_empty: bool = False,
) -> Raster:
    """Sentinel-1 VV, VH in dB from one 2-band file or ``[*_VV.tif, *_VH.tif]`` (see :func:`as_s1_db`)."""
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if len(paths) == 1:
        r = read_raster(paths[0], allow_empty=True)
    else:
        by_pol: dict[str, Raster] = {}
        for p in paths:
            stem = p.stem.upper()
            pol = "VV" if stem.endswith("VV") else "VH" if stem.endswith("VH") else None
            if pol is None:
                raise ValueError(
                    f"{p}: cannot tell the polarisation from the name (expected *_VV.tif or *_VH.tif)"
                )
            by_pol[pol] = read_raster(p, allow_empty=True)
        missing = [p for p in ("VV", "VH") if p not in by_pol]
        if missing:
            raise ValueError(f"{paths[0].parent}: missing Sentinel-1 band(s) {', '.join(missing)}")
        vv, vh = by_pol["VV"], by_pol["VH"]
        if vv.meta["transform"] is not None:
            check_same_grid(vv.meta, vh.meta, "Sentinel-1 VV/VH")
        if vv.shape != vh.shape:
            raise ValueError(f"{paths[0].parent}: VV and VH differ in size {vv.shape} vs {vh.shape}")
        invalid = vv.invalid | vh.invalid
        data = np.concatenate([vv.data, vh.data])
        data[:, invalid] = 0.0
        r = Raster(data, invalid, dict(vv.meta, path=[vv.meta["path"], vh.meta["path"]], bands=["VV", "VH"]))
    out = as_s1_db(r, units)
    check_shape(*out.shape, out.meta["path"])
    if out.invalid.all() and not allow_empty:
        raise ValueError(f"{out.meta['path']}: every pixel is nodata/NaN")
    return out


def read_image(path: str | Path, allow_empty: bool = False) -> Raster:
    """``hr`` image: RGB or RGB-NIR GeoTIFF/PNG/JPEG (an alpha band becomes ``invalid``), values as stored."""
    r = read_raster(path, allow_empty=allow_empty)
    check_dn_dtype(r.meta["dtype"], path)
    check_shape(*r.shape, path)
    c = r.data.shape[0]
    if c not in (3, 4):
        raise ValueError(f"{path}: {c} band(s); an hr image must be RGB (3) or RGB-NIR (4)")
    r.meta["bands"] = ["R", "G", "B", "NIR"][:c]
    r.meta["units"] = "DN"
    return r


# ----------------------------------------------------------------------------- dates and series

_DATE_RES = (
    re.compile(
        r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)"
    ),  # 20170617, 20170617T1133
    re.compile(
        r"(?<!\d)((?:19|20)\d{2})[-_/.:](0[1-9]|1[0-2])[-_/.:](0[1-9]|[12]\d|3[01])(?!\d)"
    ),  # 2017-06-17
)
# Tags naming the acquisition; TIFFTAG_DATETIME is the file's creation time, trusted only after the name.
_DATE_TAGS = ("ACQUISITION_DATE", "ACQUISITION_TIME", "SENSING_TIME", "DATE_ACQUIRED", "DATE", "DATETIME")


def parse_date(text: str, source: str = "") -> _dt.date:
    """First calendar date in ``text`` (``20170617``, ``2017-06-17``, ``2019/09/17``, ``2017:06:17 11:33``).

    Raises ``ValueError`` naming ``source`` where there is none or it is no real date.
    """
    for rx in _DATE_RES:
        for m in rx.finditer(text):
            try:
                return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:
                continue
    raise ValueError(f"{source or text!r}: no parsable date (expected YYYYMMDD or YYYY-MM-DD) in {text!r}")


def date_of_file(path: str | Path) -> _dt.date:
    """Acquisition date of a raster: acquisition tags (ACQUISITION_DATE...), its name, or TIFFTAG_DATETIME."""
    path = Path(path)
    with open_raster(path) as ds:
        tags = {k.upper(): v for k, v in ds.tags().items()}
    for key in _DATE_TAGS:
        if key in tags:
            return parse_date(tags[key], f"{path} tag {key}")
    try:
        return parse_date(path.name, str(path))
    except ValueError:
        if "TIFFTAG_DATETIME" in tags:
            return parse_date(tags["TIFFTAG_DATETIME"], f"{path} tag TIFFTAG_DATETIME")
        raise ValueError(
            f"{path}: no acquisition date in its name (YYYYMMDD or YYYY-MM-DD) or tags (ACQUISITION_DATE...)"
        ) from None


def warn_duplicate_dates(dated: Sequence[tuple[str, _dt.date]], where: str) -> None:
    """Warn where two files ``(name, date)`` share an acquisition date (naming them): one place is
    seldom imaged twice a day, so it is most often a copy or a wrong date."""
    by_date: dict[_dt.date, list[str]] = {}
    for name, d in dated:
        by_date.setdefault(d, []).append(name)
    dups = {d: names for d, names in by_date.items() if len(names) > 1}
    if dups:
        text = "; ".join(f"{d.isoformat()}: {', '.join(names)}" for d, names in sorted(dups.items()))
        warnings.warn(f"{where}: files with the same acquisition date ({text})", stacklevel=3)


def read_series(
    paths: Sequence[str | Path],
    dates: Sequence[str | _dt.date] | None = None,
    reader: Any = read_raster,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, list[dict[str, Any]]]:
    """A stack of dated files of one place -> data (T, C, H, W), invalid (T, H, W), days (T,), metas.

    Dates come from ``dates`` or each file's tags/name; steps are sorted by date (a date given twice
    is warned about, naming the files). All files must share band count, size, CRS and transform.
    """
    if not paths:
        raise ValueError("empty time series: no files given")
    if dates is not None and len(dates) != len(paths):
        raise ValueError(f"{len(paths)} files but {len(dates)} dates")
    when = list(dates) if dates is not None else [date_of_file(p) for p in paths]
    days = to_days(when)
    warn_duplicate_dates([(Path(p).name, d) for p, d in zip(paths, from_days(days))], "time series")
    order = torch.argsort(days, stable=True).tolist()
    rasters = [reader(paths[i], allow_empty=True) for i in order]
    ref = rasters[0]
    for r in rasters[1:]:
        if r.data.shape != ref.data.shape:
            raise ValueError(
                f"{r.meta['path']}: shape {r.data.shape} differs from {ref.meta['path']} {ref.data.shape}"
            )
        if r.meta["crs"] != ref.meta["crs"] or r.meta["transform"] != ref.meta["transform"]:
            raise ValueError(f"{r.meta['path']}: CRS/transform differ from {ref.meta['path']} (not one grid)")
    data = np.stack([r.data for r in rasters])  # (T, C, H, W)
    invalid = np.stack([r.invalid for r in rasters])  # (T, H, W)
    if invalid.all():
        raise ValueError(f"{ref.meta['path']} ...: every pixel of every date is nodata/NaN")
    return data, invalid, days[order], [r.meta for r in rasters]


def read_timestamps(path: str | Path) -> torch.Tensor:
    """JSON list of ISO timestamps (eo-learn ``timestamps.json``) or text, one per line -> days (T,)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: timestamps file not found")
    text = path.read_text()
    try:
        items = json.loads(text) if path.suffix == ".json" else [t for t in text.split() if t]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty list of dates")
    return to_days([parse_date(str(t), f"{path} entry {i}") for i, t in enumerate(items)])


def load_npy_series(
    npy: str | Path,
    timestamps: str | Path | Sequence[str | _dt.date],
    layout: str = "THWC",
    window: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A ``.npy`` time series plus its dates -> data (T, C, H, W) float32, invalid (T, H, W), days (T,).

    ``layout``: axis order in the file (eo-learn stores ``THWC``). ``window``: ``(row, col, height,
    width)`` read from a memory map, so tiles of a large file cost only their own pixels.
    """
    npy = Path(npy)
    if not npy.exists():
        raise FileNotFoundError(f"{npy}: file not found")
    try:
        arr = np.load(npy, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{npy}: cannot read as .npy (truncated or not a numpy file?): {e}") from None
    if arr.ndim != 4 or sorted(layout) != sorted("TCHW"):
        raise ValueError(f"{npy}: expected a 4-d array in layout {layout}, got shape {arr.shape}")
    arr = np.transpose(arr, [layout.index(a) for a in "TCHW"])
    if window is not None:
        r, c, h, w = window
        arr = arr[..., r : r + h, c : c + w]
    arr = np.array(arr, dtype=np.float32)  # (T, C, H, W), read into memory
    days = (
        read_timestamps(timestamps)
        if isinstance(timestamps, (str, Path))
        else to_days([parse_date(str(t)) if isinstance(t, str) else t for t in timestamps])
    )
    if len(days) != arr.shape[0]:
        raise ValueError(f"{npy}: {arr.shape[0]} time steps but {len(days)} dates")
    invalid = np.isnan(arr).any(axis=1)  # (T, H, W)
    arr[np.broadcast_to(invalid[:, None], arr.shape)] = 0.0
    return arr, invalid, days
