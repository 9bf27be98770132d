"""What detection costs: images/s of the detectors' inference at 1024 x 1024 and of a training step, and
the tiled pipeline over a larger scene against the detector alone.

    python -m bench.detection                          # tiny, both detectors, fp32 (a few minutes on 2 cores)
    python -m bench.detection --tasks detection --reps 2

For each detector (Faster R-CNN ``detection``, Oriented R-CNN ``oriented_detection``, on the preset's
hr pyramid and the default :class:`~skysense.detection.models.DetectionHeadConfig`, 20 classes as DIOR):

- *inference*: eval-mode forward on a (B, 3, S, S) batch of noise (randomly initialised heads keep many
  boxes above the score threshold, so NMS and the 100 detections per image are paid in full);
- *train step*: forward with 8 random boxes per image, the summed losses' backward, one AdamW step;
- *tiled*: :func:`skysense.detection.tiling.detect_tiled` over a GeoTIFF of ``--scene`` pixels a side
  (tiles of S, overlap S / 4: reading, normalising, shifting, the mosaic NMS), as tiles/s beside the
  detector alone on as many tiles of the same noise, each pipeline call followed by one of those in
  the same process (so both see the same load on a shared machine):
  ``overhead = 1 - detector s per tile / pipeline s per tile``, and the share of
  the pipeline's time spent in the mosaic NMS (``merge_share``). The inference batch is the same noise
  as the scene (the heads' cost depends on how many boxes pass their score threshold).

Each configuration runs in a fresh process, so its peak resident memory (CPU) or peak allocated memory
(CUDA) is its own. Writes ``bench/results/detection.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402

CLASSES = 20  # DIOR / DIOR-R


def targets(task: str, b: int, size: int, gen: Any) -> list[dict[str, Any]]:
    """8 random boxes per image: ``x1, y1, x2, y2`` or ``cx, cy, w, h, angle``, sides 16..128 px."""
    import torch

    out = []
    for _ in range(b):
        wh = 16 + torch.rand(8, 2, generator=gen) * 112
        c = wh / 2 + torch.rand(8, 2, generator=gen) * (size - wh)
        if task == "detection":
            boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
        else:
            angle = (torch.rand(8, 1, generator=gen) - 0.5) * math.pi
            boxes = torch.cat([c, wh, angle], 1)
        out.append({"boxes": boxes, "labels": torch.randint(0, CLASSES, (8,), generator=gen)})
    return out


def build(task: str, preset: str) -> Any:
    from skysense.detection.models import build_detector
    from skysense.models.skysense import build_model

    return build_detector(task, build_model(preset, s2=None, s1=None), CLASSES)


def scene_tif(path: Path, size: int) -> Path:
    """A ``size`` x ``size`` 3-band uint8 GeoTIFF of noise (UTM, 0.5 m pixels)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    gen = np.random.default_rng(0)
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8"}
    profile |= {"crs": "EPSG:32633", "transform": from_origin(500_000.0, 4_200_000.0, 0.5, 0.5)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(gen.integers(0, 255, (3, size, size), dtype=np.uint8))
    return path


def measure(args: tuple[str, str, str, str, int, int, int, int, int], queue: Any) -> None:
    """One configuration in this (fresh) process: median seconds per call, peak memory."""
    import torch

    task, preset, precision, mode, size, batch, reps, scene, threads = args
    common.setup(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = build(task, preset).to(device)
    result: dict[str, Any] = {"device": str(device)}
    if mode == "tiled":
        one = tiled(model.eval(), task, device, precision, size, batch, scene, result)
        seconds, busy = interleaved(one, model, device, precision, size, batch, reps, result)
    else:
        one = model_call(model, task, device, precision, mode, size, batch, result)
        seconds, busy = common.quiet_time_call(one, reps, warmup=1)  # busy: other processes' cores
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    queue.put({**result, "seconds": common.summary(seconds), "peak_mib": peak, "busy_cores": busy})


def interleaved(
    pipeline: Callable[[], None],
    model: Any,
    device: Any,
    precision: str,
    size: int,
    batch: int,
    reps: int,
    result: dict,
) -> tuple[list[float], float]:
    """Seconds of ``reps`` pipeline calls, each followed by the detector alone (eval, inference mode) on
    as many tiles of scene noise, so that both see the same load; the latter's median per tile goes
    to ``result["alone_s_per_tile"]``."""
    import torch

    x = (torch.randint(0, 255, (batch, 3, size, size)).float() / 255.0).to(device)

    @torch.inference_mode()
    def alone() -> None:
        for _ in range(max(1, result["tiles"] // batch)):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    pipeline()  # warm-up; sets result["tiles"]
    busy = common.wait_quiet()
    pipe, solo = [], []
    for _ in range(reps):
        pipe += common.time_call(pipeline, 1, warmup=0)
        solo += common.time_call(alone, 1, warmup=0)
    result["alone_s_per_tile"] = common.summary(solo)["median_s"] / (result["tiles"] // batch * batch)
    return pipe, busy


def model_call(
    model: Any, task: str, device: Any, precision: str, mode: str, size: int, batch: int, result: dict
) -> Callable[[], None]:
    """A training step (``mode="train"``) or an eval-mode forward on a noise batch."""
    import torch

    gen = torch.Generator().manual_seed(0)
    # the tiled scene's pixels (uint8 noise / 255): the heads' cost depends on how many boxes pass
    x = (torch.randint(0, 255, (batch, 3, size, size), generator=gen).float() / 255.0).to(device)
    tg = [{k: v.to(device) for k, v in t.items()} for t in targets(task, batch, size, gen)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train(mode == "train")

    def amp() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train() -> None:
        with amp():
            losses = model(x, tg)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        sync()

    @torch.inference_mode()
    def infer() -> None:
        with amp():
            out = model(x)
        result["boxes_per_image"] = sum(len(o["scores"]) for o in out) / batch
        sync()

    return train if mode == "train" else infer


def tiled(
    model: Any, task: str, device: Any, precision: str, size: int, batch: int, scene: int, result: dict
) -> Any:
    """A call of the tiled pipeline over a ``scene`` x ``scene`` GeoTIFF (tiles ``size``, overlap /4)."""
    import time

    import torch

    from skysense.detection import tiling
    from skysense.detection.predict import _wrap

    run = _wrap(model, device, torch.bfloat16 if precision == "bf16" else None)
    det = tiling.Detector(
        run, lambda t: t.float() / 255.0, [str(k) for k in range(CLASSES)], task != "detection"
    )
    path = scene_tif(Path(tempfile.mkdtemp()) / "scene.tif", scene)
    nms, merge_s = tiling.merge_nms, [0.0]

    def timed_nms(*a: Any) -> Any:  # the mosaic NMS's share of the pipeline
        t0 = time.perf_counter()
        keep = nms(*a)
        merge_s[0] += time.perf_counter() - t0
        return keep

    tiling.merge_nms = timed_nms  # type: ignore[assignment]

    def one() -> None:
        merge_s[0] = 0.0
        out = tiling.detect_tiled(path, det, tile=size, overlap=size // 4, batch=batch, progress=False)
        result.update(tiles=out.tiles, boxes=len(out), merge_s=merge_s[0])

    return one


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny"])
    p.add_argument("--tasks", nargs="+", default=["detection", "oriented_detection"])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--size", type=int, default=1024, help="image (tile) side in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--scene", type=int, default=2048, help="side of the tiled scene; 0 skips the tiled row")
    p.add_argument("--out", default="detection.json")
    args = p.parse_args()
    rows = []
    for preset in args.presets:
        for task in args.tasks:
            for precision in args.precisions:
                row: dict[str, Any] = {"preset": preset, "task": task, "precision": precision}
                for mode in ("infer", "train", "tiled") if args.scene else ("infer", "train"):
                    cfg = (
                        task,
                        preset,
                        precision,
                        mode,
                        args.size,
                        args.batch,
                        args.reps,
                        args.scene,
                        common.THREADS,
                    )
                    got = common.in_fresh_process(measure, cfg)
                    med = got["seconds"]["median_s"]
                    row["device"] = got["device"]
                    row[f"{mode}_peak_mib"] = got["peak_mib"]
                    row[f"{mode}_busy_cores"] = got["busy_cores"]
                    row[f"{mode}_best_s"] = got["seconds"]["best_s"]
                    if mode == "tiled":
                        row["tiled_tiles_s"] = got["tiles"] / med
                        row["tiled_alone_s_per_tile"] = got["alone_s_per_tile"]
                        row["overhead"] = 1 - got["alone_s_per_tile"] / (med / got["tiles"])
                        row["merge_share"] = got["merge_s"] / med
                    else:
                        row[f"{mode}_images_s"] = args.batch / med
                    row.update({k: got[k] for k in ("boxes_per_image",) if k in got})
                rows.append(row)
                print(json.dumps(row), flush=True)
    cols = ["preset", "task", "precision", "infer_images_s", "train_images_s", "tiled_tiles_s", "overhead"]
    cols += ["merge_share"]
    cols += ["infer_peak_mib", "train_peak_mib", "tiled_peak_mib"]
    print(common.table(rows, cols))
    payload = {
        "machine": common.machine(),
        **{k: getattr(args, k) for k in ("size", "batch", "reps", "scene")},
    }
    path = common.save(args.out, {**payload, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
