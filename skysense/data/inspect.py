"""Layout detection and inspection of a data folder or file: what the library will see, and what is wrong.

:func:`detect_layout` recognises the layouts of :mod:`skysense.data.datasets` (and plain rasters),
:func:`open_dataset` builds the matching dataset, :func:`inspect` reports samples, modalities,
bands, sizes, dates, classes, CRS and problems as a JSON-able dict.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from skysense.config import MODALITIES as MODALITY_DIRS
from skysense.data.checks import raster_problems
from skysense.data.datasets import (
    IMAGE_SUFFIXES,
    BigEarthNetMM,
    ChangeDetection,
    EOPatchDataset,
    GeoDataset,
    PixelTimeSeries,
    SceneClassification,
    Segmentation,
    Sen1Floods11,
    lonlat_of,
    put_image,
    put_lonlat,
)
from skysense.data.readers import (
    RASTER_SUFFIXES,
    date_of_file,
    find_s2_band_files,
    open_raster,
    raster_meta,
    read_raster,
    read_s1,
    read_s2_bandset,
)
from skysense.dates import from_days

FILE_LAYOUTS = ("rasters", "sits_npz")  # the layouts that read a single file
DATASETS: dict[str, type[GeoDataset]] = {
    "scene_classification": SceneClassification,
    "bigearthnet_mm": BigEarthNetMM,
    "sen1floods11": Sen1Floods11,
    "eopatch": EOPatchDataset,
    "change_detection": ChangeDetection,
    "segmentation": Segmentation,
    "sits_npz": PixelTimeSeries,
}


def _subdirs(path: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def _has_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    return any(f.suffix.lower() in suffixes for f in folder.iterdir() if f.is_file())


def detect_layout(path: str | Path) -> str | None:
    """Name of the layout at ``path`` (a key of :data:`DATASETS`, ``pretrain``, ``rasters``) or None."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    if path.is_file():
        if path.suffix == ".npz":
            return "sits_npz"
        return "rasters" if path.suffix.lower() in RASTER_SUFFIXES else None
    subs = _subdirs(path)
    lower = {k.lower(): v for k, v in subs.items()}
    if (path / "timestamps.json").exists() or any((d / "timestamps.json").exists() for d in subs.values()):
        return "eopatch"
    if "S1" in subs and any(subs["S1"].glob("*_S1Hand.tif")):
        return "sen1floods11"
    if {"s2", "s1"} & set(subs) and any(
        any(p.glob("*_B02.tif")) or any(p.glob("*_VV.tif"))
        for k in ("s2", "s1")
        if k in subs
        for p in _subdirs(subs[k]).values()
    ):
        return "bigearthnet_mm"
    if "A" in subs and "B" in subs:
        return "change_detection"
    if "img_dir" in subs and "ann_dir" in subs:
        return "segmentation"
    if set(lower) & set(MODALITY_DIRS) and all(
        _has_files(lower[m], RASTER_SUFFIXES) for m in set(lower) & set(MODALITY_DIRS)
    ):
        return "pretrain"
    if (
        subs
        and not _has_files(path, IMAGE_SUFFIXES)
        and sum(_has_files(d, IMAGE_SUFFIXES) for d in subs.values()) >= 2
    ):
        if all(not _subdirs(d) for d in subs.values()):
            return "scene_classification"
    bandset = _bandset_layout(path)
    if bandset is not None:
        return bandset
    if _has_files(path, RASTER_SUFFIXES):
        return "rasters"
    return None


def _bandset_layout(path: Path) -> str | None:
    """``s2_bandset`` (a SAFE product or granule, a folder of ``*_B02.tif``...), ``s1_patch`` (a folder
    of ``*_VV.tif`` and ``*_VH.tif``) or None: one sample's folder, given directly."""
    try:
        if find_s2_band_files(path):
            return "s2_bandset"
    except ValueError:  # several granules or two files of one band: the reader's error is the report
        return "s2_bandset"
    pols = {f.stem.upper()[-3:] for f in path.iterdir() if f.suffix.lower() in RASTER_SUFFIXES}
    return "s1_patch" if {"_VV", "_VH"} & pols else None


