"""Does pre-training learn? Linear probes on AID of the hr encoder: pre-trained vs random vs ablation.

    python bench/linear_probe.py  # the recorded recipe (configs/pretrain/aid_hr_cpu.yaml), one seed (~70 min)
    python bench/linear_probe.py --seeds 0,1,2  # mean +- std of 3 seeds
    python bench/linear_probe.py --steps 100 --quick  # a smoke run
    python bench/linear_probe.py --steps 5 --variants full --pretrain-only --out /tmp/lp  # config check

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
3. With ``--seeds``, repeat 1-2 per seed (pre-training and random init) in ``--out/seed{N}`` and judge
   the goals on the means over seeds; the full - image-only difference is also given per seed
   (paired: same seed, same split). Probe scores are kept in each run's ``probes.json``, keyed by the
   checkpoint's hash, so adding a seed re-runs only what is new (delete the file after changing the
   probes themselves).
4. Print a table and the goals; write ``bench/results/linear_probe{--tag}.json`` and, in the output
   folder, bar and confusion-matrix PNGs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402
from skysense.data.scenes import PROBE_FRACTIONS, load_scenes  # noqa: E402
from skysense.linear_probe import (  # noqa: E402
    SOLVER,
    handcrafted_features,
    hr_features,
    plot_bars,
    plot_confusion,
    probe_splits,
    summarise_seeds,
)
from skysense.pretrain.cli import load_config  # noqa: E402
from skysense.pretrain.trainer import (  # noqa: E402
    CKPT,
    TrainConfig,
    initial_encoder,
    load_checkpoint,
    load_encoder,
    model_config,
    train,
)

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


def judge(results: dict[str, Any], scene_size: int, n_seeds: int = 1) -> dict[str, tuple[bool, str]]:
    """The issue's three goals on the primary probe: +15 OA over random init, above the best hand-crafted
    score, full MGCL above the image-level-only ablation (where both were run). ``results`` holds one
    run's scores, or the means over ``n_seeds`` seeds."""
    probe = probe_name(*primary_probe(scene_size))
    oa = {k.rsplit(" @ ", 1)[0]: v["oa"] for k, v in results.items() if k.endswith(probe)}
    hand = max(v["oa"] for k, v in results.items() if k.startswith("hand-crafted"))
    full, rnd = oa.get("pretrained (full)"), oa.get("random init")
    goals: dict[str, tuple[bool, str]] = {}
    where = f"{probe}, mean of {n_seeds} seeds" if n_seeds > 1 else probe
    if full is not None and rnd is not None:
        goals["full >= random + 15"] = (full - rnd >= 0.15, f"{100 * full:.1f} vs {100 * rnd:.1f} @ {where}")
        goals["full > hand-crafted"] = (full > hand, f"{100 * full:.1f} vs {100 * hand:.1f}")
    if full is not None and "pretrained (image_only)" in oa:
        io = oa["pretrained (image_only)"]
        goals["full > image-level only"] = (full > io, f"{100 * full:.1f} vs {100 * io:.1f}")
    return goals


def pretrain(
    name: str, args: argparse.Namespace, out: Path, seed: int | None
) -> tuple[TrainConfig, int, float]:
    """Run (or resume, or reuse) one pre-training in ``out / name``; returns (config, steps done,
    seconds of training steps)."""
    run = out / name
    overrides = [*VARIANTS[name], *args.set, f"out_dir={run}"]
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    if args.local_crops is not None:
        overrides.append(f"pretrain.views.local_crops={args.local_crops}")
    if args.batch:
        overrides.append(f"batch_size={args.batch}")
    cfg = dataclasses.replace(cast(TrainConfig, load_config(CONFIG, overrides)), progress=not args.quiet)
    done = int(load_checkpoint(run / CKPT)["step"]) if (run / CKPT).exists() else 0
    if done < cfg.steps:
        print(f"pre-training {name} (seed {cfg.seed}): steps {done} -> {cfg.steps}", flush=True)
        train(cfg, resume=True)
        done = cfg.steps
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return cfg, done, sum(float(r["time"]) for r in rows)


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:12]


def score(key: str, feats: dict[str, np.ndarray], splits: dict[str, Any]) -> dict[str, Any]:
    """Probe per-split features (``probe_splits``), print the score and return it as JSON-ready data."""
    r = probe_splits(feats, splits)
    out = {"oa": r.oa, "val_oa": r.val_oa, "C": r.c, "dim": feats["train"].shape[1]}
    out["confusion"] = r.confusion.tolist()
    report(key, out)
    return out


def report(key: str, r: dict[str, Any]) -> None:
    print(f"{key}: test OA {100 * r['oa']:.1f} (val {100 * r['val_oa']:.1f}, C {r['C']})", flush=True)


