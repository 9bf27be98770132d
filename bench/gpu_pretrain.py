"""Pre-training step time and peak memory per preset on one GPU (paper Sec. 3.2: bf16, checkpointing).

    python bench/gpu_pretrain.py                                   # tiny, base, huge on a CUDA GPU
    python bench/gpu_pretrain.py --presets tiny --steps 3 --batch 2  # a smoke run (the CPU if no GPU)

Each preset runs the trainer's own loop (:func:`skysense.pretrain.trainer.train`, everything on:
MGCL on hr, s2, s1 and the fused features, CMA, GCPL) on synthetic hr + s2 + s1 samples at the
paper's series lengths (20 s2 and 10 s1 dates per view, 64-px s2/s1 tiles, 256-px hr), bf16 autocast
and activation checkpointing, as ``configs/pretrain/huge_gpu.yaml`` does. Reported: the median time
of the steps after ``--warmup`` steps (the trainer's ``time`` column: forward, backward, clipping,
AdamW, EMA), samples/s, the peak of ``torch.cuda.max_memory_allocated`` over the run (student,
teacher, AdamW states and activations), the parameter count and whether every logged value stayed
finite. Synthetic data: the numbers measure the machine, not learning. Writes
``bench/results/gpu_pretrain.json``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402
from skysense.pretrain.cli import load_config  # noqa: E402
from skysense.pretrain.trainer import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def run_preset(preset: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    overrides = [
        f"preset={preset}",
        f"steps={args.steps}",
        f"batch_size={args.batch}",
        "warmup_steps=1",
        "strategy=ddp",  # one process: no wrapper either way
        f"out_dir={out / preset}",
        "ckpt_every=0",  # no checkpoint: huge's student + teacher + AdamW would be a 33-GB file
        "progress=false",
        "data.sources=[synthetic]",
        "model={}",  # all three encoders of the preset (the config drops hr)
        "data.modalities=[hr,s2,s1]",
        f"data.num_samples={2 * args.batch}",
        "data.tile=64",
        "data.hr_tile=256",
        "data.num_dates={s2: 20, s1: 10}",
        "pretrain.views.size={hr: 256, s2: 64, s1: 64}",
    ]
    cfg = load_config(REPO / "configs/pretrain/huge_gpu.yaml", overrides)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg, overwrite=True)
    with (out / preset / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    times = [float(r["time"]) for r in rows[args.warmup :]] or [float(rows[-1]["time"])]
    finite = all(math.isfinite(float(v)) for r in rows for v in r.values() if v != "")
    params = sum(v.numel() for k, v in result.pop("teacher").items() if k.startswith("backbone."))
    step_s = statistics.median(times)
    return {
        "preset": preset,
        "encoder_params_M": params / 1e6,
        "batch": args.batch,
        "steps": result["step"],
        "step_s": step_s,
        "samples_per_s": args.batch / step_s,
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "loss_first_last": [float(rows[0]["loss"]), float(rows[-1]["loss"])],
        "finite": finite,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,base,huge")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    p.add_argument("--batch", type=int, default=4, help="samples per step (one GPU)")
    p.add_argument("--out", default="gpu_pretrain.json", help="file name in bench/results/")
    args = p.parse_args()
    torch.manual_seed(0)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else common.cpu_model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            try:
                rows.append(run_preset(preset, args, Path(tmp)))
            except torch.cuda.OutOfMemoryError as e:  # report and go on with the next preset
                rows.append({"preset": preset, "batch": args.batch, "error": f"out of memory: {e}"[:300]})
            print(rows[-1], flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    cols = [
        "preset",
        "encoder_params_M",
        "batch",
        "step_s",
        "samples_per_s",
        "peak_mem_GiB",
        "finite",
        "error",
    ]
    print(common.table(rows, cols))
    path = common.save(args.out, {"device": device, "machine": common.machine(), "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
