"""Fixtures of the data tests: the real data folder (skipped where absent) and GeoTIFF writers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from skysense.data.root import data_root

REPO = Path(__file__).resolve().parents[2]
DATA = data_root().resolve()
_RUNNING: dict[str, pytest.Item] = {}  # the test now running, for data_path's marker check


@pytest.fixture(autouse=True)
def _running_test(request: pytest.FixtureRequest) -> Iterator[None]:
    _RUNNING["item"] = request.node
    yield
    _RUNNING.clear()


def data_path(*parts: str) -> Path:
    """A path under the real data folder; skips the test with the reason where it is absent.

    The test must be marked ``data`` (``make test-fast`` leaves those out), checked even without the data.
    """
    item = _RUNNING.get("item")
    if item is not None and item.get_closest_marker("data") is None:
        raise RuntimeError(f"{item.nodeid} reads the real data: mark it @pytest.mark.data")
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} missing (set SKYSENSE_DATA to the shared/data folder)")
    return p


def write_tif(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    res: float = 10.0,
    nodata: float | None = None,
    descriptions: list[str] | None = None,
    tags: dict[str, str] | None = None,
    **profile: Any,
) -> Path:
    """Write ``data`` (C, H, W) as a north-up GeoTIFF, top-left corner ``origin``, pixel size ``res``."""
    c, h, w = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=c,
        dtype=data.dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], res, res),
        nodata=nodata,
        **profile,
    ) as ds:
        ds.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)
    return path