class RasterFiles(GeoDataset):
    """Loose rasters, one sample per file: a GeoTIFF (PNG, JPEG...) or a folder of them.

    ``{modality}`` (C, H, W) in the file's units (``hr`` unless ``modality`` says otherwise: the key under
    which ``skysense stats`` stores the statistics), ``{modality}_invalid`` (H, W), ``lat``/``lon`` of a
    georeferenced file's centre. Sample id: the file name.
    """

    layout = "rasters"
    expected = "a raster file (.tif, .png, .jpg ...) or a folder of them"

    def __init__(self, root: str | Path, modality: str = "hr", **kw: Any) -> None:
        if modality not in MODALITY_DIRS:
            raise ValueError(f"modality {modality!r}: use one of {', '.join(MODALITY_DIRS)}")
        self.modality = modality
        super().__init__(root, **kw)

    def _scan(self) -> list[dict[str, Any]]:
        if self.root.is_file():
            files = [self.root] if self.root.suffix.lower() in RASTER_SUFFIXES else []
        else:
            files = sorted(
                f for f in self.root.iterdir() if f.suffix.lower() in RASTER_SUFFIXES and f.is_file()
            )
        return [{"id": f.name, "path": f} for f in files]

    def _load(self, rec: dict[str, Any]) -> dict[str, Any]:
        sample: dict[str, Any] = {}
        r = read_raster(rec["path"])
        put_image(sample, self.modality, r)
        put_lonlat(sample, lonlat_of(r.meta))
        return sample


def open_dataset(path: str | Path, layout: str | None = None, **kwargs: Any) -> GeoDataset:
    """The dataset for ``path`` (layout detected unless given); ``kwargs`` go to its constructor."""
    path = Path(path)
    layout = layout or detect_layout(path)
    known = [*DATASETS, "pretrain", "rasters"]
    if layout not in known:
        raise ValueError(f"{path}: no dataset layout recognised (got {layout!r}); known: {', '.join(known)}")
    if path.is_file() and layout not in FILE_LAYOUTS:
        raise ValueError(
            f"{path} is a file, but the {layout} layout reads a folder; a single raster is the rasters "
            "layout (leave --layout out, or pass --layout rasters)"
        )
    if layout == "pretrain":
        from skysense.data.pretrain import PretrainDataset

        return PretrainDataset(path, **kwargs)
    if layout == "rasters":
        return RasterFiles(path, **kwargs)
    return DATASETS[layout](path, **kwargs)


def spread(n: int, k: int) -> list[int]:
    """``min(k, n)`` evenly spaced indexes of ``range(n)``, first and last included."""
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _inspect_rasters(path: Path) -> dict[str, Any]:
    files = (
        [path] if path.is_file() else sorted(f for f in path.iterdir() if f.suffix.lower() in RASTER_SUFFIXES)
    )
    out: dict[str, Any] = {
        "path": str(path),
        "layout": "rasters",
        "num_samples": len(files),
        "files": [],
        "problems": [],
    }
    for f in files:
        try:
            with open_raster(f) as ds:
                m = raster_meta(ds, f)
                m.update(count=ds.count, bounds=tuple(ds.bounds) if m["transform"] else None)
                if m["res"]:  # 28.49999999927454 -> 28.5: six significant digits
                    m["res"] = tuple(float(f"{r:.6g}") for r in m["res"])
            try:
                m["date"] = date_of_file(f).isoformat()
            except ValueError:
                m["date"] = None
            m["usable"], problems = raster_problems(f)  # what the readers would refuse or note
            out["files"].append(m)
            out["problems"] += problems
        except (ValueError, FileNotFoundError) as e:
            out["problems"].append(str(e))
    out["usable"] = sum(m["usable"] for m in out["files"])
    crs = sorted({str(m["crs"]) for m in out["files"]})
    out["crs"] = crs
    if len(crs) > 1:
        out["problems"].append(f"files in {len(crs)} different CRS: {[_short(c) for c in crs]}")
    return out


def _inspect_bandset(path: Path, layout: str) -> dict[str, Any]:
    """One Sentinel-2 band set (SAFE product too) or Sentinel-1 patch folder, read by its reader."""
    out: dict[str, Any] = {"path": str(path), "layout": layout, "num_samples": 1, "problems": []}
    try:
        r = read_s2_bandset(path) if layout == "s2_bandset" else read_s1(_s1_files(path))
    except (ValueError, FileNotFoundError) as e:
        out.update(usable=0, problems=[str(e)])
        return out
    m = r.meta
    out["modalities"] = {
        "s2" if layout == "s2_bandset" else "s1": {
            "bands": m["bands"],
            "units": m["units"],
            "shapes": [list(r.data.shape)],
            "invalid_fraction_mean": round(float(r.invalid.mean()), 4),
        }
    }
    out.update(usable=1, crs=[m["crs"]] if m.get("crs") else [])
    if m.get("date"):
        out["date"] = m["date"]
    return out


