"""The files of large-scene inference (:mod:`skysense.inference`): the output GeoTIFF's profile and band
names, each rank's GeoTIFF part and its progress record (written atomically after each strip), the run's
identity (inputs, model, tiling, settings), joining the ranks' parts, the summary and the quick-look PNG
(of a GeoTIFF or a Zarr output, :mod:`skysense.inference_zarr`)."""

from __future__ import annotations

import json
import math
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from skysense.files import atomic_write


def profile_of(scene: Any, head: Any, grid: Any, r0: int, r1: int) -> dict[str, Any]:
    """GeoTIFF profile of output rows [r0, r1): the input grid scaled by the stride."""
    from rasterio.transform import Affine

    h, w = r1 - r0, grid.out_shape[1]
    big = h >= 256 and w >= 256
    return {
        "driver": "GTiff",
        "dtype": "float32",
        "count": len(head.bands) + 1,
        "height": h,
        "width": w,
        "crs": scene.crs,
        "transform": scene.transform @ Affine.scale(grid.stride) @ Affine.translation(0, r0),
        "nodata": float("nan"),
        **({"tiled": True, "blockxsize": 256, "blockysize": 256} if big else {}),
    }


def describe(dst: Any, bands: Sequence[str], tags: dict[str, Any]) -> None:
    for i, name in enumerate([*bands, "valid"], start=1):
        dst.set_band_description(i, name)
    dst.update_tags(**{k: str(v) for k, v in tags.items()})


@dataclass
class TiffPart:
    """One rank's output rows [r_start, ...) as a GeoTIFF (``OUT.rank{r}of{N}.partial``), its progress
    record beside it (``<part>.json``)."""

    path: Path
    profile: dict[str, Any]
    bands: list[str]
    tags: dict[str, Any]
    r_start: int

    @property
    def record(self) -> Path:
        return Path(f"{self.path}.json")

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        with rasterio.open(self.path, "w", **self.profile) as dst:
            describe(dst, self.bands, self.tags)

    def write(self, rows: np.ndarray, r0: int) -> None:
        """(bands, h, w) output rows starting at output row ``r0`` of the whole grid."""
        with rasterio.open(self.path, "r+") as dst:
            dst.write(rows, window=Window(0, r0 - self.r_start, rows.shape[2], rows.shape[1]))


def fingerprint_of(paths: Sequence[Path], model: str, grid: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: inputs (path, size, mtime), model file, tiling, settings."""
    files = [str(p) for p in [*paths, Path(model)]]
    stats = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
    return {
        "files": stats,
        "grid": [grid.height, grid.width, grid.tile, grid.overlap, grid.stride],
        **settings,
    }


def strips_done(record: Path, fingerprint: dict[str, Any]) -> int:
    """Strips already written by the run whose progress ``record`` this is (0 where there is none); a
    record of another run is an error."""
    if not record.exists():
        return 0
    data = json.loads(record.read_text())
    if data["fingerprint"] != fingerprint:
        part = str(record).removesuffix(".json")
        raise ValueError(
            f"{part} holds an unfinished run with other inputs or settings: rerun that command to finish "
            f"it, or delete {part} and {record} to start anew"
        )
    return int(data["strips_done"])


def record(path: Path, fingerprint: dict[str, Any], done: int) -> None:
    """The progress record ``path``: ``done`` strips of the run ``fingerprint`` are written."""
    text = json.dumps({"fingerprint": fingerprint, "strips_done": done})

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)


@dataclass
class Summary:
    """What a run did: tiles computed (resumed ones not), area, time, throughput, peak memory."""

    tiles: int
    km2: float
    seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float = 0.0
    out: str = ""

    @property
    def km2_per_s(self) -> float:
        return self.km2 / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        gpu = f", peak GPU memory {self.peak_gpu_mb:.0f} MB" if self.peak_gpu_mb else ""
        return (
            f"{self.out}: {self.tiles} tiles, {self.km2:.3f} km² in {self.seconds:.1f} s = "
            f"{self.km2_per_s:.4f} km²/s, peak RSS {self.peak_rss_mb:.0f} MB{gpu}"
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def finalise(parts: Sequence[Path], out: Path, cog: bool = False) -> None:
    """The finished parts -> ``out``: renamed (one part) or joined; with ``cog`` a Cloud-Optimised
    GeoTIFF (deflate, overviews) copied through GDAL. ``out`` appears at once, complete."""
    joined = parts[0] if len(parts) == 1 else merge(parts, out.with_name(out.name + ".joined.partial"))
    if cog:
        from rasterio.shutil import copy as gdal_copy

        tmp = out.with_name(out.name + ".cog.partial")
        gdal_copy(joined, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="3", BIGTIFF="IF_SAFER")
        os.replace(tmp, out)
        joined.unlink()
    else:
        os.replace(joined, out)


def merge(parts: Sequence[Path], partial: Path) -> Path:
    """Copy the parts (bands of rows, in order) into ``partial``."""
    with rasterio.open(parts[0]) as first:
        skip = ("tiled", "blockxsize", "blockysize", "interleave", "compress")
        profile = {k: v for k, v in first.profile.items() if k not in skip}
        tags, descriptions = first.tags(), first.descriptions
    heights = []
    for p in parts:
        with rasterio.open(p) as src:
            heights.append(src.height)
    profile["height"] = sum(heights)
    if profile["height"] >= 256 and profile["width"] >= 256:  # as profile_of lays out a single part
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(partial, "w", **profile) as dst:
        dst.update_tags(**tags)
        for i, d in enumerate(descriptions, start=1):
            dst.set_band_description(i, d)
        row = 0
        for p, h in zip(parts, heights):
            with rasterio.open(p) as src:
                for y in range(0, h, 256):
                    win = Window(0, y, src.width, min(256, h - y))
                    dst.write(src.read(window=win), window=Window(0, row + y, src.width, win.height))
            row += h
    return partial


def first_band(path: str | Path, max_side: int) -> tuple[np.ndarray, str]:
    """Band 1 of a GeoTIFF or Zarr output, every k-th cell so that a side is at most ``max_side``, and
    its name."""
    if Path(path).is_dir():
        from skysense.inference_zarr import open_output

        arr, attrs = open_output(path)
        k = max(1, math.ceil(max(arr.shape[1:]) / max_side))
        return np.asarray(arr[0, ::k, ::k]), str(attrs["band_names"][0])
    with rasterio.open(path) as src:
        k = max(1, math.ceil(max(src.height, src.width) / max_side))
        band = src.read(
            1, out_shape=(max(1, src.height // k), max(1, src.width // k)), resampling=Resampling.nearest
        )
        return band, src.descriptions[0] or ""


def quicklook(out: str | Path, png: str | Path, max_side: int = 1024) -> Path:
    """A PNG of band 1 of the output ``out`` (a class map in tab20 colours, a probability or change map
    in grey), read at most ``max_side`` pixels a side; nodata is white."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    band, name = first_band(out, max_side)
    cmap = plt.get_cmap("tab20" if name == "class" else "gray").with_extremes(bad="white")
    vmax = 19 if name == "class" else max(1.0, float(np.nanmax(band)) if np.isfinite(band).any() else 1.0)

    def write(tmp: Path) -> None:
        plt.imsave(tmp, np.ma.masked_invalid(band), cmap=cmap, vmin=0, vmax=vmax, format="png")

    return atomic_write(png, write)
