"""Zarr output of large-scene inference (``skysense embed --format zarr``): the GeoTIFF's bands in a Zarr
group, written strip by strip and resumable in the same way (:mod:`skysense.inference`).

Layout of ``OUT`` (a folder)::

    bands   float32 (band, y, x): the output bands and, last, ``valid``; NaN where no input is valid
    x, y    float64 (x,), (y,): cell centres in the CRS (axis-aligned grids only)
    attrs   band_names, crs_wkt, epsg (or null), transform [a, b, c, d, e, f] (rasterio's Affine:
            x = a col + b row + c, y = d col + e row + f, of cell corners), the run's tags (inputs,
            model, tiling, dates of each stack) and its fingerprint

A chunk holds the output rows of one tile strip (``(tile - overlap) / stride`` rows; the last strip's
rows run into one more chunk), so no two strips, and no two ranks, ever write one chunk. The ranks write
into one store, ``OUT.partial``, each recording its finished strips in ``OUT.rank{r}of{N}.partial.json``;
rank 0 renames the store to ``OUT`` once every strip is written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skysense.inference_files import strips_done

CHUNK_BYTES = 8 * 2**20  # at most this much of one chunk, over its bands


def zarr_module() -> Any:
    """The ``zarr`` package, or a clear error naming the optional extra."""
    try:
        import zarr
    except ImportError:
        raise ImportError(
            "--format zarr needs the zarr package: pip install skysense[zarr] (or pip install zarr)"
        ) from None
    return zarr


def open_output(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The ``bands`` array of a Zarr output and its group's attributes."""
    group = zarr_module().open_group(str(path), mode="r")
    return group["bands"], dict(group.attrs)


@dataclass
class ZarrPart:
    """A rank's view of the shared store: writes its strips' rows, records them in ``record``."""

    store: Path
    record: Path

    def exists(self) -> bool:
        return self.store.exists()

    def create(self) -> None:
        """Nothing: rank 0 made the store (:meth:`ZarrOutput.prepare`) before any rank writes."""

    def write(self, rows: np.ndarray, r0: int) -> None:
        """(bands, h, w) output rows starting at output row ``r0``."""
        arr = zarr_module().open_array(str(self.store / "bands"), mode="r+")
        arr[:, r0 : r0 + rows.shape[1], :] = rows


class ZarrOutput:
    """The Zarr store ``OUT`` of a run over ``scene`` on ``grid`` (see the module doc)."""

    def __init__(self, out: Path, scene: Any, bands: list[str], grid: Any, tags: dict[str, Any]) -> None:
        self.out, self.store = out, out.with_name(f"{out.name}.partial")
        self.scene, self.bands, self.grid, self.tags = scene, [*bands, "valid"], grid, tags

    def record(self, rank: int, world: int) -> Path:
        return self.out.with_name(f"{self.out.name}.rank{rank}of{world}.partial.json")

    def part(self, rank: int, world: int) -> ZarrPart:
        return ZarrPart(self.store, self.record(rank, world))

    def prepare(self, fingerprint: dict[str, Any], world: int) -> None:
        """Rank 0, before any rank writes: keep a store of this run (a resume), else make it anew. A
        progress record of another run is an error (:func:`strips_done`)."""
        for r in range(world):
            strips_done(self.record(r, world), fingerprint)
        if self.store.exists():
            try:
                if open_output(self.store)[1].get("fingerprint") == fingerprint:
                    return
            except Exception:  # a store cut short before its metadata: made anew
                pass
            shutil.rmtree(self.store)
        self._create(fingerprint)

    def _create(self, fingerprint: dict[str, Any]) -> None:
        from rasterio.transform import Affine

        zarr = zarr_module()
        oh, ow = self.grid.out_shape
        rows = max(1, self.grid.step // self.grid.stride)
        cols = min(ow, 512)
        depth = max(1, min(len(self.bands), CHUNK_BYTES // (4 * rows * cols)))
        t = self.scene.transform @ Affine.scale(self.grid.stride)
        crs = self.scene.crs
        group = zarr.open_group(str(self.store), mode="w")
        group.attrs.update({
            "band_names": self.bands, "crs_wkt": crs.to_wkt(), "epsg": crs.to_epsg(),
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f], "fingerprint": fingerprint,
            **{k: str(v) for k, v in self.tags.items()},
        })  # fmt: skip
        arr = group.create_array(
            "bands", shape=(len(self.bands), oh, ow), chunks=(depth, rows, cols), dtype="float32",
            fill_value=float("nan"), dimension_names=["band", "y", "x"],
        )  # fmt: skip
        arr.attrs["band_names"] = self.bands
        if t.b == 0 and t.d == 0:  # centres along each axis
            for name, n, origin, step in (("x", ow, t.c, t.a), ("y", oh, t.f, t.e)):
                coord = group.create_array(name, shape=(n,), dtype="float64", dimension_names=[name])
                coord[:] = origin + step * (np.arange(n) + 0.5)

    def finalise(self, world: int) -> None:
        """Every strip written: the store becomes ``OUT`` (an earlier ``OUT`` of ``--overwrite`` goes)."""
        if self.out.is_dir() and any((self.out / f).exists() for f in ("zarr.json", ".zgroup")):
            shutil.rmtree(self.out)
        elif self.out.exists():
            raise FileExistsError(f"{self.out} exists and is no Zarr store: remove it or give another --out")
        os.replace(self.store, self.out)
        for r in range(world):
            self.record(r, world).unlink(missing_ok=True)
