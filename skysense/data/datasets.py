"""Datasets reading the standard layouts: AID-style scene folders, BigEarthNet-MM, Sen1Floods11, eo-learn
EOPatch, LEVIR-CD change pairs, ``img_dir/ann_dir`` segmentation and sits-style ``.npz`` pixel series.

Every dataset returns sample dicts (see ``skysense/data/__init__.py``): images in physical units
(S2 reflectance DN, S1 dB, hr 0-255) as float32 with invalid pixels 0 and flagged in
``{mod}_invalid``; dates as int64 days since 1970-01-01; ``lat``/``lon`` float64 0-d tensors where
the data is georeferenced; targets ``label`` / ``target`` (ignore index -1). ``split`` selects
``train``/``val``/``test`` by a hash of the sample id (:mod:`skysense.data.splits`).
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling as WarpResampling
from rasterio.transform import Affine
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform
from torch.utils.data import Dataset

from skysense.bands import S2_BANDS
from skysense.data.readers import (
    Raster,
    Resampling,
    check_same_grid,
    find_s2_band_files,
    load_npy_series,
    parse_date,
    raster_bounds,
    read_image,
    read_raster,
    read_s1,
    read_s2_bandset,
    read_timestamps,
    select_s2_bands,
)
from skysense.data.splits import DEFAULT_FRACTIONS, filter_split
from skysense.dates import check_days, to_days

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]
IGNORE_INDEX = -1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

# BigEarthNet's 43 CORINE level-3 labels (the original nomenclature), in the published order.
BIGEARTHNET_LABELS: tuple[str, ...] = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites",
    "Dump sites", "Construction sites", "Green urban areas", "Sport and leisure facilities",
    "Non-irrigated arable land", "Permanently irrigated land", "Rice fields", "Vineyards",
    "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland",
    "Moors and heathland", "Sclerophyllous vegetation", "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock", "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes",
    "Salines", "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons", "Estuaries",
    "Sea and ocean",
)  # fmt: skip


# ----------------------------------------------------------------------------- shared helpers


def lonlat_of(meta: dict[str, Any]) -> tuple[float, float] | None:
    """(lon, lat) in WGS84 degrees of the centre of a georeferenced raster; None without CRS/transform."""
    if not meta.get("crs") or meta.get("transform") is None:
        return None
    left, bottom, right, top = raster_bounds(meta)
    xs, ys = warp_transform(
        CRS.from_user_input(meta["crs"]), "EPSG:4326", [(left + right) / 2], [(bottom + top) / 2]
    )
    return float(xs[0]), float(ys[0])


def put_image(
    sample: Sample, key: str, r: Raster, days: torch.Tensor | None = None, series: bool = False
) -> None:
    """Store a raster under ``key`` as (C, H, W), or (1, C, H, W) if ``series``; invalid, dates, meta too."""
    data, invalid = torch.from_numpy(r.data), torch.from_numpy(r.invalid)
    sample[key] = data[None] if series else data
    sample[f"{key}_invalid"] = invalid[None] if series else invalid
    if days is not None:
        sample[f"{key}_dates"] = days.reshape(-1).to(torch.int64)
    sample.setdefault("meta", {})[key] = r.meta


def put_lonlat(sample: Sample, lonlat: tuple[float, float] | None) -> None:
    if lonlat is not None:
        sample["lon"] = torch.tensor(lonlat[0], dtype=torch.float64)
        sample["lat"] = torch.tensor(lonlat[1], dtype=torch.float64)


def check_modalities(modalities: Sequence[str], allowed: Sequence[str], dataset: str) -> tuple[str, ...]:
    """``modalities`` as a tuple, or ``ValueError`` unless a non-empty subset of ``allowed``."""
    mods = tuple(modalities)
    if not mods or set(mods) - set(allowed):
        raise ValueError(
            f"{dataset} modalities must be a non-empty subset of {tuple(allowed)}, got {modalities}"
        )
    return mods


def warp_to(r: Raster, ref: Raster, resampling: Resampling = "bilinear") -> Raster:
    """``r`` reprojected onto the grid of ``ref`` (its CRS, transform and size) by GDAL's warper.

    Cells of ``ref`` that no valid pixel of ``r`` covers (the edges where the footprints differ, r's
    own nodata) are invalid, 0 in ``data``.
    """
    src = np.where(r.invalid[None], np.float32(np.nan), r.data).astype(np.float32)
    h, w = ref.shape
    dst = np.full((src.shape[0], h, w), np.nan, np.float32)
    reproject(
        src,
        dst,
        src_transform=Affine(*r.meta["transform"]),
        src_crs=CRS.from_user_input(r.meta["crs"]),
        src_nodata=np.nan,
        dst_transform=Affine(*ref.meta["transform"]),
        dst_crs=CRS.from_user_input(ref.meta["crs"]),
        dst_nodata=np.nan,
        resampling=WarpResampling.bilinear if resampling == "bilinear" else WarpResampling.nearest,
    )
    invalid = np.asarray(np.isnan(dst).any(axis=0))
    dst[:, invalid] = 0.0
    meta = dict(r.meta, reprojected_from=r.meta["crs"], width=w, height=h)
    meta.update({k: ref.meta.get(k) for k in ("crs", "transform", "res")})
    return Raster(dst, invalid, meta)


def put_aligned(sample: Sample, rasters: dict[str, tuple[Raster, torch.Tensor]], what: str) -> None:
    """Store co-registered one-date rasters ``{mod: (raster, days (1,))}`` as (1, C, H, W) series.

    Rasters on the reference grid (``s2`` where present, else the first) must share its extent
    (``what`` names the pairing in the error); one on another CRS is reprojected onto it
    (:func:`warp_to`), its uncovered edges invalid. Lat/lon of the centre.
    """
    ref = rasters["s2"][0] if "s2" in rasters else next(iter(rasters.values()))[0]
    for mod, (r, days) in rasters.items():
        if r.meta.get("crs") and ref.meta.get("crs") and r.meta["crs"] != ref.meta["crs"]:
            r = warp_to(r, ref)
            if r.invalid.all():
                raise ValueError(f"{what}: {r.meta['path']} does not overlap {ref.meta['path']}")
        check_same_grid(ref.meta, r.meta, what)
        put_image(sample, mod, r, days, series=True)
    put_lonlat(sample, lonlat_of(ref.meta))


def _files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in it if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


class GeoDataset(Dataset):
    """Base of all datasets: finds samples (``_scan``), selects the split, loads (``_load``), transforms.

    Subclasses set ``layout`` and implement ``_scan() -> list of records`` (each with an ``id``) and
    ``_load(record) -> sample``.
    """

    layout = "generic"
    expected = ""  # what the layout looks like, for error messages

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        seed: int = 0,
        transforms: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root}: not found")
        self.transforms = transforms
        records = self._scan()
        if not records:
            raise ValueError(
                f"{self.root}: no samples found for the {self.layout} layout (expected {self.expected})"
            )
        keep = filter_split([r["id"] for r in records], split, fractions, seed)
        self.split = split
        self.records = [records[i] for i in keep]

    def _scan(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _load(self, rec: dict[str, Any]) -> Sample:
        raise NotImplementedError

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        sample = self._load(rec)
        sample.setdefault("meta", {}).update(id=rec["id"], dataset=self.layout)
        for key in [k for k in sample if k.endswith("_dates")]:
            check_days(sample[key], f"{key} of sample {rec['id']}")
        return self.transforms(sample) if self.transforms is not None else sample


# ----------------------------------------------------------------------------- scene classification


class SceneClassification(GeoDataset):
    """Single-label scenes from ``root/<class>/*.jpg|png|tif`` (AID, UC Merced, RESISC45 layout).

    ``hr`` (C, H, W) 0-255, ``hr_invalid`` (H, W), ``label`` int64 index into ``classes`` (sorted
    folder names). Sample id: ``<class>/<file name>``. A class folder without images stays a class
    (so no later class index shifts), listed in ``empty_classes`` with a warning.
    """

    layout = "scene_classification"
    expected = "class subfolders of images, root/<class>/*.jpg"

    def _scan(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: not a folder")
        dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = [d.name for d in dirs]
        self.empty_classes = [d.name for d in dirs if not _files(d)]
        if self.empty_classes and len(self.empty_classes) < len(dirs):
            warnings.warn(
                f"{self.root}: class folder(s) without images kept as classes (indexes unchanged): "
                f"{', '.join(self.empty_classes)}",
                stacklevel=3,
            )
        return [
            {"id": f"{d.name}/{f.name}", "path": f, "label": i} for i, d in enumerate(dirs) for f in _files(d)
        ]

    def _load(self, rec: dict[str, Any]) -> Sample:
        sample: Sample = {}
        r = read_image(rec["path"])
        put_image(sample, "hr", r)
        put_lonlat(sample, lonlat_of(r.meta))
        sample["label"] = torch.tensor(rec["label"], dtype=torch.int64)
        sample["meta"]["class"] = self.classes[rec["label"]]
        return sample


# ----------------------------------------------------------------------------- BigEarthNet-MM


class BigEarthNetMM(GeoDataset):
    """BigEarthNet-MM: ``root/s2/<patch>/*_B*.tif``, ``root/s1/<patch>/*_VV|VH.tif``, label JSON files.

    S1 patches are paired with S2 patches through ``corresponding_s2_patch`` in their JSON and
    must cover the same extent. ``modalities``: any non-empty subset of ``("s2", "s1")``; a sample
    needs all of them. S2 bands (default: the spec's 10) are resampled to the 10 m grid
    (``resampling``, see :mod:`skysense.data.readers`). ``s2``/``s1`` (1, C, 120, 120), ``*_dates``
    (1,), ``label`` float32 multi-hot (43,) over :data:`BIGEARTHNET_LABELS`. Sample id: the S2
    patch name (the S1 name for S1-only samples).
    """

    layout = "bigearthnet_mm"
    expected = (
        "root/s2/<patch>/<patch>_B02.tif ... and/or root/s1/<patch>/<patch>_VV.tif, *_labels_metadata.json"
    )
    classes = list(BIGEARTHNET_LABELS)

    def __init__(
        self,
        root: str | Path,
        modalities: Sequence[str] = ("s2", "s1"),
        s2_bands: Sequence[str] = S2_BANDS,
        resampling: Resampling = "bilinear",
        **kwargs: Any,
    ) -> None:
        self.modalities = check_modalities(modalities, ("s2", "s1"), "BigEarthNet-MM")
        self.s2_bands, self.resampling = tuple(s2_bands), resampling
        super().__init__(root, **kwargs)

    def _scan(self) -> list[dict[str, Any]]:
        s2_dirs = {d.name: d for d in sorted((self.root / "s2").glob("*")) if d.is_dir()}
        s1_by_s2: dict[str, Path] = {}
        self.unpaired_s1: list[str] = []
        for d in sorted((self.root / "s1").glob("*")):
            if not d.is_dir():
                continue
            meta = _read_json(self._json(d))
            s2_name = meta.get("corresponding_s2_patch")
            if s2_name is None:
                raise ValueError(f"{self._json(d)}: no 'corresponding_s2_patch' to pair the S1 patch with S2")
            s1_by_s2[s2_name] = d
            if s2_name not in s2_dirs:
                self.unpaired_s1.append(d.name)
        if self.modalities == ("s1",):
            return [{"id": d.name, "s1": d, "s2": s2_dirs.get(k)} for k, d in s1_by_s2.items()]
        names = [n for n in s2_dirs if "s1" not in self.modalities or n in s1_by_s2]
        return [{"id": n, "s2": s2_dirs[n], "s1": s1_by_s2.get(n)} for n in names]

    @staticmethod
    def _json(folder: Path) -> Path:
        return folder / f"{folder.name}_labels_metadata.json"

    def _labels(self, folder: Path) -> tuple[torch.Tensor, dict[str, Any]]:
        meta = _read_json(self._json(folder))
        names = meta.get("labels")
        if not isinstance(names, list):
            raise ValueError(f"{self._json(folder)}: no 'labels' list")
        unknown = [n for n in names if n not in BIGEARTHNET_LABELS]
        if unknown:
            raise ValueError(f"{self._json(folder)}: unknown BigEarthNet label(s) {unknown}")
        y = torch.zeros(len(BIGEARTHNET_LABELS), dtype=torch.float32)
        y[[BIGEARTHNET_LABELS.index(n) for n in names]] = 1.0
        return y, meta

    def _date(self, meta: dict[str, Any], folder: Path) -> torch.Tensor:
        text = meta.get("acquisition_date") or meta.get("acquisition_time")
        if text is None:
            raise ValueError(f"{self._json(folder)}: no 'acquisition_date'/'acquisition_time'")
        return to_days([parse_date(str(text), str(self._json(folder)))])

    def _load(self, rec: dict[str, Any]) -> Sample:
        sample: Sample = {}
        rasters: dict[str, tuple[Raster, torch.Tensor]] = {}
        for mod in self.modalities:
            folder: Path = rec[mod]
            y, jmeta = self._labels(folder)
            if mod == "s2":
                r = read_s2_bandset(folder, self.s2_bands, self.resampling)
            else:
                files = sorted(p for p in folder.iterdir() if p.stem.upper().endswith(("_VV", "_VH")))
                r = read_s1(files, units="db")
            r.meta["labels"] = jmeta["labels"]
            rasters[mod] = (r, self._date(jmeta, folder))
            sample["label"] = y
        put_aligned(sample, rasters, f"S1-to-S2 pairing of {rec['id']}")
        return sample


# ----------------------------------------------------------------------------- Sen1Floods11


class Sen1Floods11(GeoDataset):
    """Sen1Floods11 hand-labelled chips: ``S1/<chip>_S1Hand.tif`` (VV, VH dB), ``S2/<chip>_S2Hand.tif``
    (13 L1C bands), ``Labels/<chip>_LabelHand.tif`` (-1 nodata, 0 dry, 1 water), dates from
    ``Sen1Floods11_Metadata.geojson`` (``s1_date``/``s2_date`` of the chip's location).

    ``s1``/``s2`` (1, C, 512, 512), ``*_dates`` (1,), ``target`` int64 (512, 512) with -1 ignored.
    The S2 chips are L1C (top of atmosphere): the spec's L2A statistics are only an approximation.
    """

    layout = "sen1floods11"
    expected = "S1/<chip>_S1Hand.tif, S2/<chip>_S2Hand.tif, Labels/<chip>_LabelHand.tif, *Metadata.geojson"
    classes = ["dry", "water"]

    def __init__(
        self,
        root: str | Path,
        modalities: Sequence[str] = ("s1", "s2"),
        s2_bands: Sequence[str] = S2_BANDS,
        **kw: Any,
    ) -> None:
        self.modalities, self.s2_bands = (
            check_modalities(modalities, ("s1", "s2"), "Sen1Floods11"),
            tuple(s2_bands),
        )
        super().__init__(root, **kw)

    def _scan(self) -> list[dict[str, Any]]:
        geojson = sorted(self.root.glob("*.geojson"))
        if not geojson:
            raise FileNotFoundError(
                f"{self.root}: no Sen1Floods11 metadata GeoJSON (Sen1Floods11_Metadata.geojson)"
            )
        feats = _read_json(geojson[0]).get("features", [])
        self.dates = {
            f["properties"]["location"]: f["properties"]
            for f in feats
            if "location" in f.get("properties", {})
        }
        self.metadata_path = geojson[0]
        recs = []
        for f in sorted((self.root / "S1").glob("*_S1Hand.tif")):
            chip = f.name[: -len("_S1Hand.tif")]
            recs.append(
                {
                    "id": chip,
                    "s1": f,
                    "s2": self.root / "S2" / f"{chip}_S2Hand.tif",
                    "label": self.root / "Labels" / f"{chip}_LabelHand.tif",
                }
            )
        return recs

    def _load(self, rec: dict[str, Any]) -> Sample:
        sample: Sample = {}
        location = rec["id"].rsplit("_", 1)[0]
        props = self.dates.get(location)
        if props is None:
            raise ValueError(f"{self.metadata_path}: no entry for location {location!r} of chip {rec['id']}")
        rasters: dict[str, tuple[Raster, torch.Tensor]] = {}
        for mod in self.modalities:
            if mod == "s1":
                r = read_s1(rec["s1"], units="db")
            else:
                r = select_s2_bands(read_raster(rec["s2"]), self.s2_bands)
                r.meta["level"] = "L1C"
            when = props.get(f"{mod}_date")
            if when is None:
                raise ValueError(f"{self.metadata_path}: no {mod}_date for location {location!r}")
            rasters[mod] = (r, to_days([parse_date(str(when), str(self.metadata_path))]))
        put_aligned(sample, rasters, f"S1/S2 of chip {rec['id']}")
        label = read_raster(rec["label"], allow_empty=True)
        values = np.unique(label.data)
        if not set(values.tolist()) <= {-1.0, 0.0, 1.0}:
            raise ValueError(f"{rec['label']}: label values {values.tolist()}, expected -1 (nodata), 0 or 1")
        target = torch.from_numpy(label.data[0]).to(torch.int64)
        sample["target"] = target.masked_fill(torch.from_numpy(label.invalid), IGNORE_INDEX)
        sample["meta"]["target"] = label.meta
        return sample


# ----------------------------------------------------------------------------- eo-learn EOPatch


def _lulc_names(path: Path) -> list[str] | None:
    """Class names from an eo-learn ``lulc_classes.py`` (``('name', id)`` pairs), parsed, not executed."""
    if not path.exists():
        return None
    pairs = re.findall(r"\(\s*'([^']+)'\s*,\s*(\d+)\s*\)", path.read_text())
    by_id = {int(i): n for n, i in pairs}
    return [by_id.get(i, str(i)) for i in range(max(by_id) + 1)] if by_id else None


class EOPatchDataset(GeoDataset):
    """eo-learn EOPatches: ``data/<FEATURE>.npy`` (T, H, W, C) + ``timestamps.json``, cloud mask
    ``mask/CLM.npy``, ``mask/IS_DATA.npy``, land cover ``mask_timeless/LULC.npy``, ``bbox.geojson``.

    ``root``: one EOPatch or a folder of them. The series goes to ``s2`` (T, C, H, W) with
    ``meta['s2']['bands'] = [feature]`` (e.g. NDVI: not S2 DN, normalise with its own stats);
    ``s2_invalid`` (T, H, W) = cloud | no data | NaN. ``target`` int64 (H, W): LULC with class 0
    ("no data") -> -1. ``patch_size`` tiles each EOPatch into non-overlapping patches (remainders
    dropped); sample id ``<eopatch>`` or ``<eopatch>/<row>_<col>``.
    """

    layout = "eopatch"
    expected = "an EOPatch folder (data/*.npy, timestamps.json, bbox.geojson) or a folder of them"

    def __init__(
        self,
        root: str | Path,
        feature: str = "NDVI",
        cloud_mask: str | None = "CLM",
        label: str | None = "LULC",
        patch_size: int | None = None,
        **kw: Any,
    ) -> None:
        self.feature, self.cloud_mask, self.label, self.patch_size = feature, cloud_mask, label, patch_size
        super().__init__(root, **kw)

    def _scan(self) -> list[dict[str, Any]]:
        root = self.root
        patches = (
            [root]
            if (root / "timestamps.json").exists()
            else sorted(d for d in root.iterdir() if d.is_dir() and (d / "timestamps.json").exists())
        )
        self.classes = _lulc_names(root / "lulc_classes.py") or _lulc_names(root.parent / "lulc_classes.py")
        recs = []
        for p in patches:
            npy = p / "data" / f"{self.feature}.npy"
            if not npy.exists():
                raise FileNotFoundError(f"{npy}: feature {self.feature!r} missing in EOPatch {p}")
            if self.patch_size is None:
                recs.append({"id": p.name, "path": p, "window": None})
                continue
            _, h, w, _ = np.load(npy, mmap_mode="r").shape
            s = self.patch_size
            recs += [
                {"id": f"{p.name}/{r}_{c}", "path": p, "window": (r * s, c * s, s)}
                for r in range(h // s)
                for c in range(w // s)
            ]
        return recs

    def _load(self, rec: dict[str, Any]) -> Sample:
        p: Path = rec["path"]
        npy = p / "data" / f"{self.feature}.npy"
        _, full_h, full_w, _ = np.load(npy, mmap_mode="r").shape
        r0, c0, s = rec["window"] or (0, 0, max(full_h, full_w))
        window = (r0, c0, s, s)
        data, invalid, days = load_npy_series(npy, p / "timestamps.json", window=window)
        for name, bad_value in ((self.cloud_mask, 1), ("IS_DATA", 0)):
            f = p / "mask" / f"{name}.npy"
            if name and f.exists():
                m = np.load(f, mmap_mode="r")[:, r0 : r0 + s, c0 : c0 + s, 0]  # (T, h, w)
                if m.shape != invalid.shape:
                    raise ValueError(f"{f}: shape {m.shape} differs from {self.feature} {invalid.shape}")
                invalid |= m == bad_value
        if invalid.all():
            raise ValueError(f"{npy}: every pixel of every date is cloud, nodata or NaN")
        data[np.broadcast_to(invalid[:, None], data.shape)] = 0.0
        target = None
        if self.label:
            lab = np.load(p / "mask_timeless" / f"{self.label}.npy", mmap_mode="r")
            lab = lab[r0 : r0 + s, c0 : c0 + s, 0].astype(np.int64)  # (h, w)
            target = np.where(lab == 0, IGNORE_INDEX, lab)
        sample: Sample = {
            "s2": torch.from_numpy(np.ascontiguousarray(data)),
            "s2_invalid": torch.from_numpy(np.ascontiguousarray(invalid)),
            "s2_dates": days,
        }
        if target is not None:
            sample["target"] = torch.from_numpy(np.ascontiguousarray(target))
        bbox = p / "bbox.geojson"
        meta: dict[str, Any] = {"path": str(p), "bands": [self.feature], "units": self.feature}
        if bbox.exists():
            g = _read_json(bbox)
            crs = g["crs"]["properties"]["name"].split("EPSG::")[-1]
            xs, ys = zip(*g["coordinates"][0])
            res_x, res_y = (max(xs) - min(xs)) / full_w, (max(ys) - min(ys)) / full_h
            left, top = min(xs), max(ys)
            if rec["window"] is not None:
                left, top = left + rec["window"][1] * res_x, top - rec["window"][0] * res_y
            meta.update(crs=f"EPSG:{crs}", transform=(res_x, 0.0, left, 0.0, -res_y, top))
            meta.update(width=int(invalid.shape[-1]), height=int(invalid.shape[-2]))
        sample["meta"] = {"s2": meta}
        put_lonlat(sample, lonlat_of(meta))
        return sample


# ----------------------------------------------------------------------------- change detection


def _binary_label(path: Path) -> torch.Tensor:
    r = read_raster(path, allow_empty=True)
    values = set(np.unique(r.data[0]).tolist())
    if not values <= {0.0, 255.0} and not values <= {0.0, 1.0}:
        raise ValueError(f"{path}: change label values {sorted(values)}, expected 0/255 or 0/1")
    return torch.from_numpy(r.data[0] > 0).to(torch.int64)


class ChangeDetection(GeoDataset):
    """Bi-temporal change pairs in the LEVIR-CD layout: ``A/<name>``, ``B/<name>``, ``label/<name>`` (0/255).

    ``hr_pre``, ``hr_post`` (C, H, W) 0-255 with ``*_invalid``; ``target`` int64 (H, W) 0/1. Pairs
    without a label are skipped with a warning naming them (listed in ``unlabelled``) unless
    ``require_label=False`` (their ``target`` is all -1).
    """

    layout = "change_detection"
    expected = "A/, B/ (and label/) folders of equally named images"

    def __init__(self, root: str | Path, require_label: bool = True, **kw: Any) -> None:
        self.require_label = require_label
        super().__init__(root, **kw)

    def _scan(self) -> list[dict[str, Any]]:
        for sub in ("A", "B"):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(f"{self.root / sub}: missing folder of the change-detection layout")
        a = {f.name: f for f in _files(self.root / "A")}
        b = {f.name: f for f in _files(self.root / "B")}
        self.unmatched = sorted(set(a) ^ set(b))
        self.unlabelled = sorted(n for n in a if n in b and not (self.root / "label" / n).exists())
        if self.unlabelled and self.require_label:
            n = len(self.unlabelled)
            warnings.warn(
                f"{self.root}: {n} pair(s) without a label skipped ({', '.join(self.unlabelled[:5])}"
                f"{' ...' * (n > 5)}); pass require_label=False to keep them with target -1",
                stacklevel=3,
            )
        return [
            {"id": Path(n).stem, "A": a[n], "B": b[n], "label": self.root / "label" / n}
            for n in sorted(set(a) & set(b))
            if not self.require_label or n not in self.unlabelled
        ]

    def _load(self, rec: dict[str, Any]) -> Sample:
        sample: Sample = {}
        pre, post = read_image(rec["A"]), read_image(rec["B"])
        if pre.shape != post.shape:
            raise ValueError(
                f"{rec['A']} is {pre.shape}, {rec['B']} is {post.shape}: a change pair must match"
            )
        put_image(sample, "hr_pre", pre)
        put_image(sample, "hr_post", post)
        if rec["label"].exists():
            target = _binary_label(rec["label"])
            if tuple(target.shape) != pre.shape:
                raise ValueError(f"{rec['label']} is {tuple(target.shape)}, images are {pre.shape}")
        else:
            target = torch.full(pre.shape, IGNORE_INDEX, dtype=torch.int64)
        sample["target"] = target
        put_lonlat(sample, lonlat_of(pre.meta))
        return sample


# ----------------------------------------------------------------------------- segmentation


class Segmentation(GeoDataset):
    """Semantic segmentation in the mmseg layout: ``img_dir/**/<name>.<ext>`` + ``ann_dir/**/<name>.png``.

    ``hr`` (C, H, W) 0-255, ``target`` int64 (H, W). ``reduce_zero_label`` (LoveDA: 0 = no-data):
    0 -> -1 and every other class k -> k - 1. ``ignore_values``: label values also mapped to -1
    (e.g. 255). ``num_classes``: where given, any other value (after the mapping) outside
    ``0..num_classes-1`` is an error naming the file and the values. An image without a label map
    is an error naming it, unless ``skip_unlabelled`` (then listed in ``unlabelled``). Sample id:
    path under ``img_dir`` without suffix.
    """

    layout = "segmentation"
    expected = "img_dir/ and ann_dir/ with equally named images and label maps"

    def __init__(
        self,
        root: str | Path,
        reduce_zero_label: bool = False,
        ignore_values: Sequence[int] = (255,),
        num_classes: int | None = None,
        skip_unlabelled: bool = False,
        **kw: Any,
    ) -> None:
        self.reduce_zero_label, self.ignore_values = reduce_zero_label, tuple(ignore_values)
        self.num_classes, self.skip_unlabelled = num_classes, skip_unlabelled
        super().__init__(root, **kw)

    def _scan(self) -> list[dict[str, Any]]:
        img_dir, ann_dir = self.root / "img_dir", self.root / "ann_dir"
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: missing folder of the img_dir/ann_dir segmentation layout")
        anns = {f.relative_to(ann_dir).with_suffix("").as_posix(): f for f in _files(ann_dir, recursive=True)}
        recs, self.unlabelled = [], []
        for f in _files(img_dir, recursive=True):
            key = f.relative_to(img_dir).with_suffix("").as_posix()
            if key in anns:
                recs.append({"id": key, "image": f, "ann": anns[key]})
            else:
                self.unlabelled.append(key)
        if self.unlabelled and not self.skip_unlabelled:
            n = len(self.unlabelled)
            raise ValueError(
                f"{img_dir}: {n} image(s) without a label map in {ann_dir}: "
                f"{', '.join(self.unlabelled[:5])}{' ...' * (n > 5)}; add them, or pass "
                "skip_unlabelled=True to leave these images out"
            )
        return recs

    def _load(self, rec: dict[str, Any]) -> Sample:
        sample: Sample = {}
        img = read_image(rec["image"])
        put_image(sample, "hr", img)
        ann = read_raster(rec["ann"], allow_empty=True)
        if ann.data.shape[0] != 1:
            raise ValueError(
                f"{rec['ann']}: {ann.data.shape[0]} bands; label maps must be single-band class indexes"
            )
        if ann.shape != img.shape:
            raise ValueError(f"{rec['ann']} is {ann.shape}, image {rec['image']} is {img.shape}")
        target = torch.from_numpy(ann.data[0]).to(torch.int64)
        ignore = torch.from_numpy(ann.invalid)
        for v in self.ignore_values:
            ignore |= target == v
        if self.reduce_zero_label:
            ignore |= target == 0
            target = target - 1
        if self.num_classes is not None:
            kept = target[~ignore]
            bad = kept[(kept < 0) | (kept >= self.num_classes)].unique()
            if bad.numel():
                raw = (bad + int(self.reduce_zero_label)).tolist()
                raise ValueError(
                    f"{rec['ann']}: label value(s) {raw[:10]} outside the {self.num_classes} classes "
                    f"(values 0..{self.num_classes - 1}{', after reduce_zero_label' * self.reduce_zero_label}"
                    f"; ignored: {list(self.ignore_values)}); add them to ignore_values or fix num_classes"
                )
        sample["target"] = target.masked_fill(ignore, IGNORE_INDEX)
        put_lonlat(sample, lonlat_of(img.meta))
        return sample


# ----------------------------------------------------------------------------- sits .npz pixel series


class PixelTimeSeries(GeoDataset):
    """sits-style ``.npz`` pixel time series: ``X`` (N, T, C), ``labels`` (N,), ``bands`` (C,), ``lon``,
    ``lat`` (N,), ``dates_first_sample`` (T,).

    ``root``: one ``.npz`` file. Each sample: ``{modality}`` (T, C, 1, 1) float32 (default ``s2``;
    bands such as NDVI/EVI are named in meta), ``{modality}_invalid`` (T, 1, 1) for NaN, dates,
    ``lat``/``lon`` and ``label`` int64 index into ``classes`` (sorted names). Only the first
    sample's dates are stored in these files: all samples get them and ``meta['dates_exact']``
    is True for the first sample only. Sample id: ``<file stem>:<row>``.
    """

    layout = "sits_npz"
    expected = "a .npz with X (N, T, C), labels, bands, lon, lat, dates_first_sample"
    KEYS = ("X", "labels", "bands", "lon", "lat", "dates_first_sample")

    def __init__(self, root: str | Path, modality: str = "s2", **kw: Any) -> None:
        self.modality = modality
        super().__init__(root, **kw)

    def _scan(self) -> list[dict[str, Any]]:
        try:
            with np.load(self.root, allow_pickle=False) as z:
                missing = [k for k in self.KEYS if k not in z.files]
                if missing:
                    raise ValueError(
                        f"{self.root}: missing array(s) {missing} of the sits .npz layout (has {z.files})"
                    )
                arrays = {k: z[k] for k in self.KEYS}
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"{self.root}: cannot read as .npz (truncated or not a numpy archive?): {e}"
            ) from None
        x = arrays["X"]
        if (
            x.ndim != 3
            or x.shape[1] != len(arrays["dates_first_sample"])
            or x.shape[2] != len(arrays["bands"])
        ):
            raise ValueError(
                f"{self.root}: X has shape {x.shape}; expected (N, T={len(arrays['dates_first_sample'])}, "
                f"C={len(arrays['bands'])})"
            )
        self.x = x.astype(np.float32)
        self.days = to_days(
            [parse_date(str(d), f"{self.root} dates_first_sample") for d in arrays["dates_first_sample"]]
        )
        self.bands = [str(b) for b in arrays["bands"]]
        self.classes = sorted({str(v) for v in arrays["labels"]})
        self.labels = [self.classes.index(str(v)) for v in arrays["labels"]]
        self.lon, self.lat = arrays["lon"].astype(np.float64), arrays["lat"].astype(np.float64)
        return [{"id": f"{self.root.stem}:{i}", "row": i} for i in range(len(x))]

    def _load(self, rec: dict[str, Any]) -> Sample:
        i, mod = rec["row"], self.modality
        x = torch.from_numpy(self.x[i].copy())[..., None, None]  # (T, C, 1, 1)
        invalid = torch.isnan(x).any(dim=1)  # (T, 1, 1)
        x = x.nan_to_num(0.0)
        return {
            mod: x,
            f"{mod}_invalid": invalid,
            f"{mod}_dates": self.days.clone(),
            "lon": torch.tensor(self.lon[i], dtype=torch.float64),
            "lat": torch.tensor(self.lat[i], dtype=torch.float64),
            "label": torch.tensor(self.labels[i], dtype=torch.int64),
            "meta": {
                mod: {"path": str(self.root), "bands": self.bands, "units": "index"},
                "class": self.classes[self.labels[i]],
                "dates_exact": i == 0,
            },
        }


__all__ = [
    "BIGEARTHNET_LABELS",
    "BigEarthNetMM",
    "ChangeDetection",
    "EOPatchDataset",
    "GeoDataset",
    "PixelTimeSeries",
    "SceneClassification",
    "Segmentation",
    "Sen1Floods11",
    "find_s2_band_files",
    "read_timestamps",
]