def _s1_files(path: Path) -> list[Path]:
    pols = ("_VV", "_VH")
    return sorted(
        f for f in path.iterdir() if f.suffix.lower() in RASTER_SUFFIXES and f.stem.upper()[-3:] in pols
    )


def usable(report: dict[str, Any]) -> int:
    """Samples (files) of a report that the readers accept, summed over a collection's children."""
    if report.get("layout") == "collection":
        return sum(usable(c) for c in report["children"])
    return int(report.get("usable", report.get("num_samples", 0)))


def inspect(
    path: str | Path, layout: str | None = None, max_samples: int = 8, **kwargs: Any
) -> dict[str, Any]:
    """Report on ``path``: layout, samples, modalities, bands, sizes, dates, classes, CRS, problems.

    Reads up to ``max_samples`` samples spread over the dataset (0: every sample). A folder holding
    several layouts (e.g. ``shared/data``) is reported child by child under ``children``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    if path.is_dir() and not any(path.iterdir()):
        raise ValueError(f"{path}: empty folder, nothing to inspect")
    layout = layout or detect_layout(path)
    if layout is None and path.is_dir():
        return _inspect_collection(path, max_samples)
    if layout == "rasters":
        return _json_safe(_inspect_rasters(path))
    if layout in ("s2_bandset", "s1_patch"):
        return _json_safe(_inspect_bandset(path, layout))
    if layout == "segmentation":  # images without a label map: listed as a problem, not raised
        kwargs.setdefault("skip_unlabelled", True)
    ds = open_dataset(path, layout, **kwargs)
    report: dict[str, Any] = {"path": str(path), "layout": layout, "num_samples": len(ds), "problems": []}
    report["problems"] += _dataset_problems(ds, path)
    classes = getattr(ds, "classes", None)
    if classes is not None:
        report["classes"] = list(classes)
    if isinstance(ds, SceneClassification):
        report["class_counts"] = dict(Counter(ds.classes[r["label"]] for r in ds.records))
    picks = spread(len(ds), max_samples if max_samples > 0 else len(ds))
    report.update(_sample_summary(ds, picks, report["problems"]))
    return _json_safe(report)


def _inspect_collection(path: Path, max_samples: int) -> dict[str, Any]:
    """A folder of several layouts (e.g. ``shared/data``): one report per child that has one."""
    children = []
    for d in [*_subdirs(path).values(), *sorted(path.glob("*.npz"))]:
        nested = [*_subdirs(d).values(), *sorted(d.glob("*.npz"))] if d.is_dir() else []
        kids = nested if d.is_dir() and detect_layout(d) is None else [d]
        for k in kids:
            if (k.is_file() or any(k.iterdir())) and detect_layout(k) is not None:
                children.append(inspect(k, max_samples=max_samples))
    if not children:
        raise ValueError(
            f"{path}: no known data layout here or in its subfolders (known: {', '.join(DATASETS)})"
        )
    return {"path": str(path), "layout": "collection", "children": children}


def _dataset_problems(ds: Any, path: Path) -> list[str]:
    """What the dataset skipped or kept aside while scanning (unpaired, unlabelled, empty classes)."""
    problems = []
    for attr in ("unpaired_s1", "unmatched", "unlabelled", "empty_classes"):
        items = getattr(ds, attr, None)
        if items:
            problems.append(f"{attr.replace('_', ' ')}: {len(items)} ({', '.join(items[:5])})")
    if isinstance(ds, ChangeDetection) and ds.unlabelled:
        for rec in ChangeDetection(path, require_label=False).records:
            if rec["label"].exists():
                continue
            try:
                ds._load(rec)
            except (ValueError, FileNotFoundError) as e:
                problems.append(f"unlabelled pair {rec['id']}: {e}")
    return problems


def _sample_summary(ds: Any, picks: list[int], problems: list[str]) -> dict[str, Any]:
    """Read the samples ``picks``: modalities (bands, units, shapes, invalid fraction), CRS, dates, target
    values; a sample the readers refuse, or one almost all invalid, goes to ``problems``."""
    # pixel series (MODIS, Landsat ... indices) go to the temporal encoder's s2 input, but are no Sentinel-2
    series = {ds.modality: "series"} if isinstance(ds, PixelTimeSeries) else {}
    mods: dict[str, dict[str, Any]] = {}
    crs: set[str] = set()
    dates: dict[str, set[str]] = {}
    targets: Counter[int] = Counter()
    out: dict[str, Any] = {}
    failed = 0
    for i in tqdm(picks, desc="inspect", unit="sample", disable=len(picks) < 100):
        try:
            s = ds[i]
        except (ValueError, FileNotFoundError) as e:
            problems.append(f"sample {ds.ids[i]}: {e}")
            failed += 1
            continue
        for key, v in s.items():
            if key in ("hr", "s2", "s1", "hr_pre", "hr_post"):
                m = s["meta"].get(key, {})
                info = mods.setdefault(
                    series.get(key, key),
                    {"bands": m.get("bands"), "units": m.get("units"), "shapes": set(), "invalid": []},
                )
                if key in series:
                    info["read_as"] = key
                info["shapes"].add(tuple(v.shape))
                info["invalid"].append(float(s[f"{key}_invalid"].float().mean()))
                if m.get("crs"):
                    crs.add(m["crs"])
                if f"{key}_dates" in s:
                    days = from_days(s[f"{key}_dates"])
                    dates.setdefault(series.get(key, key), set()).update(d.isoformat() for d in days)
            if key == "target":
                targets.update(np.unique(v.numpy()).tolist())
        if s.get("meta", {}).get("dates_exact") is False and "dates approximate" not in out:
            out["dates approximate"] = "only the first sample's dates are stored; others reuse them"
    for key, info in mods.items():
        info["shapes"] = sorted(info["shapes"])
        frac = info.pop("invalid")
        info["invalid_fraction_mean"] = round(float(np.mean(frac)), 4)
        if max(frac) > 0.99:
            problems.append(f"{key}: a sample with more than 99% invalid pixels")
    out.update(
        samples_checked=len(picks),
        usable=len(picks) - failed,
        modalities=mods,
        dates={k: {"first": min(v), "last": max(v), "distinct": len(v)} for k, v in dates.items()},
        crs=sorted(crs),
    )
    if targets:
        out["target_values"] = sorted(int(t) for t in targets)
    return out


def _short(crs: str | None) -> str:
    if crs is None or len(crs) < 40:
        return str(crs)
    name = crs.split('"')[1] if '"' in crs else crs[:37]
    return f"WKT {name!r}"


def format_report(report: dict[str, Any], indent: str = "") -> str:
    """Human-readable text of an :func:`inspect` report."""
    if report.get("layout") == "collection":
        lines = [f"{indent}{report['path']}: {len(report['children'])} datasets"]
        return "\n".join(lines + [format_report(c, indent + "  ") for c in report["children"]])
    lines = [
        f"{indent}{report['path']}",
        f"{indent}  layout: {report['layout']}",
        f"{indent}  samples: {report['num_samples']}",
    ]
    if "usable" in report:
        checked = report.get("samples_checked", report["num_samples"])
        lines.append(f"{indent}  usable: {report['usable']} of {checked}")
    if report["layout"] == "rasters":
        for f in report["files"]:
            lines.append(
                f"{indent}  - {Path(f['path']).name}: {f['count']}x{f['height']}x{f['width']} {f['dtype']}, "
                f"crs {_short(f['crs'])}, res {f['res']}, nodata {f['nodata']}, date {f['date']}"
            )
    for key, info in report.get("modalities", {}).items():
        shapes = ", ".join("x".join(map(str, s)) for s in info["shapes"])
        read_as = f", read as the model's {info['read_as']} input" if info.get("read_as") else ""
        lines.append(
            f"{indent}  {key}: bands {info['bands']} ({info['units']}), shape {shapes}, "
            f"invalid {100 * info['invalid_fraction_mean']:.1f}%{read_as}"
        )
    for key, d in report.get("dates", {}).items():
        lines.append(
            f"{indent}  {key} dates: {d['first']} .. {d['last']} ({d['distinct']} distinct, checked samples)"
        )
    if report.get("classes") is not None:
        cls = report["classes"]
        lines.append(
            f"{indent}  classes ({len(cls)}): {', '.join(map(str, cls[:12]))}{' ...' * (len(cls) > 12)}"
        )
    if report.get("target_values"):
        lines.append(f"{indent}  target values: {report['target_values']}")
    if report.get("crs"):
        lines.append(f"{indent}  crs: {', '.join(_short(s) for s in report['crs'])}")
    if report.get("dates approximate"):
        lines.append(f"{indent}  note: {report['dates approximate']}")
    for p in report.get("problems", []):
        lines.append(f"{indent}  PROBLEM: {p}")
    return "\n".join(lines)
