"""``skysense demo``: the main job end to end on a small default (``make demo``).

1. Pre-train the ``tiny`` ``hr`` encoder briefly on the AID train split (the recipe of
   ``configs/pretrain/aid_hr_cpu.yaml``: MGCL with an EMA teacher), writing ``metrics.csv``,
   ``loss_curve.png`` and the checkpoint under ``<out>/pretrain``.
2. Linear-probe its frozen teacher against the same network at its random initialisation on the
   AID hash split (:mod:`skysense.linear_probe`); print the overall accuracies, write a bar chart
   and the confusion matrix. ``bench/linear_probe.py`` is the long version of this.
3. Run the multi-modal path on real Sentinel data: the Sen1Floods11 chip (S2 + S1, their dates, the
   chip's location) tiled into 64 px windows and fused; write a quick-look PNG (inputs next to a PCA
   of the fused features).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from skysense.data.root import data_root


def load_sen1floods11(root: Path) -> dict[str, Any]:
    """The Sen1Floods11 chip, normalised (spec statistics), plus raw RGB / VV for the quick look."""
    from skysense.data.datasets import Sen1Floods11
    from skysense.data.transforms import Normalize

    raw = Sen1Floods11(root / "sen1floods11")[0]
    sample = Normalize()(raw)
    lon, lat = float(raw["lon"]), float(raw["lat"])
    s2_bands = list(raw["meta"]["s2"]["bands"])
    rgb = raw["s2"][0, [s2_bands.index(b) for b in ("B4", "B3", "B2")]].permute(1, 2, 0).numpy()
    return {
        "chip": raw["meta"]["id"],
        "s2": sample["s2"],
        "s1": sample["s1"],
        "s2_dates": sample["s2_dates"],
        "s1_dates": sample["s1_dates"],
        "lat": lat,
        "lon": lon,
        "rgb": rgb,
        "vv": raw["s1"][0, 0].numpy(),
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
    """``count`` AID scenes spread over the classes, normalised: (count, 3, H, W) and class names."""
    from skysense.data.datasets import SceneClassification
    from skysense.data.transforms import Normalize

    ds = SceneClassification(root / "aid", transforms=Normalize())
    picks = [ds[i] for i in range(0, len(ds), max(1, len(ds) // count))][:count]
    return torch.stack([p["hr"] for p in picks]), [p["meta"]["class"] for p in picks]


def run_demo(root: Path, out_dir: Path, preset: str = "tiny", tile: int = 64) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skysense.models.skysense import build_model

    if not (root / "sen1floods11").is_dir():
        raise FileNotFoundError(
            f"no real data at {root}: set SKYSENSE_DATA to the folder holding sen1floods11/ and aid/"
        )
    torch.manual_seed(0)
    model = build_model(preset).eval()
    sample = load_sen1floods11(root)
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

    images, classes = load_aid(root, 4)
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


CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "aid_hr_cpu.yaml"


def pretrain_and_probe(root: Path, out_dir: Path, steps: int, per_class_train: int = 0) -> dict[str, Any]:
    """Steps 1-2 of the module doc: returns the OAs, the split sizes and the output paths."""
    from skysense.data.scenes import PROBE_FRACTIONS, load_scenes, per_class
    from skysense.linear_probe import hr_features, plot_bars, plot_confusion, probe_splits
    from skysense.models.skysense import build_model
    from skysense.pretrain.cli import load_config
    from skysense.pretrain.trainer import CKPT, load_encoder, model_config, train

    if not (root / "aid").is_dir():
        raise FileNotFoundError(
            f"no AID scenes at {root / 'aid'}: set SKYSENSE_DATA to the shared data folder"
        )
    run = out_dir / "pretrain"
    overrides = [
        f"out_dir={run}",
        f"steps={steps}",
        f"warmup_steps={max(1, steps // 10)}",
        f"teacher_temp_warmup_steps={steps // 5}",
        f"ckpt_every={steps}",
        f"data.root={root}",
    ]
    cfg: Any = load_config(CONFIG, overrides)
    print(
        f"[1/3] pre-training tiny hr encoder on AID train, {steps} steps of {cfg.batch_size} ...", flush=True
    )
    start = time.perf_counter()
    train(cfg)
    pretrain_s = time.perf_counter() - start

    print("[2/3] linear probe on frozen features (AID hash split) ...", flush=True)
    splits = {
        s: load_scenes(root / "aid", s, cfg.data.hr_tile, progress=False) for s in ("train", "val", "test")
    }
    splits["train"] = per_class(splits["train"], per_class_train)
    torch.manual_seed(cfg.seed)  # the trainer's initialisation: the random-init reference
    encoders = {"random init": build_model(model_config(cfg)).eval(), "pre-trained": load_encoder(run / CKPT)}
    results, confusion = {}, None
    for name, enc in encoders.items():
        r = probe_splits({s: hr_features(enc, d.images) for s, d in splits.items()}, splits)
        results[name] = r.oa
        confusion = r.confusion
    plot_bars(results, out_dir / "linear_probe_oa.png", f"AID linear probe after {steps} steps")
    assert confusion is not None
    plot_confusion(confusion, splits["train"].classes, out_dir / "confusion_pretrained.png")
    return {
        "pretrain_steps": steps,
        "pretrain_seconds": round(pretrain_s, 1),
        "loss_first_last": _first_last_loss(run / "metrics.csv"),
        "aid_split": f"{PROBE_FRACTIONS} -> " + ", ".join(f"{s} {len(d.ids)}" for s, d in splits.items()),
        "probe_oa_random_init": round(results["random init"], 4),
        "probe_oa_pretrained": round(results["pre-trained"], 4),
        "probe_png": str(out_dir / "linear_probe_oa.png"),
        "loss_png": str(run / "loss_curve.png"),
    }


def _first_last_loss(path: Path) -> list[float]:
    import csv

    with path.open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    return [round(losses[0], 3), round(losses[-1], 3)]


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    root, out = Path(args.data) if args.data else data_root(), Path(args.out)
    summary = pretrain_and_probe(root, out, args.steps, args.per_class)
    print("[3/3] multi-modal S2 + S1 path on the Sen1Floods11 chip ...", flush=True)
    summary.update(run_demo(root, out, args.preset))
    for key, value in summary.items():
        print(f"{key:>24}: {value}")
    gain = 100 * (summary["probe_oa_pretrained"] - summary["probe_oa_random_init"])
    print(
        f"\npre-training moved the linear-probe OA by {gain:+.1f} points over random init "
        f"({args.steps} steps; bench/linear_probe.py runs the full budget)"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="pre-train briefly on AID, linear-probe it, run real S1+S2 through the encoder; plots"
    )
    p.add_argument("--steps", type=int, default=200, help="pre-training steps (default 200, ~1.5 min)")
    p.add_argument("--per-class", type=int, default=0, help="probe train scenes per class (0 = all)")
    p.add_argument("--preset", default="tiny", help="model preset of the S1+S2 quick look (default tiny)")
    p.add_argument("--data", default=None, help="data root (default: $SKYSENSE_DATA or ../shared/data)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_run)
