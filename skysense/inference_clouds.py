"""Cloud masks of dated stacks in large-scene inference (:mod:`skysense.inference_stack`).

A date's cloudy pixels come from either of two conventions:

- a mask band inside the date's file, after the bands the model takes and named by its band
  description: ``SCL`` (the Sentinel-2 L2A scene classification: classes 0 no data, 1 saturated or
  defective, 3 cloud shadow, 8 and 9 cloud of medium and high probability, 10 thin cirrus are left
  out), or ``CLM``, ``CLOUD`` or ``CLOUD_MASK`` (a binary mask, non-zero = cloud, as s2cloudless' CLM);
- a sidecar raster ``<stem>_cloud.tif`` beside the date's file ``<stem>.tif``, on any grid and CRS:
  one band, non-zero = cloud; its nodata, and where it does not reach, count as clear.

The mask is read through GDAL's warper onto the stack's grid with nearest resampling (the classes of
SCL must not be interpolated). A cloudy pixel keeps its values in the encoder's input (zeroing it
would change that date's features at clear pixels too: the ViT attends across the tile); the date is
left out of the temporal fusion at the cells its clouds cover (:func:`skysense.inference_heads.cell_pads`),
and a cell with no clear date is invalid in the output's ``valid`` band.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling

SCL_LEFT_OUT = (0, 1, 3, 8, 9, 10)
MASK_BANDS = {"SCL": "scl", "CLM": "binary", "CLOUD": "binary", "CLOUD_MASK": "binary"}
SIDECAR = "_cloud"


def is_sidecar(path: Path) -> bool:
    """Whether ``path`` is a cloud-mask sidecar (``*_cloud.tif``), not a date of the stack."""
    return path.stem.lower().endswith(SIDECAR)


def sidecar_of(path: Path) -> Path | None:
    """The sidecar mask of the date file ``path``, or None."""
    for suffix in (".tif", ".tiff", ".TIF"):
        candidate = path.with_name(f"{path.stem}{SIDECAR}{suffix}")
        if candidate.is_file():
            return candidate
    return None


def orphan_sidecars(folder: Path, dated: list[Path]) -> list[Path]:
    """Sidecars in ``folder`` whose date file is not among ``dated``."""
    stems = {p.stem for p in dated}
    return [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in (".tif", ".tiff") and is_sidecar(p) and p.stem[: -len(SIDECAR)] not in stems
    ]


def mask_band(ds: Any, bands: int) -> tuple[int, str] | None:
    """(1-based index, kind) of the mask band of a date file holding one band more than the model's
    ``bands``, named as the module doc says; None where it holds exactly ``bands``."""
    if ds.count == bands:
        return None
    name = (ds.descriptions[-1] or "").strip().upper()
    if ds.count == bands + 1 and name in MASK_BANDS:
        return ds.count, MASK_BANDS[name]
    return None


def cloudy(values: np.ndarray, kind: str, nodata: float | None = None) -> np.ndarray:
    """Cloudy pixels (bool) of mask ``values`` of ``kind`` (``scl`` or ``binary``)."""
    if kind == "scl":
        return np.isin(values, SCL_LEFT_OUT)
    bad = values != 0
    if nodata is not None:
        bad &= values != nodata
    return np.asarray(bad & ~np.isnan(values) if values.dtype.kind == "f" else bad)


class CloudMask:
    """One date's cloud mask, read a window at a time on the stack's (coarsened) grid."""

    def __init__(self, src: Any, index: int, kind: str, warp: Any, own: bool = False) -> None:
        """Band ``index`` of ``src`` (the date's file, or a sidecar that ``own`` says to close here)
        through ``warp(src, resampling)`` onto the stack's grid."""
        self.src, self.index, self.kind, self.own = src, index, kind, own
        self.nodata = src.nodata if kind == "binary" else None
        self.vrt = warp(src, Resampling.nearest)

    @classmethod
    def of(cls, path: Path, ds: Any, bands: int, warp: Any) -> CloudMask | None:
        """The mask of the date file ``path`` (open as ``ds`` with the model's ``bands``), or None."""
        import rasterio

        inside = mask_band(ds, bands)
        sidecar = sidecar_of(path)
        if inside is not None and sidecar is not None:
            raise ValueError(f"{path}: both a cloud band and the sidecar {sidecar}: keep one of them")
        if inside is not None:
            return cls(ds, inside[0], inside[1], warp)
        if sidecar is None:
            return None
        src = rasterio.open(sidecar)
        if src.crs is None or src.transform.is_identity or src.count != 1:
            src.close()
            raise ValueError(f"{sidecar}: a cloud mask needs one band, a CRS and a geotransform")
        return cls(src, 1, "binary", warp, own=True)

    def read(self, window: Any) -> np.ndarray:
        return cloudy(self.vrt.read(self.index, window=window), self.kind, self.nodata)

    def close(self) -> None:
        self.vrt.close()
        if self.own:
            self.src.close()
