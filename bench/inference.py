"""Large-scene inference (``skysense embed``): km²/s and peak RSS on hr scenes of 1k and 8k pixels a side,
and on 60-date Sentinel-2 + Sentinel-1 stacks (``--stack``).

The scenes are mosaics of the real raster ``rasters/RGB.byte.tif`` of the shared data (flipped copies,
so tiles differ), written block by block into a temporary GeoTIFF with 0.5 m pixels. Each (preset,
precision, size) runs in its own process, so its peak RSS is its own. The encoder's batch throughput
on the same tiles (the model alone on random batches of the same size, no I/O, no blending) gives
``overhead = 1 - encoder seconds / pipeline seconds`` for the same number of tiles. Targets (the
issue): peak RSS at 8k at most 1.2x that at 1k; the pipeline within 10 % of the encoder.

    .venv/bin/python -m bench.inference [--sizes 1024 8192] [--presets tiny] [--precisions fp32 bf16]

The stacks (:mod:`bench.inference_stack`) are built from the real Sen1Floods11 chip (S2 and S1) and
the real cloud masks of the eo-learn Slovenia patch, one dated file each, on the chip's grid.

    .venv/bin/python -m bench.inference --stack [--sizes 128 192] [--dates 60] [--tile 64 --overlap 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/X.py` finds `bench`
from bench.common import THREADS, data_folder, machine, save, setup, table  # noqa: E402


def mosaic(out: Path, size: int) -> Path:
    """A ``size`` x ``size`` 3-band uint8 GeoTIFF tiled with flipped copies of RGB.byte.tif."""
    with rasterio.open(data_folder("rasters") / "RGB.byte.tif") as src:
        base = src.read()  # (3, 718, 791), 0 = nodata at its borders
    bh, bw = base.shape[1:]
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8"}
    profile |= {"crs": "EPSG:32618", "transform": from_origin(300_000.0, 4_500_000.0, 0.5, 0.5)}
    profile |= {"tiled": True, "blockxsize": 256, "blockysize": 256, "nodata": 0}
    with rasterio.open(out, "w", **profile) as dst:
        for y in range(0, size, bh):
            row = np.concatenate(
                [base[:, :, :: (-1) ** (i + y // bh)] for i in range(-(-size // bw))], axis=2
            )[:, :, :size]
            row = row[:, :: (-1) ** (y // bh)]
            h = min(bh, size - y)
            dst.write(row[:, :h], window=Window(0, y, size, h))
    return out


def one(args: argparse.Namespace) -> dict[str, object]:
    """One run in this process: the pipeline, then the encoder alone on as many tiles."""
    from skysense.checkpoint import default_meta, save_pretrained
    from skysense.inference import Grid, encoder_head, infer
    from skysense.models.skysense import build_model

    setup(THREADS)
    tmp = Path(args.tmp)
    weights = tmp / f"{args.preset}.safetensors"
    if not weights.exists():
        model = build_model(args.preset, s2=None, s1=None)
        save_pretrained(model, weights, default_meta(model.cfg))
    scene = tmp / f"scene{args.size}.tif"
    head = encoder_head(weights, "fused", "cpu", args.precision)
    out = tmp / f"out_{args.preset}_{args.precision}_{args.size}.tif"
    out.unlink(missing_ok=True)
    head.run({"hr": torch.zeros(args.batch, 3, args.tile, args.tile)})  # one-time costs out of the timing
    s = infer([scene], out, head, model_file=weights, tile=args.tile, overlap=args.overlap, batch=args.batch)
    grid = Grid(args.size, args.size, args.tile, args.overlap, 32)
    x = torch.randn(args.batch, 3, args.tile, args.tile)
    head.run({"hr": x})  # warm-up
    reps = max(2, s.tiles // args.batch)  # as many tiles as the pipeline ran
    t0 = time.perf_counter()
    for _ in range(reps):
        head.run({"hr": x})
    enc_per_tile = (time.perf_counter() - t0) / (reps * args.batch)
    seams = seam_difference(scene, out, head) if args.size <= 1024 else {}
    return {
        **seams,
        "preset": args.preset, "precision": args.precision, "size": args.size, "tiles": s.tiles,
        "grid": f"{grid.rows}x{grid.cols}", "km2": s.km2, "seconds": s.seconds, "km2_per_s": s.km2_per_s,
        "peak_rss_mb": s.peak_rss_mb, "encoder_s_per_tile": enc_per_tile,
        "pipeline_s_per_tile": s.seconds / s.tiles,
        "overhead": 1 - enc_per_tile * s.tiles / s.seconds,
    }  # fmt: skip


def first_strips(args: argparse.Namespace) -> dict[str, object]:
    """``--strips N``: the first N tile rows of the scene only (a scene too large to finish in the
    time at hand); seconds per tile, peak RSS (it grows with the width, not the height) and the time
    of the whole scene projected from them."""
    from skysense.checkpoint import default_meta, save_pretrained
    from skysense.inference import Grid, encoder_head, infer
    from skysense.inference_files import peak_rss_mb
    from skysense.models.skysense import build_model

    setup(THREADS)
    tmp = Path(args.tmp)
    weights = tmp / f"{args.preset}.safetensors"
    if not weights.exists():
        save_pretrained(model := build_model(args.preset, s2=None, s1=None), weights, default_meta(model.cfg))
    head = encoder_head(weights, "fused", "cpu", args.precision)
    head.run({"hr": torch.zeros(args.batch, 3, args.tile, args.tile)})  # one-time costs out of the timing
    out = tmp / f"out_{args.preset}_{args.precision}_{args.size}.tif"
    grid = Grid(args.size, args.size, args.tile, args.overlap, 32)
    kw = {"tile": args.tile, "overlap": args.overlap, "batch": args.batch, "progress": False}
    t0 = time.perf_counter()
    try:
        infer([tmp / f"scene{args.size}.tif"], out, head, model_file=weights, stop_after=args.strips, **kw)
    except KeyboardInterrupt:
        pass
    seconds, tiles = time.perf_counter() - t0, args.strips * grid.cols
    return {
        "preset": args.preset, "precision": args.precision, "size": args.size, "strips": args.strips,
        "tiles": tiles, "of_tiles": grid.rows * grid.cols, "seconds": seconds,
        "pipeline_s_per_tile": seconds / tiles, "peak_rss_mb": peak_rss_mb(),
        "projected_minutes": seconds / tiles * grid.rows * grid.cols / 60,
    }  # fmt: skip


def seam_difference(scene: Path, out: Path, head: object) -> dict[str, float]:
    """The tiled fused map against the model on the whole scene at once: the receptive field of a Swin
    encoder spans the tile, so the blend approximates it; returns the mean and max absolute difference
    relative to the mean absolute value of the whole-image map."""
    from skysense.checkpoint import sensor_spec
    from skysense.inference import lonlat

    with rasterio.open(scene) as src:
        x = torch.from_numpy(src.read().astype(np.float32))[None]
    invalid = (x == 0).any(1, keepdim=True)
    x = sensor_spec("hr", 3).normalise(x).masked_fill(invalid, 0.0)
    with rasterio.open(scene) as src:  # the tiles' lat/lon are their centres; the scene's centre here
        where = lonlat(src.crs, src.transform, [0], [0], src.height)
    whole = head.run({"hr": x, **where})[0].numpy()  # type: ignore[attr-defined]
    with rasterio.open(out) as o:
        tiled = o.read()[:-1]
    keep = np.isfinite(tiled)
    diff = np.abs(tiled - whole)[keep]
    scale = float(np.abs(whole[keep]).mean())
    return {"seam_mean_rel": float(diff.mean()) / scale, "seam_max_rel": float(diff.max()) / scale}


def one_command(args: argparse.Namespace, tmp: str, size: int, preset: str, precision: str) -> list[str]:
    """The command of one (preset, precision, size) run in its own process."""
    cmd = [sys.executable, "-m", "bench.inference", "--one", "--tmp", tmp, "--size", str(size)]
    cmd += ["--preset", preset, "--precision", precision, "--strips", str(args.strips)]
    return cmd + ["--tile", str(args.tile), "--overlap", str(args.overlap), "--batch", str(args.batch)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--presets", nargs="+", default=["tiny"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--name", default="inference.json", help="results file under bench/results")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--preset", default="", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="", help=argparse.SUPPRESS)
    p.add_argument("--stack", action="store_true", help="60-date S2 + S1 stacks (bench/inference_stack.py)")
    p.add_argument("--dates", type=int, default=60, help="--stack: dates per stack")
    p.add_argument("--strips", type=int, default=0, help="run the first N tile rows only, project the rest")
    args = p.parse_args()
    if args.stack:
        return stack_main(args)
    if args.one:
        print(json.dumps(first_strips(args) if args.strips else one(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            mosaic(Path(tmp) / f"scene{size}.tif", size)
        for preset in args.presets:
            for precision in args.precisions:
                for size in args.sizes:
                    cmd = one_command(args, tmp, size, preset, precision)
                    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                    print(table(rows[-1:], list(rows[-1])), flush=True)
    cols = ["preset", "precision", "size", "tiles", "km2_per_s", "peak_rss_mb", "overhead", "seam_mean_rel"]
    print(table(rows, list(rows[0]) if args.strips else cols))
    save(args.name, {"machine": machine(), "tile": args.tile, "overlap": args.overlap, "rows": rows})


def stack_main(args: argparse.Namespace) -> None:
    """``--stack``: the stack benchmark (defaults: sizes 128 and 192, 64-px tiles overlapping by 32)."""
    from bench.inference_stack import one_stack, stack_rows

    if args.one:
        print(json.dumps(one_stack(args)))
        return
    if args.sizes == [1024, 8192]:  # the hr defaults: a 60-date stack takes seconds a 64-px tile
        args.sizes, args.tile, args.overlap = [128, 192], 64, 32

    def run(cmd: list[str]) -> str:
        full = [sys.executable, "-m", "bench.inference", *cmd]
        res = subprocess.run(full, capture_output=True, text=True, check=True, cwd=REPO)
        print(res.stdout.strip().splitlines()[-1], flush=True)
        return res.stdout

    with tempfile.TemporaryDirectory() as tmp:
        rows = stack_rows(args, tmp, run)
    cols = ["precision", "size", "dates", "tiles", "km2_per_s", "pipeline_s_per_tile", "encoder_s_per_tile"]
    print(table(rows, [*cols, "overhead", "peak_rss_mb", "projected_2k_hours"]))
    save(args.name, {"machine": machine(), "tile": args.tile, "overlap": args.overlap, "rows": rows})


if __name__ == "__main__":
    main()