def public(r: dict[str, Any]) -> dict[str, Any]:
    """A score without its confusion matrix, as the JSON in bench/results holds it."""
    return {f: x for f, x in r.items() if f != "confusion"}


def probe_encoder(
    label: str,
    encoder: Callable[[], Any],
    splits: dict[str, Any],
    scene_size: int,
    folder: Path,
    stamp: str,
    probes: list[tuple[int, str, str]] = PROBES,
) -> dict[str, dict[str, Any]]:
    """Every probe of ``probes`` on one frozen encoder -> {probe name: result}. Results are kept in
    ``folder/probes.json`` under ``stamp`` (what was probed), so a re-run only probes what is new;
    ``encoder`` builds the network only when a probe is missing."""
    path = folder / "probes.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    mine: dict[str, dict[str, Any]] = cache.setdefault(stamp, {})
    enc = None
    for size, stages, pool in probes:
        if size > scene_size:
            continue
        probe = probe_name(size, stages, pool)
        if probe in mine:
            report(f"{label} @ {probe}", mine[probe])
            continue
        enc = enc or encoder()
        feats = {s: hr_features(enc, d.images, size, stages=stages, pool=pool) for s, d in splits.items()}
        mine[probe] = score(f"{label} @ {probe}", feats, splits)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    return mine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="override the config's steps (3500)")
    p.add_argument("--batch", type=int, default=0, help="override the config's batch size")
    p.add_argument("--out", default=str(REPO / "runs/bench/linear_probe"))
    p.add_argument("--scene-size", type=int, default=256, help="AID scenes are held at this side")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--tag", default="", help="suffix of the JSON in bench/results")
    p.add_argument("--local-crops", type=int, default=None, help="override the config's local views (4)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="pre-trainings to run and probe")
    p.add_argument("--seeds", default="", help="e.g. 0,1,2: repeat everything per seed in --out/seed{N}")
    p.add_argument("--quick", action="store_true", help="smoke run: no JSON in bench/results")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--pretrain-only", action="store_true", help="pre-train, probe nothing (e.g. on a GPU)")
    p.add_argument("--primary-only", action="store_true", help="only the primary probe (the goals' one)")
    args = p.parse_args()
    common.setup()
    root = common.data_folder("aid")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds: list[int | None] = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    bases = {seed: out if seed is None else out / f"seed{seed}" for seed in seeds}
    if args.pretrain_only:  # the probes run later, on the same --out, and find the runs done
        for seed in seeds:
            for name in args.variants.split(","):
                _, step, seconds = pretrain(name, args, bases[seed], seed)
                print(f"{name} (seed {seed}): {step} steps, {seconds:.0f} s of steps")
        return

    t0 = time.perf_counter()
    splits = {
        s: load_scenes(root, s, args.scene_size, progress=not args.quiet) for s in ("train", "val", "test")
    }
    classes = splits["train"].classes
    print(f"AID hash split {PROBE_FRACTIONS}: " + ", ".join(f"{s} {len(d.ids)}" for s, d in splits.items()))
    print(f"loaded in {time.perf_counter() - t0:.0f} s")

    probes = [primary_probe(args.scene_size)] if args.primary_only else PROBES
    budgets: dict[str, float] = {}
    by_seed: dict[int, dict[str, dict[str, Any]]] = {}  # seed -> {"method @ probe": result}
    cfg: TrainConfig | None = None
    # in the stamp: another solver probes afresh
    solver = f"probe {SOLVER['solver']} tol {SOLVER['tol']:g} {SOLVER['dtype']}"
    for seed in seeds:
        base = bases[seed]
        jobs = []
        for name in args.variants.split(","):
            cfg, step, seconds = pretrain(name, args, base, seed)
            budgets[name if seed is None else f"{name} (seed {seed})"] = seconds
            if seconds > BUDGET_S:
                print(f"warning: {name} used {seconds:.0f} s of steps, over the {BUDGET_S:.0f}-s budget")
            ckpt = base / name / CKPT
            stamp = f"step {step}, checkpoint {digest(ckpt.read_bytes())}"  # re-trained: probed afresh
            jobs.append((f"pretrained ({name})", partial(load_encoder, ckpt), base / name, stamp))
        assert cfg is not None
        mcfg = model_config(cfg)
        stamp = f"seed {cfg.weights_seed}, model {digest(repr(mcfg).encode())}"  # the run's start
        jobs.append(("random init", partial(initial_encoder, cfg), base / "random_init", stamp))
        by_seed[cfg.seed] = {
            f"{label} @ {probe}": r
            for label, build, folder, stamp in jobs
            for probe, r in probe_encoder(
                label,
                build,
                splits,
                args.scene_size,
                folder,
                f"{stamp} @ {args.scene_size}px scenes, {solver}",
                probes,
            ).items()
        }

    assert cfg is not None  # seeds and variants are never empty
    hand: dict[str, dict[str, Any]] = {}
    for size in sorted({128, args.scene_size}):
        cache = REPO / f"runs/bench/cache/handcrafted_{size}_of_{args.scene_size}.npz"  # LBP: minutes
        if cache.exists():
            feats = dict(np.load(cache))
        else:
            small = {s: resize_uint8(d.images, size) for s, d in splits.items()}
            feats = {s: handcrafted_features(x, progress=not args.quiet) for s, x in small.items()}
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **feats)
        key = f"hand-crafted colour+LBP @ {size}px"
        hand[key] = score(key, feats, splits)

    # With several seeds the goals are judged on the mean over seeds of each method's score.
    primary = probe_name(*primary_probe(args.scene_size))
    summary = summarise_seeds(
        {s: {k: v["oa"] for k, v in res.items()} for s, res in by_seed.items()},
        paired=(f"pretrained (full) @ {primary}", f"pretrained (image_only) @ {primary}"),
    )
    paired = summary.get("paired")
    results = {k: {"oa": v["mean"]} for k, v in summary["methods"].items()} | {
        k: public(v) for k, v in hand.items()
    }
    goals = judge(results, args.scene_size, len(by_seed))
    for goal, (met, detail) in goals.items():
        print(f"goal {goal}: {'MET' if met else 'not met'} ({detail})")
    if paired is not None and len(by_seed) > 1:
        print(
            f"full - image-level only @ {primary}, per seed: "
            + ", ".join(f"{100 * d:+.1f}" for d in paired["values"])
            + f" (mean {100 * paired['mean']:+.1f} +- {100 * paired['std']:.1f})"
        )

    if len(by_seed) == 1:
        one = by_seed[cfg.seed] | hand
        cols = ["dim", "C", "val OA", "test OA"]
        rows = [
            {"features": k, "dim": v["dim"], "C": v["C"]}
            | {"val OA": f"{100 * v['val_oa']:.1f}", "test OA": f"{100 * v['oa']:.1f}"}
            for k, v in one.items()
        ]
    else:  # test OA per seed, mean and sample std
        first = by_seed[min(by_seed)]
        cols = ["dim", *(f"seed {s}" for s in by_seed), "mean", "std"]
        rows = [
            {"features": k, "dim": first[k]["dim"]}
            | {f"seed {s}": f"{100 * x:.1f}" for s, x in zip(by_seed, v["values"])}
            | {"mean": f"{100 * v['mean']:.1f}", "std": f"{100 * v['std']:.1f}"}
            for k, v in summary["methods"].items()
        ] + [{"features": k, "dim": v["dim"], "mean": f"{100 * v['oa']:.1f}"} for k, v in hand.items()]
    print(common.table(rows, ["features", *cols]))
    print(
        "pre-training seconds (sum of step times): " + ", ".join(f"{k} {v:.0f}" for k, v in budgets.items())
    )
    std = {k: v["std"] for k, v in summary["methods"].items()} if len(by_seed) > 1 else None
    title = f"test OA, mean ± std of {len(by_seed)} seeds" if std else "linear probe, test OA"
    plot_bars({k: v["oa"] for k, v in results.items()}, out / "linear_probe_oa.png", title, std)
    fulls = [
        (r["oa"], k, r["confusion"])
        for res in by_seed.values()
        for k, r in res.items()
        if k.startswith("pretrained (full)") and "confusion" in r  # older probes.json files lack it
    ]
    if fulls:
        oa, key, cm = max(fulls, key=lambda t: t[0])
        plot_confusion(np.asarray(cm), classes, out / "confusion_full.png", f"{key}: OA {oa:.1%}")
    if len(by_seed) == 1:  # one run: its scores with their C and dim, as before seeds existed
        results = {k: public(v) for k, v in (by_seed[cfg.seed] | hand).items()}
    payload = {
        "machine": common.machine(),
        "split": {"fractions": list(PROBE_FRACTIONS), "sizes": {s: len(d.ids) for s, d in splits.items()}},
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "pretrain_seconds": budgets,
        "results": results,
        "config": str(CONFIG.relative_to(REPO)),
        "local_crops": cfg.pretrain.views.local_crops,
        "overrides": args.set,
        "primary_probe": primary,
        "probe_solver": SOLVER,
        "goals": {k: {"met": m, "detail": d} for k, (m, d) in goals.items()},
    }
    if len(by_seed) > 1:
        payload["seeds"] = {
            "seeds": summary["seeds"],
            "methods": summary["methods"],
            "paired_full_minus_image_only": paired,
        }
    if not args.quick:
        tag = args.tag or (f"_local{args.local_crops}" if args.local_crops else "")
        print(f"wrote {common.save(f'linear_probe{tag}.json', payload)}")
    print(f"plots in {out}")


if __name__ == "__main__":
    main()
