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
