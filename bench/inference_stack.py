"""Large-scene inference over dated stacks (``python -m bench.inference --stack``): the fused map of a
``tiny`` S2 + S1 model on ``size`` x ``size`` pixel stacks of ``dates`` dates each, km²/s, seconds per
tile, the encoder's share and peak RSS; the time of a 2k x 2k scene projected from the seconds per tile.

Every date is a real raster: the Sen1Floods11 chip (S2: its 10 bands of the S2 encoder out of 13; S1:
VV, VH in dB), shifted by a few pixels per date and mirrored beyond its 512 pixels, on the chip's grid
(EPSG:4326, ~10 m). Each S2 date has a cloud-mask sidecar: a real cloud mask (CLM) of the eo-learn
Slovenia patch, one of its 68 dates per S2 date, mirrored to the scene's size. S2 dates every 6 days
from 2019-03-01, S1 dates every 6 days from 2019-03-03.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench.common import THREADS, data_folder, setup  # noqa: E402

S2_PICK = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12]  # B2 .. B8A, B11, B12 of the chip's B1 .. B12


def _fit(a: np.ndarray, size: int, t: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size): mirrored beyond its edges, shifted by ``t`` steps (dates differ)."""
    shift = (7 * t) % 64, (11 * t) % 64
    need = max(0, size + 64 - a.shape[1]), max(0, size + 64 - a.shape[2])
    a = np.pad(a, ((0, 0), (0, need[0]), (0, need[1])), mode="symmetric")
    return a[:, shift[0] : shift[0] + size, shift[1] : shift[1] + size]


def _write(path: Path, x: np.ndarray, profile: dict, transform: Affine) -> None:
    p = {**profile, "count": x.shape[0], "height": x.shape[1], "width": x.shape[2], "transform": transform}
    p |= {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **p) as dst:
        dst.write(x.astype(p["dtype"]))


def build_stacks(tmp: Path, size: int, dates: int) -> dict[str, str | Path]:
    """The ``s2`` and ``s1`` folders of ``dates`` dated GeoTIFFs each (see the module doc)."""
    chip = data_folder("sen1floods11")
    clm = np.load(data_folder("eolearn_slovenia", "TestEOPatch") / "mask" / "CLM.npy")[..., 0]  # (68, h, w)
    folders: dict[str, str | Path] = {m: tmp / f"{m}_{size}_{dates}" for m in ("s2", "s1")}
    for m, name in folders.items():
        folder = Path(name)
        if folder.exists():
            continue
        folder.mkdir(parents=True)
        with rasterio.open(next((chip / m.upper()).glob("*.tif"))) as src:
            x, profile, transform = src.read(), src.profile, src.transform
        x = x[S2_PICK] if m == "s2" else x
        start = datetime.date(2019, 3, 1 if m == "s2" else 3)
        for t in range(dates):
            day = (start + datetime.timedelta(days=6 * t)).strftime("%Y%m%d")
            _write(folder / f"{day}.tif", _fit(x, size, t), profile, transform)
            if m == "s2":
                cloud = _fit(clm[t % len(clm)][None], size, t)
                mask_profile = {**profile, "dtype": "uint8", "nodata": None}
                _write(folder / f"{day}_cloud.tif", cloud, mask_profile, transform)
    return folders


def one_stack(args: argparse.Namespace) -> dict[str, object]:
    """One run in this process: the pipeline, then the encoder alone on one batch of the same tiles."""
    from skysense.checkpoint import default_meta, save_pretrained
    from skysense.inference import Grid, encoder_head, infer, tile_batch
    from skysense.inference_stack import StackScene
    from skysense.models.skysense import build_model

    setup(THREADS)
    tmp = Path(args.tmp)
    weights = tmp / f"{args.preset}_s2s1.safetensors"
    if not weights.exists():
        model = build_model(args.preset, hr=None)
        save_pretrained(model, weights, default_meta(model.cfg))
    folders = build_stacks(tmp, args.size, args.dates)
    bands = {"s2": 10, "s1": 2}
    head = dataclasses.replace(encoder_head(weights, "fused", "cpu", args.precision), stride=1)
    out = tmp / f"stack_{args.preset}_{args.precision}_{args.size}.tif"
    out.unlink(missing_ok=True)
    scene = StackScene(None, folders, bands)
    kw = {"tile": args.tile, "overlap": args.overlap, "batch": args.batch, "progress": False}
    s = infer(scene, out, head, model_file=weights, **kw)
    grid = Grid(args.size, args.size, args.tile, args.overlap, 1)
    scene = StackScene(None, folders, bands)
    sample, _ = tile_batch(scene, head, grid, 0, range(min(args.batch, grid.cols)))
    n = len(sample["lat"])
    t0 = time.perf_counter()
    head.run(dict(sample))
    enc_per_tile = (time.perf_counter() - t0) / n
    cloudy = float(np.mean([sample["s2_masked"].float().mean()]))
    with rasterio.open(out) as o:
        valid = float(np.nanmean(o.read(o.count)))
    big = Grid(2048, 2048, args.tile, args.overlap, 1)
    return {
        "preset": args.preset, "precision": args.precision, "size": args.size, "dates": args.dates,
        "tiles": s.tiles, "km2": s.km2, "seconds": s.seconds, "km2_per_s": s.km2_per_s,
        "pipeline_s_per_tile": s.seconds / s.tiles, "encoder_s_per_tile": enc_per_tile,
        "overhead": 1 - enc_per_tile * s.tiles / s.seconds, "peak_rss_mb": s.peak_rss_mb,
        "s2_masked_fraction_first_batch": cloudy, "valid_mean": valid,
        "projected_2k_tiles": big.rows * big.cols,
        "projected_2k_hours": big.rows * big.cols * s.seconds / s.tiles / 3600,
    }  # fmt: skip


def stack_rows(args: argparse.Namespace, tmp: str, run: object) -> list[dict[str, object]]:
    """One process per (precision, size), as the hr benchmark runs them; ``run(cmd) -> stdout``."""
    rows = []
    for precision in args.precisions:
        for size in args.sizes:
            cmd = ["--one", "--stack", "--tmp", tmp, "--size", str(size), "--dates", str(args.dates)]
            cmd += ["--preset", args.presets[0], "--precision", precision, "--tile", str(args.tile)]
            cmd += ["--overlap", str(args.overlap), "--batch", str(args.batch)]
            rows.append(json.loads(run(cmd).strip().splitlines()[-1]))  # type: ignore[operator]
    return rows


if __name__ == "__main__":  # the same as python -m bench.inference --stack ...
    from bench.inference import main

    sys.argv.insert(1, "--stack")
    main()
