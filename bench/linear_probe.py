"""Does pre-training learn? Linear probes on AID of the tiny hr encoder: pre-trained vs random vs ablation.

    python bench/linear_probe.py                     # the recorded run (~35 min on 2 CPU threads)
    python bench/linear_probe.py --steps 100 --quick # a smoke run

1. Pre-train ``configs/pretrain/aid_hr_cpu.yaml`` (full MGCL: pixel + object + image levels) and the
   image-level-only ablation (``pretrain.loss.pix/obj = false``) for the same number of steps on the
   AID train split (hash split of ``skysense/data/scenes.py``: 60/10/30 % train/val/test). Runs
   resume from their checkpoints, so an interrupted benchmark continues where it stopped.
2. Freeze the teachers and the same architecture at its random initialisation (the seed the
   pre-training starts from); probe each (``skysense/linear_probe.py``) at 64 px (the view size)
   and 128 px. Also probe the hand-crafted colour + LBP descriptor.
3. Print a table; write ``bench/results/linear_probe.json`` and, in the output folder, bar and
   confusion-matrix PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from skysense.data.root import data_root  # noqa: E402
from skysense.data.scenes import PROBE_FRACTIONS, load_scenes  # noqa: E402
from skysense.linear_probe import (  # noqa: E402
    handcrafted_features,
    hr_features,
    plot_bars,
    plot_confusion,
    probe_splits,
)
from skysense.models.skysense import build_model  # noqa: E402
from skysense.pretrain.cli import load_config  # noqa: E402
from skysense.pretrain.trainer import CKPT, load_checkpoint, load_encoder, model_config, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs/pretrain/aid_hr_cpu.yaml"
VARIANTS = {"full": [], "image_only": ["pretrain.loss.pix=false", "pretrain.loss.obj=false"]}


def pretrain(name: str, args: argparse.Namespace) -> tuple[Any, float]:
    """Run (or resume, or reuse) one pre-training; returns (config, seconds of training steps)."""
    out = Path(args.out) / name
    overrides = [*VARIANTS[name], f"out_dir={out}", f"steps={args.steps}"]
    if args.local_crops:
        overrides.append(f"pretrain.views.local_crops={args.local_crops}")
    if args.batch:
        overrides.append(f"batch_size={args.batch}")
    cfg = load_config(CONFIG, overrides)
    cfg = dataclasses.replace(cfg, progress=not args.quiet)
    done = 0
    if (out / CKPT).exists():
        done = int(load_checkpoint(out / CKPT)["step"])
    if done < cfg.steps:
        print(f"pre-training {name}: steps {done} -> {cfg.steps}")
        train(cfg, resume=True)
    import csv

    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return cfg, sum(float(r["time"]) for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=0, help="override the config's batch size")
    p.add_argument("--out", default=str(REPO / "runs/bench/linear_probe"))
    p.add_argument("--sizes", default="64,128", help="probe input sizes")
    p.add_argument("--local-crops", type=int, default=0, help="DINO multi-crop: local views per sample")
    p.add_argument("--variants", default=",".join(VARIANTS), help="pre-trainings to run and probe")
    p.add_argument("--quick", action="store_true", help="smoke run: no JSON in bench/results")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    common.setup()
    root = data_root() / "aid"
    if not root.is_dir():
        sys.exit(f"AID not found at {root}: set SKYSENSE_DATA to the shared data folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    splits = {s: load_scenes(root, s, 128, progress=not args.quiet) for s in ("train", "val", "test")}
    classes = splits["train"].classes
    print(f"AID hash split {PROBE_FRACTIONS}: " + ", ".join(f"{s} {len(d.ids)}" for s, d in splits.items()))
    print(f"loaded in {time.perf_counter() - t0:.0f} s")

    encoders, budgets, cfg = {}, {}, None
    for name in args.variants.split(","):
        cfg, seconds = pretrain(name, args)
        budgets[name] = seconds
        encoders[f"pretrained ({name})"] = load_encoder(Path(args.out) / name / CKPT)
    assert cfg is not None
    torch.manual_seed(cfg.seed)  # the trainer's initialisation
    encoders["random init"] = build_model(model_config(cfg)).eval()

    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    best: dict[str, Any] = {}
    probes = [(int(size), "last") for size in args.sizes.split(",")] + [(128, "all")]
    for name, enc in encoders.items():
        for size, stages in probes:
            feats = {s: hr_features(enc, d.images, size, stages=stages) for s, d in splits.items()}
            r = probe_splits(feats, splits)
            key = f"{name} @ {size}px" + (", all stages" if stages == "all" else "")
            results[key] = {"oa": r.oa, "val_oa": r.val_oa, "C": r.c, "dim": feats["train"].shape[1]}
            row = {"features": key, "dim": feats["train"].shape[1], "C": r.c}
            rows.append(row | {"val OA": f"{100 * r.val_oa:.1f}", "test OA": f"{100 * r.oa:.1f}"})
            print(f"{key}: test OA {100 * r.oa:.1f} (val {100 * r.val_oa:.1f}, C {r.c})", flush=True)
            if name.startswith("pretrained (full)") and r.oa > best.get("oa", -1):
                best = {"oa": r.oa, "cm": r.confusion, "key": key}
    cache = out / "handcrafted_128.npz"  # LBP takes minutes and never changes: computed once
    if cache.exists():
        hand = dict(np.load(cache))
    else:
        hand = {s: handcrafted_features(d.images, progress=not args.quiet) for s, d in splits.items()}
        np.savez(cache, **hand)
    r = probe_splits(hand, splits)
    results["hand-crafted colour+LBP"] = {
        "oa": r.oa,
        "val_oa": r.val_oa,
        "C": r.c,
        "dim": hand["train"].shape[1],
    }
    rows.append(
        {
            "features": "hand-crafted colour+LBP @ 128px",
            "dim": hand["train"].shape[1],
            "C": r.c,
            "val OA": f"{100 * r.val_oa:.1f}",
            "test OA": f"{100 * r.oa:.1f}",
        }
    )

    print(common.table(rows, ["features", "dim", "C", "val OA", "test OA"]))
    print(
        "pre-training seconds (sum of step times): " + ", ".join(f"{k} {v:.0f}" for k, v in budgets.items())
    )
    plot_bars({k: v["oa"] for k, v in results.items()}, out / "linear_probe_oa.png")
    if best:
        plot_confusion(best["cm"], classes, out / "confusion_full.png", f"{best['key']}: OA {best['oa']:.1%}")
    payload = {
        "machine": common.machine(),
        "split": {"fractions": list(PROBE_FRACTIONS), "sizes": {s: len(d.ids) for s, d in splits.items()}},
        "steps": args.steps,
        "batch_size": cfg.batch_size,
        "pretrain_seconds": budgets,
        "results": results,
        "config": str(CONFIG.relative_to(REPO)),
        "local_crops": args.local_crops,
    }
    if not args.quick:
        tag = f"_local{args.local_crops}" if args.local_crops else ""
        print(f"wrote {common.save(f'linear_probe{tag}.json', payload)}")
    print(f"plots in {out}")


if __name__ == "__main__":
    main()
