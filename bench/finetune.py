"""What a fine-tuning step costs: samples/s and peak memory per task, full fine-tuning vs frozen encoder.

    python -m bench.finetune                 # tiny and base, fp32 and bf16, every task (~10 min on 2 cores)
    python -m bench.finetune --presets tiny  # a quick look

On a CPU the ``base`` multi-modal segmentation rows are skipped unless ``--all``: its fused map has a cell per
input pixel (4,096 cells x 9 tokens through 12 layers of width 768), ~20 TFLOP a sample and step, over an
hour for this benchmark on 2 cores; it is a GPU measurement.

One training step (forward, loss, backward, AdamW with layer-wise lr decay) of the task model of
:mod:`skysense.tasks.finetune` on synthetic inputs of the configs' shapes, side by side with the same
step with the encoder frozen (the linear-probe cost). Each configuration runs in a fresh process, so its
peak resident memory (CPU) or peak allocated memory (CUDA) is its own. bf16 is autocast of the forward.
Writes ``bench/results/finetune.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402

# task -> (encoder output the head reads, the preset's encoders kept, input shapes per sample)
TASKS: dict[str, dict[str, Any]] = {
    "classification": {"input": "hr", "model": {"s2": None, "s1": None}, "hr": 128},
    "segmentation": {"input": "hr", "model": {"s2": None, "s1": None}, "hr": 256},
    "change": {"input": "hr", "model": {"s2": None, "s1": None}, "hr": 256},
    "multimodal_segmentation": {"input": "fused", "model": {"hr": None}, "s2": 64, "dates": 4},
}


def batch_of(task: str, spec: dict[str, Any], b: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    if task == "multimodal_segmentation":
        n, t = spec["s2"], spec["dates"]
        days = 18_000 + torch.arange(t).expand(b, t) * 10
        return {
            "s2": torch.randn(b, t, 10, n, n, generator=g),
            "s1": torch.randn(b, t, 2, n, n, generator=g),
            "s2_dates": days,
            "s1_dates": days,
            "target": torch.randint(0, 2, (b, n, n), generator=g),
        }
    n = spec["hr"]
    if task == "change":
        pre, post = torch.randn(2, b, 3, n, n, generator=g)
        return {"hr_pre": pre, "hr_post": post, "target": torch.randint(0, 2, (b, n, n), generator=g)}
    x = torch.randn(b, 3, n, n, generator=g)
    if task == "classification":
        return {"hr": x, "label": torch.randint(0, 30, (b,), generator=g)}
    return {"hr": x, "target": torch.randint(0, 6, (b, n, n), generator=g)}


def measure(args: tuple[str, str, str, str, int, int, int], queue: Any) -> None:
    """One configuration in this (fresh) process: median step seconds and peak memory."""
    import torch

    from skysense.config import from_dict
    from skysense.models.skysense import SkySense
    from skysense.tasks.finetune import FinetuneConfig, StepModule, TaskModel, encoder_config
    from skysense.tasks.layer_decay import freeze, param_groups

    task, preset, precision, mode, batch, reps, threads = args
    common.setup(threads)
    spec = TASKS[task]
    kind = "segmentation" if task == "multimodal_segmentation" else task
    cfg = from_dict(
        FinetuneConfig, {"task": kind, "preset": preset, "input": spec["input"], "model": spec["model"]}
    )
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    classes = {"classification": 30, "segmentation": 6, "change": 2}[kind]
    model = TaskModel(SkySense(encoder_config(cfg)), kind, spec["input"], classes, cfg.head).to(device)
    freeze(model, mode)
    opt = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "layer_id"} for g in param_groups(model)], lr=1e-4
    )
    step = StepModule(model, cfg)
    data = {k: v.to(device) for k, v in batch_of(task, spec, batch).items()}
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses, _ = step(data, gen)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    seconds = common.time_call(one, reps, warmup=2)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    queue.put({"seconds": common.summary(seconds), "peak_mib": peak, "device": str(device)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="finetune.json")
    p.add_argument("--all", action="store_true", help="on a CPU too: base multi-modal segmentation")
    args = p.parse_args()
    import torch

    cpu = not torch.cuda.is_available()
    rows = []
    for preset in args.presets:
        for task in args.tasks:
            if cpu and preset != "tiny" and task == "multimodal_segmentation" and not args.all:
                print(f"skip {preset} {task} on a CPU (~20 TFLOP a sample and step; --all runs it)")
                continue
            for precision in args.precisions:
                row: dict[str, Any] = {"preset": preset, "task": task, "precision": precision}
                for mode in ("full", "frozen"):
                    cfg = (task, preset, precision, mode, args.batch, args.reps, common.THREADS)
                    t0 = time.perf_counter()
                    got = common.in_fresh_process(measure, cfg)
                    row[f"{mode}_samples_s"] = args.batch / got["seconds"]["median_s"]
                    row[f"{mode}_peak_mib"] = got["peak_mib"]
                    row["device"] = got["device"]
                    row[f"{mode}_wall_s"] = time.perf_counter() - t0
                row["full_over_frozen"] = row["frozen_samples_s"] / row["full_samples_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                payload = {"machine": common.machine(), "batch": args.batch, "reps": args.reps, "rows": rows}
                path = common.save(args.out, payload)  # after every row: a run cut short keeps its rows
    cols = ["preset", "task", "precision", "full_samples_s", "frozen_samples_s", "full_over_frozen"]
    cols += ["full_peak_mib", "frozen_peak_mib"]
    print(common.table(rows, cols))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
