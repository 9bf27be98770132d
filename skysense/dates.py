"""Acquisition dates: the library-wide convention and the day-of-year index of DTPE (paper Eq. 2).

Every ``*_dates`` tensor holds int64 **days since 1970-01-01** (UTC calendar days), so dates of
different years stay distinct and ordered. The DTPE table has 365 rows; :func:`dtpe_index`
maps a date to the row of the same month and day in a non-leap year, so Feb 29 shares Feb 28's
row and every later day of a leap year lands on the same row as in other years (seasons stay
aligned; nothing wraps).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable

import numpy as np
import torch

EPOCH = _dt.date(1970, 1, 1)
# Dates outside this window are almost certainly a unit error (ms, seconds, day-of-year ...).
MIN_DATE = _dt.date(1972, 1, 1)  # the first Earth-observation satellites (Landsat 1: July 1972)
MAX_DATE = _dt.date(2100, 12, 31)
MIN_DAYS = (MIN_DATE - EPOCH).days
MAX_DAYS = (MAX_DATE - EPOCH).days

# Day-of-year (0-based) of the first day of each month in a non-leap year.
_MONTH_START = torch.tensor([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334])


def to_days(dates: Iterable[str | _dt.date | _dt.datetime | np.datetime64]) -> torch.Tensor:
    """ISO strings, ``date``/``datetime`` or ``numpy.datetime64`` values -> int64 days since 1970-01-01."""
    out = []
    for d in dates:
        if isinstance(d, str):
            try:
                d = _dt.date.fromisoformat(d.strip()[:10].replace("/", "-"))
            except ValueError as e:
                raise ValueError(f"cannot parse date {d!r}: expected ISO 'YYYY-MM-DD' ({e})") from None
        if isinstance(d, np.datetime64):
            out.append(int(d.astype("datetime64[D]").astype(np.int64)))
            continue
        if isinstance(d, _dt.datetime):
            d = d.date()
        out.append((d - EPOCH).days)
    return torch.tensor(out, dtype=torch.int64)


def from_days(days: torch.Tensor | Iterable[int]) -> list[_dt.date]:
    """Inverse of :func:`to_days`."""
    values = days.tolist() if isinstance(days, torch.Tensor) else list(days)
    return [EPOCH + _dt.timedelta(days=int(v)) for v in values]


def civil_from_days(days: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Days since 1970-01-01 -> (year, month 1-12, day 1-31), proleptic Gregorian, vectorised.

    Integer-only algorithm on 400-year eras (H. Hinnant's ``civil_from_days``), exact for
    any int64 day count in range.
    """
    z = days.to(torch.int64) + 719468
    era = torch.div(z, 146097, rounding_mode="floor")
    doe = z - era * 146097  # [0, 146096]
    yoe = torch.div(doe - doe // 1460 + doe // 36524 - doe // 146096, 365, rounding_mode="floor")
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of the year starting in March, [0, 365]
    mp = torch.div(5 * doy + 2, 153, rounding_mode="floor")  # [0, 11], March = 0
    day = doy - torch.div(153 * mp + 2, 5, rounding_mode="floor") + 1
    month = torch.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2).to(torch.int64)
    return year, month, day


def dtpe_index(days: torch.Tensor, calendar: str = "noleap", rows: int = 365) -> torch.Tensor:
    """Row of the DTPE table for each date.

    ``days`` (any shape) int64 days since 1970-01-01 -> same shape, values in [0, rows - 1].
    ``calendar="noleap"``: the 0-based day of year on a non-leap calendar: Feb 29 -> row 58
    (Feb 28), Mar 1 -> row 59 in every year. ``calendar="doy"``: day of year - 1, as the
    released SkySense code indexes ``ctpe[:, doy - 1]``; Dec 31 of a leap year (doy 366) is
    clamped to the last row where the released code would index out of range.
    """
    year, month, day = civil_from_days(days)
    start = _MONTH_START.to(days.device)[month - 1]
    if calendar == "noleap":
        return start + torch.clamp(day, max=torch.where(month == 2, 28, 31)) - 1
    if calendar == "doy":
        leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
        doy = start + day + (leap & (month > 2)).to(torch.int64)  # 1-based
        return torch.clamp(doy - 1, max=rows - 1)
    raise ValueError(f"unknown DTPE calendar {calendar!r}: use 'noleap' or 'doy'")


def check_days(days: torch.Tensor, name: str = "dates") -> None:
    """Raise a clear error where ``days`` is not an integer tensor of plausible dates."""
    if days.dtype.is_floating_point or days.dtype == torch.bool or days.is_complex():
        raise TypeError(
            f"{name} must be an integer tensor of days since 1970-01-01 (got {days.dtype}); "
            "use skysense.dates.to_days(...) to convert ISO dates"
        )
    if days.numel() and (int(days.min()) < MIN_DAYS or int(days.max()) > MAX_DAYS):
        lo, hi = int(days.min()), int(days.max())
        raise ValueError(
            f"{name} out of range: values {lo}..{hi} days since 1970-01-01, expected dates between "
            f"{MIN_DATE} and {MAX_DATE} (days {MIN_DAYS}..{MAX_DAYS}). Day-of-year numbers, seconds or "
            "milliseconds are not accepted; convert with skysense.dates.to_days(...)"
        )
