"""``skysense demo``: the main job end to end on a small default (``make demo``).

Runs real imagery from ``shared/data`` through the ``tiny`` encoder: the Sen1Floods11 chip
(Sentinel-2 + Sentinel-1, their acquisition dates and the chip's location) tiled into 64 px
windows and fused, and a few AID scenes through the ``hr`` path; prints a summary and writes a
quick-look PNG (inputs next to a PCA of the fused features).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from skysense.dates import to_days

# Spec Sec. 1 statistics (L2A DN for S2, dB for S1, 0-255 for hr).
S2_MEAN = [884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65, 2368.51, 1805.07]
S2_STD = [1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31, 1455.52, 1343.48]
S1_MEAN, S1_STD = [-12.548, -20.192], [5.257, 5.912]
HR_MEAN, HR_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
S2_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


def default_data_root() -> Path:
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("SKYSENSE_DATA", repo.parent / "shared" / "data"))


def _normalise(x: np.ndarray, mean: list[float], std: list[float]) -> Tensor:
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy((x.astype(np.float32) - m) / s)


def load_sen1floods11(root: Path) -> dict[str, Any]:
    """The Sen1Floods11 chip as one sample: s2 (1, 10, H, W), s1 (1, 2, H, W), dates, lat/lon."""
    import rasterio

    base = root / "sen1floods11"
    s2_path = next((base / "S2").glob("*_S2Hand.tif"))
    s1_path = next((base / "S1").glob("*_S1Hand.tif"))
    with rasterio.open(s2_path) as src:
        names = list(src.descriptions)
        s2 = src.read([names.index(b) + 1 for b in S2_BANDS]).astype(np.float32)
        bounds = src.bounds
    with rasterio.open(s1_path) as src:
        s1 = src.read().astype(np.float32)
    invalid = ~np.isfinite(s1).all(0)
    s1 = np.nan_to_num(s1, nan=0.0)
    chip = s2_path.name.split("_S2Hand")[0]
    meta = json.loads((base / "Sen1Floods11_Metadata.geojson").read_text())
    # Chip ids are "<Location>_<number>"; the metadata has one entry per location.
    props = next(
        f["properties"] for f in meta["features"] if f["properties"]["location"] == chip.split("_")[0]
    )
    s1n = _normalise(s1, S1_MEAN, S1_STD)
    s1n[:, torch.from_numpy(invalid)] = 0.0
    return {
        "chip": chip,
        "s2": _normalise(s2, S2_MEAN, S2_STD)[None],
        "s1": s1n[None],
        "s2_dates": to_days([props["s2_date"]]),
        "s1_dates": to_days([props["s1_date"]]),
        "lat": (bounds.bottom + bounds.top) / 2,
        "lon": (bounds.left + bounds.right) / 2,
        "rgb": s2[[2, 1, 0]].transpose(1, 2, 0),
        "vv": s1[0],
    }


def tile_batch(sample: dict[str, Any], tile: int) -> dict[str, Tensor]:
    """Cut the chip into non-overlapping tile x tile windows: a batch of geo-aligned samples."""
    s2, s1 = sample["s2"], sample["s1"]
    rows, cols = s2.shape[-2] // tile, s2.shape[-1] // tile

    def cut(x: Tensor) -> Tensor:  # (T, C, H, W) -> (rows*cols, T, C, tile, tile)
        x = x[..., : rows * tile, : cols * tile].unfold(-2, tile, tile).unfold(-2, tile, tile)
        return x.permute(2, 3, 0, 1, 4, 5).reshape(rows * cols, *x.shape[:2], tile, tile)

    n = rows * cols
    return {
        "s2": cut(s2),
        "s1": cut(s1),
        "s2_dates": sample["s2_dates"].expand(n, -1),
        "s1_dates": sample["s1_dates"].expand(n, -1),
        "lat": torch.full((n,), sample["lat"], dtype=torch.float64),
        "lon": torch.full((n,), sample["lon"], dtype=torch.float64),
    }


def pca_rgb(features: Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) in [0, 1]: the first three principal components, for a quick look."""
    c, h, w = features.shape
    x = features.reshape(c, -1).t().double()
    x = x - x.mean(0)
    _, _, v = torch.pca_lowrank(x, q=3, center=False)
    y = x @ v[:, :3]
    lo, hi = y.quantile(0.02, dim=0), y.quantile(0.98, dim=0)
    return ((y - lo) / (hi - lo + 1e-12)).clamp(0, 1).reshape(h, w, 3).numpy()


