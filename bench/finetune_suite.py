"""Downstream results (paper Sec. 4) on the shared data: every task family, pre-trained vs random init.

    python -m bench.finetune_suite --weights encoder.safetensors [--seeds 0 1 2] [--only aid potsdam]
        [--set lr=5e-4 ...]

Runs the configs of ``configs/finetune/`` (``tiny``, CPU budgets of minutes) once per seed and variant,
evaluates each run's ``best.ckpt`` (kept by the validation metric) on the test split, and prints and
writes (``bench/results/finetune_suite.json``) the test scores with the sample counts of every split.
``--weights``: the pre-trained encoder (``skysense export`` of a pre-training run, e.g. the AID recipe);
the ``pretrained`` variants need it and are skipped without it. Nothing here is tuned on the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# name -> (config, overrides, needs the pre-trained weights)
RUNS: dict[str, tuple[str, list[str], bool]] = {
    "aid/random": ("aid_tiny", [], False),
    "aid/pretrained": ("aid_tiny", [], True),
    "aid/probe(pretrained)": ("aid_tiny", ["mode=frozen", "lr=1e-2"], True),
    "potsdam/random": ("potsdam_tiny", [], False),
    "potsdam/pretrained": ("potsdam_tiny", [], True),
    "loveda/random": ("loveda_tiny", [], False),
    "loveda/pretrained": ("loveda_tiny", [], True),
    "levir_cd/random": ("levir_cd_tiny", [], False),
    "levir_cd/pretrained": ("levir_cd_tiny", [], True),
    "sen1floods11/s2+s1": ("sen1floods11_tiny", [], False),
    "sen1floods11/s2+s1 modality dropout": ("sen1floods11_tiny", ["modality_dropout=0.3"], False),
    "sen1floods11/s2": ("sen1floods11_tiny", ["data.modalities=[s2]", "model={hr: null, s1: null}"], False),
    "sen1floods11/s1": ("sen1floods11_tiny", ["data.modalities=[s1]", "model={hr: null, s2: null}"], False),
    "slovenia/dates": ("slovenia_tiny", [], False),
    "slovenia/no dates": ("slovenia_tiny", ["model.fusion={use_dtpe: false}"], False),
    "slovenia/single date": ("slovenia_tiny", ["data.num_dates={s2: 1}"], False),
    "sits/geo": ("sits_tiny", [], False),
    "sits/no geo": ("sits_tiny", ["model.geo=null"], False),
    "bigearthnet/s2+s1 (smoke)": ("bigearthnet_tiny", [], False),
}


def one(name: str, seed: int, weights: str, out: Path, extra_set: list[str]) -> dict[str, Any]:
    from skysense.engine.config import load_config
    from skysense.tasks.evaluate import evaluate
    from skysense.tasks.finetune import FinetuneConfig, finetune

    config, overrides, pretrained = RUNS[name]
    run = out / name.replace("/", "_").replace(" ", "_").replace("(", "").replace(")", "") / f"seed{seed}"
    extra = [f"out_dir={run}", f"seed={seed}", "progress=false"] + (
        [f"weights={weights}"] if pretrained else []
    )
    cfg = load_config(
        FinetuneConfig, REPO / "configs/finetune" / f"{config}.yaml", [*overrides, *extra_set, *extra]
    )
    t0 = time.perf_counter()
    result = finetune(cfg, overwrite=True)
    seconds = time.perf_counter() - t0
    test = evaluate(run / "best.ckpt", split="test")
    metric = result["best"]["metric"]
    return {
        "name": name,
        "seed": seed,
        "config": config,
        "overrides": [*overrides, *extra_set],
        "metric": metric,
        "val": result["best"]["value"],
        "best_step": result["best"]["step"],
        "test": test["scores"][metric],
        "test_scores": test["scores"],
        "counts": result["counts"],
        "steps": cfg.steps,
        "train_s": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="", help="pre-trained encoder (.safetensors) for the pretrained runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="*", default=[], help="run names starting with these (e.g. aid potsdam)")
    p.add_argument("--set", nargs="*", default=[], help="key=value overrides for every run (e.g. lr=5e-4)")
    p.add_argument("--out", default=str(REPO / "runs/bench/finetune_suite"))
    p.add_argument("--results", default="finetune_suite.json")
    args = p.parse_args()
    common.setup()
    names = [n for n in RUNS if not args.only or any(n.startswith(o) for o in args.only)]
    rows = []
    for name in names:
        if RUNS[name][2] and not args.weights:
            print(f"skip {name}: needs --weights", flush=True)
            continue
        for seed in args.seeds:
            row = one(name, seed, args.weights, Path(args.out), args.set)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "test_scores"}), flush=True)
    summary = []
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        tests = [r["test"] for r in mine]
        summary.append(
            {
                "run": name,
                "metric": mine[0]["metric"],
                "test_mean": statistics.mean(tests),
                "test_per_seed": " / ".join(f"{t:.3f}" for t in tests),
                "val_mean": statistics.mean(r["val"] for r in mine),
                "samples (train/val/test)": "/".join(
                    str(mine[0]["counts"][s]) for s in ("train", "val", "test")
                ),
                "steps": mine[0]["steps"],
                "overrides": " ".join(mine[0]["overrides"]),
            }
        )
    print(common.table(summary, list(summary[0]) if summary else []))
    path = common.save(
        args.results,
        {
            "machine": common.machine(),
            "weights": args.weights,
            "seeds": args.seeds,
            "summary": summary,
            "runs": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
