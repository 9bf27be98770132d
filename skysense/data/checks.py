"""Checks of pixel values against what they are declared to be, shared by the readers and ``data inspect``.

Sentinel-1 units: dB backscatter of land and water is mostly negative (medians about -25..-5 dB);
linear power is non-negative with medians about 0.01..0.3. So a non-negative crop with a median
under 1 is taken as linear power, and one with negative values as dB; a non-negative crop with a
median of 1 or more (a bright, all-positive dB crop, e.g. a city) stays dB: it is never converted a
second time. A dB median outside -50..+30 is no calibrated backscatter (scaled integers, amplitude).

Data types: complex pixels (Sentinel-1 SLC) are refused, since keeping only the real part would be
silently wrong; ``int8`` is refused for digital numbers (DN), which it cannot hold (0-255, 0-10000).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np

S1Units = Literal["auto", "db", "linear"]
DB_MEDIAN_RANGE = (-50.0, 30.0)


def describe(values: np.ndarray) -> str:
    """``min a, median b, max c`` of a 1-d array of valid values."""
    return f"min {values.min():.4g}, median {np.median(values):.4g}, max {values.max():.4g}"


def check_real(dtype: str, where: object) -> None:
    """Refuse complex pixels (SLC SAR): the readers keep real-valued, detected data only."""
    if np.dtype(dtype).kind == "c":
        raise ValueError(
            f"{where}: complex pixels ({dtype}), as in Sentinel-1 SLC; only detected backscatter is read: "
            "use GRD products, or calibrate and detect the SLC (|x|^2 -> sigma0) and save it as float32"
        )


def check_dn_dtype(dtype: str, where: object, what: str = "digital numbers (DN)") -> None:
    """Refuse ``int8`` data declared as DN: signed 8-bit cannot hold 0-255 (or reflectance 0-10000)."""
    if np.dtype(dtype) == np.int8:
        raise ValueError(
            f"{where}: int8 pixels cannot hold {what} (0-255 or more; values above 127 wrap negative): "
            "save the data as uint8 or uint16"
        )


def s1_units(values: np.ndarray, declared: str, where: object) -> Literal["db", "linear"]:
    """The units of valid Sentinel-1 ``values`` (1-d): ``declared`` checked against them, or detected
    for ``auto`` (see module doc). Raises ``ValueError`` saying what was seen and what to pass."""
    if declared not in ("auto", "db", "linear"):
        raise ValueError(f"unknown Sentinel-1 units {declared!r}: use 'auto', 'db' or 'linear'")
    if values.size == 0:
        return "db" if declared == "auto" else declared  # type: ignore[return-value]
    negative, median = bool(values.min() < 0), float(np.median(values))
    if declared == "linear" and negative:
        raise ValueError(
            f"{where}: declared linear power but has negative values ({describe(values)}): this looks "
            "like dB, not linear power; pass units='db' (or 'auto')"
        )
    if declared == "db" and not negative and median < 1:
        raise ValueError(
            f"{where}: declared dB but has non-negative values with median {median:.3g} "
            f"({describe(values)}): this looks like linear power, not dB; pass units='linear' (or 'auto')"
        )
    auto: Literal["db", "linear"] = "db" if negative or median >= 1 else "linear"
    units: Literal["db", "linear"] = auto if declared == "auto" else declared  # type: ignore[assignment]
    if units == "db" and not DB_MEDIAN_RANGE[0] <= median <= DB_MEDIAN_RANGE[1]:
        raise ValueError(
            f"{where}: median {median:.4g} ({describe(values)}) is no dB backscatter (expected a median "
            f"within {DB_MEDIAN_RANGE[0]:g}..{DB_MEDIAN_RANGE[1]:g} dB): scaled integers or amplitude? "
            "convert to sigma0 in dB or linear power first"
        )
    return units


# ----------------------------------------------------------------------------- files

_DRIVER_OF = {".tif": "GTiff", ".tiff": "GTiff", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
MIN_STRIP_SIDE, STRIP_RATIO = 8, 100


def check_shape(height: int, width: int, where: object) -> None:
    """Refuse a 1x1 raster and a thin strip (e.g. 20000 x 3): no image, most often axes swapped."""
    if height * width == 1:
        raise ValueError(f"{where}: a 1 x 1 raster, a single pixel: no image to encode")
    short, long = min(height, width), max(height, width)
    if short < MIN_STRIP_SIDE and long >= STRIP_RATIO * short:
        raise ValueError(
            f"{where}: a {height} x {width} strip: no image; were rows, columns and bands swapped "
            "when it was written? (rasters are bands x height x width)"
        )


def file_notes(path: object, suffix: str, driver: str, has_crs: bool, has_transform: bool) -> list[str]:
    """What is odd but readable about a raster file (the readers warn, ``data inspect`` lists them):
    content of another format than its suffix says, a transform without a CRS."""
    notes = []
    want = _DRIVER_OF.get(suffix.lower())
    if want is not None and driver != want:
        notes.append(
            f"{path}: the content is {driver}, not {want} as the suffix {suffix} says (renamed?); it "
            "is read as it is, without the georeference a GeoTIFF would carry"
        )
    if has_transform and not has_crs:
        notes.append(
            f"{path}: a transform but no CRS: its location is unknown (no lat/lon, no pairing with "
            "other files); set the CRS, e.g. gdal_edit.py -a_srs EPSG:32633"
        )
    return notes


# ----------------------------------------------------------------------------- a file as the readers see it

FULL_READ_MAX = 1 << 26  # values read in full by :func:`raster_problems`; larger files: a few blocks
_BLOCK = 512


def _sensor_of(bands: list[str]) -> str | None:
    """``s2`` where every band description is a Sentinel-2 band number (``B02``..., not ``red``: an RGB
    image is no S2 stack), ``s1`` where every one is a polarisation (VV, VH), else None."""
    if bands and all(re.fullmatch(r"B\d{1,2}A?", b.strip(), re.IGNORECASE) for b in bands):
        return "s2"
    if bands and all(b.strip().upper() in ("VV", "VH") for b in bands):
        return "s1"
    return None


def raster_problems(path: Path) -> tuple[bool, list[str]]:
    """``(usable, problems)`` of one raster file, by the readers' own checks (``data inspect`` uses it).

    The file is read in full (a few blocks, spread over it, where it holds more than
    :data:`FULL_READ_MAX` values, so a truncated file is caught): unreadable, complex, a single pixel, a
    strip, every pixel nodata/NaN are refusals (usable False); a file whose band descriptions name
    Sentinel-2 bands goes through :func:`~skysense.data.readers.select_s2_bands` (the spec's 10 bands),
    one naming VV/VH through :func:`~skysense.data.readers.as_s1_db` (the units check); notes (another
    format than the suffix says, a transform without CRS) are problems of a usable file.
    """
    from skysense.data.readers import as_s1_db, open_raster, read_raster, select_s2_bands

    try:
        with open_raster(path) as ds:
            h, w, c = ds.height, ds.width, ds.count
        check_shape(h, w, path)
        if h * w * c <= FULL_READ_MAX:
            r = read_raster(path)
        else:
            bh, bw = min(_BLOCK, h), min(_BLOCK, w)
            for frac in (0.0, 0.5, 1.0):  # first, middle and last blocks
                row, col = int(frac * (h - bh)), int(frac * (w - bw))
                r = read_raster(path, window=(col, row, bw, bh), allow_empty=True)
        sensor = _sensor_of(r.meta["bands"])
        if sensor == "s2":
            select_s2_bands(r)
        elif sensor == "s1":
            as_s1_db(r)
        return True, list(r.meta.get("notes", []))
    except (ValueError, FileNotFoundError) as e:
        return False, [str(e)]
