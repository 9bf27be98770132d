"""Multi-modal pre-training on real S1 + S2 (+ dates, + location) end to end: does every path train?

    python bench/multimodal_pretrain.py            # ~5 min on 2 CPU threads
    python bench/multimodal_pretrain.py --steps 5  # a smoke run

Runs ``configs/pretrain/multimodal_cpu.yaml`` (Sen1Floods11 chip tiles + BigEarthNet-MM pairs: s2 + s1,
CMA and GCPL on) and ``configs/pretrain/slovenia_cpu.yaml`` (the 68-date NDVI series: DTPE on real
dates) and summarises their ``metrics.csv``: loss at the start and the end, NaN/inf anywhere,
gradient norms reaching the fusion and geo-context modules, GCPL prototype updates, collapse monitors.
Writes ``bench/results/multimodal_pretrain.json``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402
from skysense.pretrain.cli import load_config  # noqa: E402
from skysense.pretrain.trainer import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RUNS = {"multimodal_cpu": "s2+s1: Sen1Floods11 + BigEarthNet-MM", "slovenia_cpu": "s2 NDVI series, 68 dates"}


def summarise(name: str, rows: list[dict[str, str]], n_samples: int) -> dict[str, Any]:
    def col(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key, "") != ""]

    k = max(1, len(rows) // 5)
    loss = col("loss")
    finite = all(math.isfinite(float(v)) for r in rows for v in r.values() if v != "")
    return {
        "run": name,
        "data": RUNS[name],
        "samples": n_samples,
        "steps": len(rows),
        "loss_start": statistics.mean(loss[:k]),
        "loss_end": statistics.mean(loss[-k:]),
        "all_finite": finite,
        "min_grad_fusion": min(col("grad/fusion")),
        "min_grad_geo": min(col("grad/geo")),
        "gcpl_steps": sum(1 for v in col("gcpl_shift") if v > 0),
        "gcpl_shift_mean": statistics.mean(col("gcpl_shift")) if col("gcpl_shift") else 0.0,
        "teacher_entropy_rel_end": col("teacher_entropy_rel")[-1],
        # ln K (6.93 at K = 1024) here means the fused stream's targets are uniform: collapsed
        "img_fused_start": statistics.mean(col("img/fused")[:k]) if col("img/fused") else None,
        "img_fused_end": statistics.mean(col("img/fused")[-k:]) if col("img/fused") else None,
        "feature_std_end": col("feature_std")[-1],
        "s_per_step": statistics.median(col("time")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=0, help="override the configs' steps")
    p.add_argument("--out", default=str(REPO / "runs/bench/multimodal"))
    args = p.parse_args()
    common.setup()
    results = []
    for name in RUNS:
        out = Path(args.out) / name
        overrides = [f"out_dir={out}", "progress=false"] + ([f"steps={args.steps}"] if args.steps else [])
        cfg: Any = load_config(REPO / "configs/pretrain" / f"{name}.yaml", overrides)
        print(f"{name}: {cfg.steps} steps, batch {cfg.batch_size}", flush=True)
        samples = train(cfg, overwrite=True)["samples"]
        with (out / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        results.append(summarise(name, rows, samples))
    cols = list(results[0])
    print(common.table(results, cols))
    if not args.steps:
        print(
            f"wrote {common.save('multimodal_pretrain.json', {'machine': common.machine(), 'runs': results})}"
        )


if __name__ == "__main__":
    main()
