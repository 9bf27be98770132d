"""Data-loading throughput of every dataset (0/1/2 workers) next to the model's training step time.

Reads the real data under ``SKYSENSE_DATA`` (default ``../shared/data`` beside the repo), times a
``DataLoader`` (batch 8, :func:`skysense.data.collate`) over each dataset for ``--seconds`` per
setting (after a first, untimed batch: worker start-up excluded), then the ``tiny`` and ``base``
model's forward + backward step under bf16 autocast on CPU. Prints a table and writes
``bench/results/data.json``.

    .venv/bin/python bench/data.py [--seconds 3] [--models tiny base] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset

from skysense.data import (
    BigEarthNetMM,
    CenterCrop,
    ChangeDetection,
    EOPatchDataset,
    PixelTimeSeries,
    SceneClassification,
    Segmentation,
    Sen1Floods11,
    collate,
)
from skysense.data.pretrain import PretrainDataset
from skysense.data.root import data_root

REPO = Path(__file__).resolve().parents[1]
DATA = data_root().resolve()
OUT = REPO / "bench" / "results" / "data.json"


def pretrain_folder(tmp: Path) -> tuple[Path, dict[str, str | dt.date]]:
    """Sen1Floods11 S1 + S2 (real pixels) linked into the pre-training layout."""
    src = DATA / "sen1floods11"
    for m, sub in (("s1", "S1"), ("s2", "S2")):
        (tmp / m).mkdir(parents=True, exist_ok=True)
        for f in (src / sub).glob("*.tif"):
            link = tmp / m / f.name
            if not link.exists():
                link.symlink_to(f)
    return tmp, {"Spain_7370579_S1Hand.tif": "2019-09-17", "Spain_7370579_S2Hand.tif": "2019-09-18"}


def datasets(tmp: Path) -> dict[str, Callable[[], Dataset]]:
    pre, dates = pretrain_folder(tmp / "pretrain")
    return {
        "aid (hr 150px)": lambda: SceneClassification(DATA / "aid"),
        "bigearthnet_mm (s2+s1 120px)": lambda: BigEarthNetMM(DATA / "bigearthnet_mm"),
        "sen1floods11 (s1+s2 512px -> 256)": lambda: Sen1Floods11(
            DATA / "sen1floods11", transforms=CenterCrop(256)
        ),
        "eopatch (NDVI T=68, 32px tiles)": lambda: EOPatchDataset(DATA / "eolearn_slovenia", patch_size=32),
        "levir_cd (hr pair 256px)": lambda: ChangeDetection(DATA / "levir_cd"),
        "loveda (hr 1024px + mask)": lambda: Segmentation(
            DATA / "seg_samples" / "loveda", reduce_zero_label=True
        ),
        "sits (modis ndvi pixels)": lambda: PixelTimeSeries(DATA / "sits" / "samples_modis_ndvi.npz"),
        "pretrain (s1+s2 64px tiles)": lambda: PretrainDataset(pre, size=64, dates=dates),
    }


class Repeat(Dataset):
    """A small dataset cycled to at least ``n`` samples, so every batch is full."""

    def __init__(self, ds: Dataset, n: int = 64) -> None:
        self.ds, self.size = ds, max(n, len(ds))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Any:
        return self.ds[i % len(self.ds)]  # type: ignore[arg-type]


def loader_rate(ds: Dataset, workers: int, seconds: float, batch: int = 8) -> float:
    """Samples per second after the first batch, cycling epochs until ``seconds`` have passed."""
    ds = Repeat(ds)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0)  # fmt: skip
    it, n, start = iter(loader), 0, None
    while True:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if start is None:
            start = time.perf_counter()  # first batch: worker start-up, not counted
            continue
        n += len(b["meta"])
        if time.perf_counter() - start >= seconds:
            return n / (time.perf_counter() - start)


def model_step(name: str, steps: int) -> dict[str, Any]:
    """Forward + backward, bf16, of a pre-training-like batch: B 2, hr 3x256x256, s2/s1 T=4 at 64x64."""
    from skysense.models.skysense import build_model

    torch.manual_seed(0)
    model = build_model(name)
    b, t = 2, 4
    days = torch.arange(t, dtype=torch.int64).repeat(b, 1) * 10 + 18000
    batch = {
        "hr": torch.randn(b, 3, 256, 256),
        "s2": torch.randn(b, t, 10, 64, 64),
        "s1": torch.randn(b, t, 2, 64, 64),
        "s2_dates": days,
        "s1_dates": days,
        "lat": torch.full((b,), 45.0, dtype=torch.float64),
        "lon": torch.full((b,), 14.5, dtype=torch.float64),
    }

    def full_step() -> None:
        out = model(batch)
        out["fused"].float().mean().backward()

    def encoders_step() -> None:  # spatial encoders only: a lower bound of the full step
        pad = torch.zeros(b, t, dtype=torch.bool)
        loss = model.encoders["hr"](batch["hr"])[-1].float().mean()
        for m in ("s2", "s1"):
            loss = loss + model.encode_series(m, batch[m], pad)[-1].float().mean()
        loss.backward()

    result: dict[str, Any] = {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full_step()
        step, result["what"] = full_step, "full forward + backward"
    except Exception as e:  # the model is another team's work in progress: time what runs
        step, result["what"] = (
            encoders_step,
            f"spatial encoders only (full model raised {type(e).__name__}: {e})",
        )
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    return {**result, "batch": b, "step_s": median, "samples_per_s": b / median}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per dataset and worker setting")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="*", default=["tiny", "base"])
    ap.add_argument(
        "--steps", type=int, default=None, help="timed model steps, median reported (3 tiny, 1 others)"
    )
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"real data not found at {DATA}; set SKYSENSE_DATA")
    # Loaders run with one torch thread (DataLoader workers do so anyway): on 2 busy cores, 2 intra-op
    # threads made a single torch.stack of a batch 30x slower. The model step gets every core.
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in datasets(Path(tmp)).items():
            ds = make()
            n = len(cast(Sized, ds))  # every dataset here is map-style
            row: dict[str, Any] = {"dataset": name, "samples": n}
            for w in args.workers:
                row[f"workers_{w}"] = loader_rate(ds, w, args.seconds)
            rows.append(row)
            print(
                f"{name:36s} n={n:5d} "
                + " ".join(f"w{w}: {row[f'workers_{w}']:8.1f}/s" for w in args.workers)
            )
    torch.set_num_threads(os.cpu_count() or 1)
    models = []
    for m in args.models:
        try:
            models.append(model_step(m, args.steps or (3 if m == "tiny" else 1)))
            r = models[-1]
            rate, params, sec = r["samples_per_s"], r["params_m"], r["step_s"]
            print(f"model {m} ({r['what']}): {params:.1f}M params, step {sec:.3f}s, {rate:.2f} samples/s")
        except Exception as e:  # the model is another team's work in progress: report, keep the data numbers
            models.append({"model": m, "error": f"{type(e).__name__}: {e}"})
            print(f"model {m}: not measured ({type(e).__name__}: {e})")
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "torch": torch.__version__,
        "data": str(DATA),
        "batch_size": 8,
        "loader_torch_threads": 1,
        "load_average_at_end": os.getloadavg(),
        "seconds_per_setting": args.seconds,
        "loaders_samples_per_s": rows,
        "model_steps": models,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| dataset | samples | " + " | ".join(f"{w} workers (samples/s)" for w in args.workers) + " |")
    print("|---|---:|" + "---:|" * len(args.workers))
    for r in rows:
        print(
            f"| {r['dataset']} | {r['samples']} | "
            + " | ".join(f"{r[f'workers_{w}']:.1f}" for w in args.workers)
            + " |"
        )
    for r in (r for r in models if "error" not in r):
        what = "fwd+bwd" if r["what"].startswith("full") else "encoders only"
        print(f"| model `{r['model']}` step, {what} (bf16, B={r['batch']}) | | {r['step_s']:.3f} s = "
              f"{r['samples_per_s']:.2f} samples/s |")  # fmt: skip
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
