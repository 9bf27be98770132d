"""Do the pixel and object terms of MGCL give better dense features? Per-pixel linear probes on three tasks.

    python bench/dense_probe.py --runs image_only=runs/bench/std_hr:image_only,full=runs/bench/std_hr:full \\
        --seeds 0,1,2,3 --tag _suite
    python bench/dense_probe.py --root runs/bench/std_hr --seeds 0,1,2 --variants full,image_only  # one root

The AID scene probe of ``bench/linear_probe.py`` pools every map to one vector, so it can only reward
what the image-level term teaches. These probes keep the maps. The frozen hr teacher of each run (and the
same network at its random initialisation) sees every image of a task; each stage's map is upsampled
(bilinear) to stride 4 and a logistic regression (the scene probe's ``probe_model``: features
standardised on the training cells, C = 1, solved in float64 to convergence; the lbfgs it replaces
stopped at its 500-iteration cap) classifies every cell from the concatenated stages ("all") or stage 4
alone ("last").
Labels are the nearest-neighbour downsample of the annotation to stride 4. Tasks (``shared/data``):

- ``loveda``: the 3 LoveDA tiles of ``seg_samples`` (1024 px at 0.3 m, 7 classes, no-data ignored),
  resized to 256 px. Score: mIoU.
- ``potsdam``: the one ISPRS Potsdam crop of ``seg_samples`` (512 px, 6 classes), at its own 512 px.
  Score: mIoU.
- ``levir_cd``: the 11 labelled LEVIR-CD pairs (256 px at 0.5 m, building change), at their own size.
  A cell's input is ``|f_before - f_after|``; score: F1 of the change class (LEVIR-CD's metric), with
  its IoU and the average precision of its probability (threshold-free) alongside.

The images hold different classes (one LoveDA tile is mostly forest, absent from the others), so folds are
spatial, not per image: a checkerboard of 16 x 16-cell blocks over every image, train on one colour and
test on the other, then swap, and average the two folds. mIoU counts the classes in the test cells'
labels or predictions (as mmseg). A colour-only reference (mean RGB of each cell, or its change) shows
what no network is needed for. Sizes were fixed before any pre-trained run was probed on the new tasks.
These sets are small: read the per-seed pairs against ``--baseline`` (same seed, same initial weights),
not single numbers. Writes ``bench/results/dense_probe{--tag}.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402
from skysense.data.datasets import ChangeDetection, Segmentation  # noqa: E402
from skysense.data.scenes import normalise_hr  # noqa: E402
from skysense.linear_probe import SOLVER, probe_model  # noqa: E402
from skysense.pretrain.trainer import (  # noqa: E402
    CKPT,
    TrainConfig,
    from_dict,
    initial_encoder,
    load_checkpoint,
    load_encoder,
)


@dataclass
class Task:
    """Images ``(N, 3, S, S)`` 0-255, or ``(N, 2, 3, S, S)`` before/after pairs; labels ``(N, S/4, S/4)``
    int64 with -1 = ignore."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor

    @property
    def change(self) -> bool:
        return self.images.dim() == 5


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) 0-255 -> (1, C, size, size) float."""
    x = torch.as_tensor(x, dtype=torch.float32)[None]
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _labels(y: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) int -> (size/4, size/4) int64, nearest neighbour."""
    y = torch.as_tensor(y)[None, None].float()
    return F.interpolate(y, size=(size // 4, size // 4), mode="nearest")[0, 0].long()


def load_segmentation(name: str, size: int) -> Task:
    # LoveDA: 0 = no-data, classes 1-7; Potsdam: classes 0-5
    ds = Segmentation(common.data_folder("seg_samples", name), reduce_zero_label=name == "loveda")
    samples = [ds[i] for i in range(len(ds))]
    images = torch.cat([_resize(s["hr"], size) for s in samples])
    return Task(name, images, torch.stack([_labels(s["target"], size) for s in samples]))


def load_change(size: int) -> Task:
    ds = ChangeDetection(common.data_folder("levir_cd"))  # pairs without a label are skipped
    samples = [ds[i] for i in range(len(ds))]
    pairs = torch.stack(
        [torch.cat([_resize(s["hr_pre"], size), _resize(s["hr_post"], size)]) for s in samples]
    )  # (N, 2, 3, size, size)
    return Task("levir_cd", pairs, torch.stack([_labels(s["target"], size) for s in samples]))


TASKS = {"loveda": 256, "potsdam": 512, "levir_cd": 256}  # probe side in px


def load_task(name: str) -> Task:
    return load_change(TASKS[name]) if name == "levir_cd" else load_segmentation(name, TASKS[name])


@torch.no_grad()
def dense_features(encoder: Any, images: torch.Tensor) -> list[torch.Tensor]:
    """(N, 3, S, S) -> per stage (N, S/4, S/4, C_i): the stage maps upsampled to stride 4 (fp32)."""
    maps = encoder.encoders["hr"].eval()(normalise_hr(images))  # 4 x (N, C_i, h_i, w_i)
    side = images.shape[-1] // 4
    up = [F.interpolate(m.float(), size=(side, side), mode="bilinear", align_corners=False) for m in maps]
    return [m.permute(0, 2, 3, 1) for m in up]


def colour_features(images: torch.Tensor) -> list[torch.Tensor]:
    """(N, 3, S, S) -> [(N, S/4, S/4, 3)]: mean RGB per cell, as one 'stage'."""
    return [F.avg_pool2d(images, 4).permute(0, 2, 3, 1)]


def task_features(extract: Any, task: Task) -> list[torch.Tensor]:
    """Per-cell features of a task, per stage: the maps, or for change pairs ``|f_before - f_after|``."""
    if not task.change:
        return extract(task.images)
    return [(a - b).abs() for a, b in zip(extract(task.images[:, 0]), extract(task.images[:, 1]))]


def probe(feats: torch.Tensor, labels: torch.Tensor, change: bool = False, block: int = 16) -> dict[str, Any]:
    """Per-cell logistic regression, two folds of a checkerboard of ``block`` x ``block`` cells over every
    image (train on one colour, test on the other, then swap) -> fold means of pixel accuracy and mIoU,
    or for ``change`` the F1 and IoU of class 1 and the average precision of its probability (no threshold).
    ``score`` is the headline (mIoU, or change F1)."""
    from sklearn.metrics import average_precision_score, f1_score, jaccard_score

    n, h, w, c = feats.shape
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    colour = ((i // block + j // block) % 2).expand(n, h, w).reshape(-1).numpy()
    x_all, y_all = feats.reshape(-1, c).numpy(), labels.reshape(-1).numpy()
    folds: dict[str, list[float]] = {"pixel_acc": [], "miou": [], "f1": [], "iou": [], "ap": []}
    for fold in (0, 1):
        train, test = (colour == fold) & (y_all >= 0), (colour != fold) & (y_all >= 0)
        clf = probe_model(1.0).fit(x_all[train], y_all[train])  # the scene probe's solver, run to convergence
        x_test, target = x_all[test], y_all[test]
        pred = clf.predict(x_test)
        folds["pixel_acc"].append(float((pred == target).mean()))
        seen = np.union1d(pred, target)  # classes absent from both do not count (as mmseg)
        folds["miou"].append(float(jaccard_score(target, pred, labels=seen, average="macro")))
        if change:
            folds["f1"].append(float(f1_score(target, pred, pos_label=1, zero_division=0)))
            folds["iou"].append(float(jaccard_score(target, pred, pos_label=1, zero_division=0)))
            folds["ap"].append(float(average_precision_score(target, clf.predict_proba(x_test)[:, 1])))
    out: dict[str, Any] = {k: statistics.mean(v) for k, v in folds.items() if v}
    out["score"] = out["f1"] if change else out["miou"]
    out["folds_score"] = folds["f1"] if change else folds["miou"]
    return out


def parse_runs(args: argparse.Namespace) -> dict[str, tuple[Path, str]]:
    """``label=root:variant,...`` (or ``--root`` with ``--variants``) -> {label: (root, variant)}."""
    if not args.runs:
        return {v: (Path(args.root), v) for v in args.variants.split(",")}
    runs = {}
    for item in args.runs.split(","):
        label, sep, spec = item.partition("=")
        root, sep2, variant = spec.rpartition(":")
        if not (sep and sep2 and label and root and variant):
            sys.exit(f"--runs item {item!r}: expected label=root:variant, e.g. full=runs/bench/std_hr:full")
        runs[label] = (Path(root), variant)
    return runs


def _value(rows: dict[str, Any], label: str, seed: int, metric: str) -> float | None:
    return rows.get(f"{label} (seed {seed})", {}).get("all", {}).get(metric)


def paired(
    rows: dict[str, Any], tasks: list[str], labels: list[str], seeds: list[int], base: str
) -> list[dict[str, Any]]:
    """Per task, metric (``score``, and ``ap`` for change) and run label: the mean over seeds of the
    all-stage probe, and the same-seed differences against ``base``."""
    out = []
    for task in tasks:
        for metric in ("score", "ap"):
            if metric not in rows[task]["colour (mean RGB)"]["all"]:
                continue
            for label in labels:
                val = {s: v for s in seeds if (v := _value(rows[task], label, s, metric)) is not None}
                ref = {s: v for s in seeds if (v := _value(rows[task], base, s, metric)) is not None}
                have = list(val)
                diffs = [val[s] - ref[s] for s in have if s in ref]
                out.append({
                    "task": task, "metric": metric, "run": label, "seeds": have,
                    "mean": statistics.mean(val[s] for s in have) if have else None,
                    "diffs": diffs, "mean_diff": statistics.mean(diffs) if diffs else None,
                })  # fmt: skip
    return out


def plot_pairs(summary: list[dict[str, Any]], base: str, path: Path) -> None:
    """One panel per task and metric: each run's same-seed differences against ``base`` (dots) and their
    mean (bar), in points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((m["task"], m["metric"]) for m in summary))  # in task order
    runs = sorted({m["run"] for m in summary if m["run"] != base and m["diffs"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.45 * len(runs) + 1.2), sharey=True)
    for ax, (task, metric) in zip(np.atleast_1d(axes), panels):
        for y, run in enumerate(runs):
            m = next((m for m in summary if (m["task"], m["metric"], m["run"]) == (task, metric, run)), None)
            if not m or not m["diffs"]:
                continue
            d = [100 * v for v in m["diffs"]]
            mean = statistics.mean(d)
            ax.barh(y, mean, color="tab:blue" if mean > 0 else "tab:red", alpha=0.35)
            ax.plot(d, [y] * len(d), "k.", ms=5)
        ax.axvline(0, color="grey", lw=0.8)
        name = {"score": "change F1" if task == "levir_cd" else "mIoU", "ap": "change AP"}[metric]
        ax.set_title(f"{task}: {name}", fontsize=9)
        ax.set_xlabel(f"minus {base}, points")
    ax0 = np.atleast_1d(axes)[0]
    ax0.set_yticks(range(len(runs)), runs, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="", help="label=root:variant,... (root = a bench/linear_probe.py --out)")
    p.add_argument("--root", default="runs/bench/std_hr", help="without --runs: one root ...")
    p.add_argument("--variants", default="full,image_only", help="... and its variants")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"any of {','.join(TASKS)}")
    p.add_argument("--baseline", default="image_only", help="the run label the others are paired with")
    p.add_argument("--tag", default="")
    p.add_argument("--plot", default="", help="PNG of the same-seed pairs (runs/bench/dense_probe{tag}.png)")
    args = p.parse_args()
    common.setup()
    from threadpoolctl import threadpool_limits  # scikit-learn's BLAS would take every core

    threadpool_limits(common.THREADS)
    runs, seeds = parse_runs(args), [int(s) for s in args.seeds.split(",")]
    tasks = {name: load_task(name) for name in args.tasks.split(",")}
    for t in tasks.values():
        cells = int((t.labels >= 0).sum())
        print(f"{t.name}: {t.images.shape[0]} images at {t.images.shape[-1]} px, {cells} labelled cells")
    rows: dict[str, dict[str, Any]] = {}  # task -> features (seed) -> stages -> metrics
    for name, t in tasks.items():
        colour = task_features(colour_features, t)[0]
        rows[name] = {"colour (mean RGB)": {"all": probe(colour, t.labels, t.change)}}

    def probe_all(label: str, encoder: Any, seed: int) -> None:
        for name, t in tasks.items():
            maps = task_features(lambda x: dense_features(encoder, x), t)  # one forward per image
            rows[name][f"{label} (seed {seed})"] = {
                "all": probe(torch.cat(maps, dim=-1), t.labels, t.change),
                "last": probe(maps[-1], t.labels, t.change),
            }

    for seed in seeds:
        cfg = None
        for label, (root, variant) in runs.items():  # one encoder in memory at a time
            path = root / f"seed{seed}" / variant / CKPT
            if not path.exists():
                print(f"skip {path}: not found")
                continue
            ck = load_checkpoint(path)  # read once: the encoder and, for the first, the config
            probe_all(label, load_encoder(ck), seed)
            cfg = cfg or from_dict(TrainConfig, ck["config"])
        if cfg is not None:
            probe_all("random_init", initial_encoder(cfg), seed)  # the runs' starting weights
    print("| task | features | stages | score % | pixel acc % | score per fold |")
    print("|---|---|---|---:|---:|---|")
    for task, r in rows.items():
        for name, by_stage in r.items():
            for s, m in by_stage.items():
                folds = " / ".join(f"{100 * v:.1f}" for v in m["folds_score"])
                score, acc = 100 * m["score"], 100 * m["pixel_acc"]
                print(f"| {task} | {name} | {s} | {score:.1f} | {acc:.1f} | {folds} |")
    summary = paired(rows, list(tasks), sorted([*runs, "random_init"]), seeds, args.baseline)
    print(f"\nall stages; score = mIoU (LEVIR-CD: change F1; ap: its average precision); vs {args.baseline}")
    print("| task | metric | run | seeds | mean % | same-seed diffs | mean diff |")
    print("|---|---|---|---|---:|---|---:|")
    for m in summary:
        if m["mean"] is None:
            continue
        diffs = ", ".join(f"{100 * d:+.1f}" for d in m["diffs"])
        mean_diff = "" if m["mean_diff"] is None else f"{100 * m['mean_diff']:+.1f}"
        seeds_txt = ",".join(map(str, m["seeds"]))
        name = f"{m['task']} | {m['metric']} | {m['run']}"
        print(f"| {name} | {seeds_txt} | {100 * m['mean']:.1f} | {diffs} | {mean_diff} |")
    out = common.RESULTS / f"dense_probe{args.tag}.json"
    record = {
        "machine": common.machine(),
        "args": vars(args),
        "tasks": TASKS,
        "probe_solver": SOLVER,
        "rows": rows,
    }
    out.write_text(json.dumps({**record, "paired": summary}, indent=1))
    png = Path(args.plot or f"runs/bench/dense_probe{args.tag}.png")
    plot_pairs(summary, args.baseline, png)
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
