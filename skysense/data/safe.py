"""Sentinel-2 products as ESA ships them: the ``.SAFE`` folder layouts of Level-1C and Level-2A.

L1C: ``<product>.SAFE/GRANULE/<granule>/IMG_DATA/T32TQM_20210302T101021_B02.jp2`` (every band at its
native resolution). L2A: ``.../IMG_DATA/R10m|R20m|R60m/T32TQM_20210302T101021_B02_10m.jp2``, each
band at its native resolution and resampled copies at the coarser ones (B02 in all three folders).
:func:`s2_image_folders` turns a product, granule or ``IMG_DATA`` folder into the folders holding band
files; :func:`pick_native` keeps one file per band, the one at the band's native resolution (else the
finest); :func:`s2_product_date` reads the sensing date from ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` or
the product name (``S2A_MSIL2A_20210302T101021_...``). Inside a SAFE product 0 is nodata (the
products' NODATA special value; the JP2 files carry no nodata tag) and :func:`s2_add_offsets` gives
the per-band ``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET`` of processing baseline 04.00 on (-1000 since
25 January 2022): the readers add it, so DN mean the same before and after that date.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from skysense.bands import S2_ALL_BANDS, S2_RESOLUTION_M, s2_band_name

RES_DIRS = ("R10m", "R20m", "R60m")
_MTD_TAGS = ("PRODUCT_START_TIME", "DATATAKE_SENSING_START", "SENSING_TIME")
_NAME_DATE = re.compile(r"_MSIL(?:1C|2A)_((?:19|20)\d{2})(\d{2})(\d{2})T", re.IGNORECASE)
_ISO_DATE = re.compile(r"((?:19|20)\d{2})-(\d{2})-(\d{2})")


def s2_image_folders(folder: Path) -> list[Path]:
    """The folders of band files of ``folder``: itself, or (for a SAFE product, granule or IMG_DATA
    folder) ``IMG_DATA`` and its ``R10m``/``R20m``/``R60m`` sub-folders. A product with several granules
    is refused: give one granule folder."""
    granule_dir = folder / "GRANULE"
    if granule_dir.is_dir():
        granules = sorted(d for d in granule_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(granules) != 1:
            names = ", ".join(d.name for d in granules) or "none"
            raise ValueError(
                f"{folder}: {len(granules)} granules in GRANULE/ ({names}); give one granule folder "
                "(GRANULE/<granule>) as the band set"
            )
        folder = granules[0]
    if (folder / "IMG_DATA").is_dir():
        folder = folder / "IMG_DATA"
    return [folder, *(folder / r for r in RES_DIRS if (folder / r).is_dir())]


def resolution_of(path: Path, from_name: str | None) -> int | None:
    """Pixel size in metres of a band file from its name (``_10m``) or its ``R10m`` folder; else None."""
    if from_name:
        return int(from_name)
    m = re.fullmatch(r"R(\d+)m", path.parent.name)
    return int(m.group(1)) if m else None


def pick_native(band: str, candidates: list[tuple[int | None, Path]]) -> Path:
    """One file of ``band`` among ``(resolution, path)`` candidates: its native resolution, else the finest.

    Two files at the same resolution are ambiguous and refused, naming both.
    """
    by_res: dict[int | None, Path] = {}
    for res, f in candidates:
        if res in by_res:
            raise ValueError(
                f"{f.parent}: two files for band {band}: {by_res[res].name} and {f.name}; keep one"
            )
        by_res[res] = f
    native = S2_RESOLUTION_M[band]
    if native in by_res:
        return by_res[native]
    return by_res[min(by_res, key=lambda r: r if r is not None else 0)]


def safe_root(folder: Path) -> Path | None:
    """The product folder (holding ``MTD_MSIL*.xml`` or named ``*.SAFE``) at or above ``folder``."""
    for d in (folder, *folder.parents):
        if d.name.upper().endswith(".SAFE") or any(d.glob("MTD_MSIL*.xml")):
            return d
    return None


def s2_product_date(folder: str | Path) -> _dt.date | None:
    """Sensing date of the SAFE product holding ``folder``: ``MTD_MSIL*.xml`` (PRODUCT_START_TIME), else
    the product name (``S2B_MSIL1C_20210302T...``); None outside a SAFE product."""
    root = safe_root(Path(folder).resolve())
    if root is None:
        return None
    for mtd in sorted(root.glob("MTD_MSIL*.xml")):
        text = mtd.read_text(errors="replace")
        for tag in _MTD_TAGS:
            m = re.search(rf"<{tag}>\s*([^<]+)<", text)
            d = _ISO_DATE.search(m.group(1)) if m else None
            if d:
                return _dt.date(int(d.group(1)), int(d.group(2)), int(d.group(3)))
    m = _NAME_DATE.search(root.name)
    return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def s2_add_offsets(folder: str | Path) -> dict[str, float]:
    """``{band: offset}`` from the ``MTD_MSIL*.xml`` of the SAFE product holding ``folder`` (reflectance
    = (DN + offset) / 10000); empty for products before baseline 04.00 or outside a SAFE product."""
    root = safe_root(Path(folder).resolve())
    for mtd in sorted(root.glob("MTD_MSIL*.xml")) if root is not None else []:
        text = mtd.read_text(errors="replace")
        ids = dict(re.findall(r'<Spectral_Information bandId="(\d+)" physicalBand="(\w+)"', text))
        offsets = re.findall(r'<(?:BOA|RADIO)_ADD_OFFSET band_id="(\d+)">\s*(-?[\d.]+)\s*<', text)
        return {s2_band_name(ids.get(i, S2_ALL_BANDS[int(i)])): float(v) for i, v in offsets}
    return {}