def load_aid(root: Path, count: int) -> tuple[Tensor, list[str]]:
    from PIL import Image

    files = sorted((root / "aid").glob("*/*.jpg"))[
        :: max(1, len(list((root / "aid").glob("*/*.jpg"))) // count)
    ]
    files = files[:count]
    imgs = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) for f in files]
    return torch.stack([_normalise(i, HR_MEAN, HR_STD) for i in imgs]), [f.parent.name for f in files]


def run_demo(data_root: Path, out_dir: Path, preset: str = "tiny", tile: int = 64) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skysense.models.skysense import build_model

    if not (data_root / "sen1floods11").is_dir():
        raise FileNotFoundError(
            f"no real data at {data_root}: set SKYSENSE_DATA to the folder holding sen1floods11/ and aid/"
        )
    torch.manual_seed(0)
    model = build_model(preset).eval()
    sample = load_sen1floods11(data_root)
    batch = tile_batch(sample, tile)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    seconds = time.perf_counter() - start
    n, rows = batch["s2"].shape[0], sample["s2"].shape[-2] // tile
    fused = out["fused"].float()  # (N, C, g, g)
    g = fused.shape[-1]
    mosaic = fused.reshape(rows, n // rows, fused.shape[1], g, g).permute(2, 0, 3, 1, 4)
    mosaic = mosaic.reshape(fused.shape[1], rows * g, (n // rows) * g)

    images, classes = load_aid(data_root, 4)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        hr_out = model({"hr": images})
    summary = {
        "preset": preset,
        "chip": sample["chip"],
        "tiles": n,
        "tile_px": tile,
        "s2_date": str(np.datetime64(int(sample["s2_dates"][0]), "D")),
        "s1_date": str(np.datetime64(int(sample["s1_dates"][0]), "D")),
        "lat_lon": [round(sample["lat"], 5), round(sample["lon"], 5)],
        "region": int(out["region"][0]),
        "fused_shape": list(out["fused"].shape),
        "fused_std": float(fused.std()),
        "s2_s1_seconds_bf16": round(seconds, 3),
        "aid_classes": classes,
        "hr_pyramid": [list(p.shape) for p in hr_out["hr"]],
        "hr_fused_shape": list(hr_out["fused"].shape),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    rgb = sample["rgb"]
    axes[0].imshow(np.clip(rgb / np.percentile(rgb, 98), 0, 1))
    axes[0].set_title(f"S2 RGB {summary['s2_date']}")
    axes[1].imshow(sample["vv"], cmap="gray", vmin=-25, vmax=0)
    axes[1].set_title(f"S1 VV dB {summary['s1_date']}")
    axes[2].imshow(pca_rgb(mosaic))
    axes[2].set_title(f"fused features, PCA ({preset}, random init)")
    axes[3].imshow(pca_rgb(hr_out["hr"][0][0].float()))
    axes[3].set_title(f"hr stage-1 PCA: AID {classes[0]}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    png = out_dir / "demo_quicklook.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    summary["png"] = str(png)
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    summary = run_demo(Path(args.data) if args.data else default_data_root(), Path(args.out), args.preset)
    for key, value in summary.items():
        print(f"{key:>20}: {value}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run real S1+S2 and hr data through the encoder; write a quick-look PNG")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--data", default=None, help="data root (default: $SKYSENSE_DATA or ../shared/data)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_run)
