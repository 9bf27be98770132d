"""Do the pixel and object terms of MGCL give better dense features? A per-pixel linear probe on LoveDA.

    python bench/dense_probe.py --root runs/bench/std_hr --seeds 0,1,2 --variants full,image_only

The AID scene probe of ``bench/linear_probe.py`` pools every map to one vector, so it can only reward
what the image-level term teaches. This probe keeps the maps: the frozen hr teacher of each run (and the
same network at its random initialisation) sees the three LoveDA tiles of ``shared/data/seg_samples``
(1024 px at 0.3 m, 7 classes, no-data ignored) resized to ``--size`` px; each stage's map is upsampled
(bilinear) to a quarter of that side and a multinomial logistic regression (scikit-learn, features
standardised on the training pixels, C = 1) classifies every cell from the concatenated stages ("all") or
stage 4 alone ("last"). Labels are the nearest-neighbour downsample of the annotation. The tiles
hold different classes (one is mostly forest, absent from the others), so folds are spatial, not per
tile: a checkerboard of 16 x 16-cell blocks (64 px at 256) over every tile, train on one colour and test
on the other, then swap; pixel accuracy and mIoU (over the classes in
the test cells' labels or predictions), averaged over the two folds.
A colour-only reference (mean RGB of each cell) shows what no network is needed for. Three tiles are a
small test set: read the per-seed pairs (same seed, full vs image-only) rather than single numbers.
Writes ``bench/results/dense_probe{--tag}.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from skysense.data.datasets import Segmentation  # noqa: E402
from skysense.data.root import data_root  # noqa: E402
from skysense.data.scenes import normalise_hr  # noqa: E402
from skysense.pretrain.trainer import (  # noqa: E402
    CKPT,
    TrainConfig,
    from_dict,
    initial_encoder,
    load_checkpoint,
    load_encoder,
)


def load_tiles(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) float 0-255 and (N, size/4, size/4) int64 labels (-1 = no-data)."""
    root = data_root() / "seg_samples" / "loveda"
    if not root.is_dir():
        sys.exit(f"skip: {root} not found (set SKYSENSE_DATA to the shared data folder)")
    ds = Segmentation(root, reduce_zero_label=True)
    images, labels = [], []
    for i in range(len(ds)):
        s = ds[i]
        x = torch.as_tensor(s["hr"], dtype=torch.float32)[None]  # (1, 3, H, W)
        images.append(
            F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        )
        y = torch.as_tensor(s["target"])[None, None].float()
        labels.append(F.interpolate(y, size=(size // 4, size // 4), mode="nearest")[0, 0].long())
    return torch.cat(images), torch.stack(labels)


@torch.no_grad()
def dense_features(encoder: Any, images: torch.Tensor, stages: str) -> torch.Tensor:
    """(N, 3, S, S) -> (N, S/4, S/4, C): stage maps upsampled to stride 4 and concatenated (fp32)."""
    maps = encoder.encoders["hr"].eval()(normalise_hr(images))  # 4 x (N, C_i, h_i, w_i)
    maps = maps if stages == "all" else maps[-1:]
    side = images.shape[-1] // 4
    up = [F.interpolate(m.float(), size=(side, side), mode="bilinear", align_corners=False) for m in maps]
    return torch.cat(up, dim=1).permute(0, 2, 3, 1)


def colour_features(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images, 4).permute(0, 2, 3, 1)  # (N, S/4, S/4, 3)


def probe(feats: torch.Tensor, labels: torch.Tensor, block: int = 16) -> dict[str, Any]:
    """Per-cell logistic regression, two folds of a checkerboard of ``block`` x ``block`` cells over every
    tile (train on one colour, test on the other, then swap) -> mean pixel accuracy and mIoU."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import jaccard_score
    from sklearn.preprocessing import StandardScaler

    n, h, w, c = feats.shape
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    colour = ((i // block + j // block) % 2).expand(n, h, w).reshape(-1)
    x_all, y_all = feats.reshape(-1, c).numpy(), labels.reshape(-1).numpy()
    acc, miou = [], []
    for fold in (0, 1):
        train = ((colour == fold).numpy()) & (y_all >= 0)
        test = ((colour != fold).numpy()) & (y_all >= 0)
        scaler = StandardScaler().fit(x_all[train])
        clf = LogisticRegression(C=1.0, max_iter=500).fit(scaler.transform(x_all[train]), y_all[train])
        pred, target = clf.predict(scaler.transform(x_all[test])), y_all[test]
        acc.append(float((pred == target).mean()))
        seen = np.union1d(pred, target)  # classes absent from both do not count (as mmseg)
        miou.append(float(jaccard_score(target, pred, labels=seen, average="macro")))
    return {"pixel_acc": statistics.mean(acc), "miou": statistics.mean(miou), "folds_miou": miou}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/bench/std_hr", help="bench/linear_probe.py --out of the runs")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="full,image_only")
    p.add_argument("--size", type=int, default=256, help="tiles are probed at this side")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    common.setup()
    images, labels = load_tiles(args.size)
    print(
        f"LoveDA: {images.shape[0]} tiles at {args.size} px, labels {tuple(labels.shape[1:])}, "
        f"{int((labels >= 0).sum())} labelled cells"
    )
    rows: dict[str, dict[str, Any]] = {"colour (mean RGB)": {"all": probe(colour_features(images), labels)}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        encoders: dict[str, Any] = {}
        for name in args.variants.split(","):
            ckpt = Path(args.root) / f"seed{seed}" / name / CKPT
            if not ckpt.exists():
                print(f"skip {ckpt}: not found")
                continue
            encoders[name] = lambda c=ckpt: load_encoder(c)
        if not encoders:
            continue
        first = Path(args.root) / f"seed{seed}" / next(iter(encoders)) / CKPT
        cfg = from_dict(TrainConfig, load_checkpoint(first)["config"])  # the variants share the model
        encoders["random_init"] = lambda cfg=cfg: initial_encoder(cfg)  # the run's starting weights
        for name, build in encoders.items():
            enc = build()
            rows[f"{name} (seed {seed})"] = {
                s: probe(dense_features(enc, images, s), labels) for s in ("all", "last")
            }
    print("| features | stages | pixel acc % | mIoU % | mIoU per fold |")
    print("|---|---|---:|---:|---|")
    for name, r in rows.items():
        for s, m in r.items():
            folds = " / ".join(f"{100 * v:.1f}" for v in m["folds_miou"])
            print(f"| {name} | {s} | {100 * m['pixel_acc']:.1f} | {100 * m['miou']:.1f} | {folds} |")
    out = common.RESULTS / f"dense_probe{args.tag}.json"
    out.write_text(json.dumps({"machine": common.machine(), "args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
