import datetime as dt

import numpy as np
import pytest
import torch

from skysense.dates import check_days, civil_from_days, dtpe_index, from_days, to_days


def test_civil_from_days_matches_python_calendar():
    start = dt.date(1900, 1, 1)
    dates = [start + dt.timedelta(days=i) for i in range(0, 55_000, 3)]
    year, month, day = civil_from_days(to_days(dates))
    assert [(d.year, d.month, d.day) for d in dates] == list(zip(year.tolist(), month.tolist(), day.tolist()))


def test_dtpe_index_hand_cases():
    days = to_days(
        ["2021-01-01", "2021-12-31", "2020-02-28", "2020-02-29", "2020-03-01", "2021-03-01", "2020-12-31"]
    )
    # Jan 1 -> 0; Dec 31 -> 364 in any year; Feb 29 shares Feb 28 (58); Mar 1 is 59 in leap and common years.
    assert dtpe_index(days).tolist() == [0, 364, 58, 58, 59, 59, 364]


def test_to_days_accepts_several_types_and_round_trips():
    values = [
        "2019-09-17",
        dt.date(2019, 9, 18),
        dt.datetime(2019, 9, 19, 23, 59),
        np.datetime64("2019-09-20"),
    ]
    days = to_days(values)
    assert days.tolist() == [18156, 18157, 18158, 18159]
    assert from_days(days)[0] == dt.date(2019, 9, 17)


def test_bad_dates_are_explained():
    with pytest.raises(ValueError, match="cannot parse date"):
        to_days(["17/09/2019x"])
    with pytest.raises(TypeError, match="integer tensor"):
        check_days(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="out of range"):
        check_days(torch.tensor([1_568_678_400]))  # seconds, not days


def test_dtpe_index_official_doy_calendar():
    days = to_days(["2021-01-01", "2021-03-01", "2020-03-01", "2020-02-29", "2020-12-30", "2020-12-31"])
    # The released code indexes ctpe[doy - 1]: leap years shift after Feb 28; doy 366 is clamped.
    assert dtpe_index(days, "doy").tolist() == [0, 59, 60, 59, 364, 364]
    with pytest.raises(ValueError, match="unknown DTPE calendar"):
        dtpe_index(days, "julian")
