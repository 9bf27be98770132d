"""``skysense finetune`` and ``skysense evaluate``: downstream tasks (paper Sec. 4) from a YAML config.

skysense finetune --config configs/finetune/potsdam_tiny.yaml steps=100 weights=encoder.safetensors
skysense evaluate --checkpoint runs/finetune/potsdam_tiny/best.ckpt --split test
torchrun --nproc_per_node 2 -m skysense.tasks.cli finetune --config configs/finetune/aid_tiny.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from skysense.engine.config import add_run_arguments
from skysense.runtime import add_threads_argument


def run_finetune(args: argparse.Namespace) -> int:
    from skysense.detection.task import detection_task_of
    from skysense.engine.config import load_config
    from skysense.engine.distributed import exit_distributed
    from skysense.runtime import apply_threads
    from skysense.tasks.finetune import FinetuneConfig, finetune

    if detection_task_of(args.config, args.overrides):  # task: detection | oriented_detection
        from skysense.detection.task import run_detection_finetune

        return run_detection_finetune(args)
    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    apply_threads(args.threads)
    d = cfg.data
    init = cfg.weights or f"random init ({cfg.preset})"
    print(
        f"finetune: {cfg.task} on {d.dataset} ({', '.join(d.modalities)}), from {init}, mode {cfg.mode}, "
        f"{cfg.steps} steps of {cfg.batch_size}, outputs in {cfg.out_dir}",
        flush=True,
    )
    result = finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    exit_distributed()
    report_run(result, cfg.out_dir, "samples")
    return 0


def report_run(result: dict, out_dir: str, unit: str) -> None:
    """The last line of a fine-tuning run: steps, best validation score, split sizes, where it went."""
    best = result["best"]
    counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
    score = (
        f"best validation {best['metric']} {best['value']:.4f} at step {best['step']}" if best else "stopped"
    )
    print(f"finetune: {result['step']} steps, {score} ({unit}: {counts}); checkpoints in {out_dir}")


def run_evaluate(args: argparse.Namespace) -> int:
    from skysense.runtime import apply_threads
    from skysense.tasks.evaluate import evaluate

    apply_threads(args.threads)

    record = evaluate(args.checkpoint, data_root=args.data or "", split=args.split, out_dir=args.out)
    scores = record["scores"]
    head = {k: v for k, v in scores.items() if "/" not in k}
    print(
        f"evaluate: {record['split']} split, {record['samples']} samples: "
        + ", ".join(f"{k} {v:.4f}" for k, v in head.items())
    )
    for k, v in scores.items():
        if "/" in k:
            print(f"  {k}: {v:.4f}")
    if args.json:
        print(json.dumps(record))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune on a downstream task (classification, segmentation, change, detection)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p, "YAML file of FinetuneConfig fields, e.g. configs/finetune/potsdam_tiny.yaml")
    p.set_defaults(func=run_finetune)
    e = sub.add_parser(
        "evaluate",
        help="score a fine-tuned checkpoint on a split; confusion and prediction PNGs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, metavar="RUN/best.ckpt")
    e.add_argument("--data", metavar="PATH", help="the data folder (default: the run's)")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument(
        "--out", metavar="DIR", help="where the scores and PNGs go (default: beside the checkpoint)"
    )
    e.add_argument("--json", action="store_true", help="also print the scores as JSON")
    add_threads_argument(e)
    e.set_defaults(func=run_evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skysense.tasks.cli finetune|evaluate ...`` (what torchrun starts): ``skysense ...``."""
    from skysense.cli import main as skysense_main

    return skysense_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
