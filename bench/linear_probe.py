"""Does pre-training learn? Linear probes on AID of the hr encoder: pre-trained vs random vs ablation.

    python bench/linear_probe.py --steps 3500 --local-crops 4  # the best recorded run (~70 min, 2 threads)
    python bench/linear_probe.py --steps 100 --quick # a smoke run

1. Pre-train ``configs/pretrain/aid_hr_cpu.yaml`` (full MGCL: pixel + object + image levels) and the
   image-level-only ablation (``pretrain.loss.pix/obj = false``) for the same number of steps on the
   AID train split (hash split of ``skysense/data/scenes.py``: 60/10/30 % train/val/test), each
   within the issue's budget of 30 CPU minutes of steps (``--steps``, ``--set`` and ``--local-crops``
   change the recipe for both). Runs resume from their checkpoints, so an interrupted benchmark
   continues where it stopped.
2. Freeze the teachers and the same architecture at its random initialisation (the seed the
   pre-training starts from); probe each (``skysense/linear_probe.py``) on the scenes held at
   ``--scene-size`` px: the last stage at 128 px, all four stages at 128 and 256 px, and all stages
   with mean + std pooling at 256 px: the primary probe, on which the goals are judged. Also probe
   the hand-crafted colour + LBP descriptor at 128 and 256 px (the best of the two is the bar).
3. Print a table and the goals; write ``bench/results/linear_probe{--tag}.json`` and, in the output
   folder, bar and confusion-matrix PNGs.
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
BUDGET_S = 1800.0  # the CPU budget for one pre-training (sum of step times)
# (probe side, stages, pooling); the primary probe, on which the goals are judged, is the last
PROBES = [(128, "last", "mean"), (128, "all", "mean"), (256, "all", "mean"), (256, "all", "meanstd")]


def primary_probe(scene_size: int) -> tuple[int, str, str]:
    return (min(256, scene_size), "all", "meanstd")


def probe_name(size: int, stages: str, pool: str) -> str:
    where = "all stages" if stages == "all" else "last stage"
    return f"{size}px, {where}, {'mean+std' if pool == 'meanstd' else 'mean'}"


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8, antialiased as the network probes see it."""
    if images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def judge(results: dict[str, Any], scene_size: int) -> dict[str, tuple[bool, str]]:
    """The issue's three goals on the primary probe: +15 OA over random init, above the best hand-crafted
    score, full MGCL above the image-level-only ablation (where both were run)."""
    probe = probe_name(*primary_probe(scene_size))
    oa = {k.rsplit(" @ ", 1)[0]: v["oa"] for k, v in results.items() if k.endswith(probe)}
    hand = max(v["oa"] for k, v in results.items() if k.startswith("hand-crafted"))
    full, rnd = oa.get("pretrained (full)"), oa.get("random init")
    goals: dict[str, tuple[bool, str]] = {}
    if full is not None and rnd is not None:
        goals["full >= random + 15"] = (full - rnd >= 0.15, f"{100 * full:.1f} vs {100 * rnd:.1f} @ {probe}")
        goals["full > hand-crafted"] = (full > hand, f"{100 * full:.1f} vs {100 * hand:.1f}")
    if full is not None and "pretrained (image_only)" in oa:
        io = oa["pretrained (image_only)"]
        goals["full > image-level only"] = (full > io, f"{100 * full:.1f} vs {100 * io:.1f}")
    return goals


def pretrain(name: str, args: argparse.Namespace) -> tuple[Any, float]:
    """Run (or resume, or reuse) one pre-training; returns (config, seconds of training steps)."""
    out = Path(args.out) / name
    overrides = [*VARIANTS[name], *args.set, f"out_dir={out}", f"steps={args.steps}"]
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
    p.add_argument("--scene-size", type=int, default=256, help="AID scenes are held at this side")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--tag", default="", help="suffix of the JSON in bench/results")
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
    splits = {
        s: load_scenes(root, s, args.scene_size, progress=not args.quiet) for s in ("train", "val", "test")
    }
    classes = splits["train"].classes
    print(f"AID hash split {PROBE_FRACTIONS}: " + ", ".join(f"{s} {len(d.ids)}" for s, d in splits.items()))
    print(f"loaded in {time.perf_counter() - t0:.0f} s")

    encoders, budgets, cfg = {}, {}, None
    for name in args.variants.split(","):
        cfg, seconds = pretrain(name, args)
        budgets[name] = seconds
        if seconds > BUDGET_S:
            print(f"warning: {name} used {seconds:.0f} s of steps, over the {BUDGET_S:.0f}-s budget")
        encoders[f"pretrained ({name})"] = load_encoder(Path(args.out) / name / CKPT)
    assert cfg is not None
    torch.manual_seed(cfg.seed)  # the trainer's initialisation
    encoders["random init"] = build_model(model_config(cfg)).eval()

    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    best: dict[str, Any] = {}

    def record(key: str, feats: dict[str, np.ndarray]) -> Any:
        r = probe_splits(feats, splits)
        dim = feats["train"].shape[1]
        results[key] = {"oa": r.oa, "val_oa": r.val_oa, "C": r.c, "dim": dim}
        oas = {"val OA": f"{100 * r.val_oa:.1f}", "test OA": f"{100 * r.oa:.1f}"}
        rows.append({"features": key, "dim": dim, "C": r.c} | oas)
        print(f"{key}: test OA {100 * r.oa:.1f} (val {100 * r.val_oa:.1f}, C {r.c})", flush=True)
        return r

    for name, enc in encoders.items():
        for size, stages, pool in PROBES:
            if size > args.scene_size:
                continue
            feats = {s: hr_features(enc, d.images, size, stages=stages, pool=pool) for s, d in splits.items()}
            key = f"{name} @ {probe_name(size, stages, pool)}"
            r = record(key, feats)
            if name.startswith("pretrained (full)") and r.oa > best.get("oa", -1):
                best = {"oa": r.oa, "cm": r.confusion, "key": key}
    for size in sorted({128, args.scene_size}):
        cache = REPO / f"runs/bench/cache/handcrafted_{size}_of_{args.scene_size}.npz"  # LBP: minutes
        if cache.exists():
            hand = dict(np.load(cache))
        else:
            small = {s: resize_uint8(d.images, size) for s, d in splits.items()}
            hand = {s: handcrafted_features(x, progress=not args.quiet) for s, x in small.items()}
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **hand)
        record(f"hand-crafted colour+LBP @ {size}px", hand)
    goals = judge(results, args.scene_size)
    for goal, (met, detail) in goals.items():
        print(f"goal {goal}: {'MET' if met else 'not met'} ({detail})")

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
        "overrides": args.set,
        "primary_probe": probe_name(*primary_probe(args.scene_size)),
        "goals": {k: {"met": m, "detail": d} for k, (m, d) in goals.items()},
    }
    if not args.quick:
        tag = args.tag or (f"_local{args.local_crops}" if args.local_crops else "")
        print(f"wrote {common.save(f'linear_probe{tag}.json', payload)}")
    print(f"plots in {out}")


if __name__ == "__main__":
    main()
