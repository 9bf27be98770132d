"""``skysense predict`` with a detection checkpoint: tiled detection over an image of any size
(:mod:`skysense.detection.tiling`), written as GeoJSON polygons in the image's CRS, DOTA ``labelTxt`` or
COCO JSON (:mod:`skysense.detection.geo`).

Tiles are read at the image's own resolution: the detector should have been trained on images of about
that ground sampling distance (a run whose ``data.size`` shrank larger images sees objects smaller than
the scene shows them; resample the scene to match, e.g. ``gdalwarp -tr``). ``--overlap`` should be at
least the largest object's size in pixels (see :mod:`skysense.detection.tiling`)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from skysense.detection.tiling import Detector, Image, detect_tiled

__all__ = ["Summary", "detect_file", "detector_from_checkpoint", "is_detection_checkpoint", "predict_cli"]


def is_detection_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a fine-tuning checkpoint of a detector (False for anything else: the caller's
    own loader then says what is wrong)."""
    from skysense.detection.models import TASKS
    from skysense.files import safe_torch_load

    try:
        ck = safe_torch_load(path)
    except (OSError, ValueError):
        return False
    return isinstance(ck, dict) and (ck.get("meta") or {}).get("task") in TASKS


def _wrap(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> Callable[..., Any]:
    """The detector on a batch on ``device`` (autocast to ``dtype`` where given), results on the CPU."""

    @torch.inference_mode()
    def run(x: Tensor) -> list[dict[str, Tensor]]:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x.to(device))
        return [{k: (v.cpu() if k == "labels" else v.float().cpu()) for k, v in o.items()} for o in out]

    return run


def detector_from_checkpoint(path: str | Path, device: str = "cpu", precision: str = "auto") -> Detector:
    """The detector of a ``skysense finetune`` checkpoint of task ``detection`` or ``oriented_detection``,
    in eval mode on ``device``, with its input normalisation (the checkpoint's hr contract)."""
    from skysense.checkpoint import _spec, sensor_spec
    from skysense.detection.task import load_detector
    from skysense.inference_heads import _amp

    model, meta = load_detector(path)
    dev = torch.device(device)
    model.to(dev).eval()
    hr = (meta.get("contract") or {}).get("hr")
    spec = _spec(hr) if hr else sensor_spec("hr", 3)
    run = _wrap(model, dev, _amp(dev, precision))
    oriented = meta["task"] == "oriented_detection"
    return Detector(run, spec.normalise, [str(c) for c in meta["classes"]], oriented, len(spec.bands))


@dataclass
class Summary:
    """What a run found: detections per class, tiles, time, peak memory."""

    out: str
    detections: int
    per_class: dict[str, int]
    tiles: int
    seconds: float
    peak_rss_mb: float

    def line(self) -> str:
        top = sorted(self.per_class.items(), key=lambda kv: -kv[1])[:6]
        classes = ", ".join(f"{k} {v}" for k, v in top) + (", ..." if len(self.per_class) > 6 else "")
        return (
            f"{self.out}: {self.detections} objects ({classes or 'none'}) on {self.tiles} tiles in "
            f"{self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB"
        )


def detect_file(
    image: str | Path, out: str | Path, detector: Detector, *, model_file: str | Path = "", tile: int = 1024,
    overlap: int = 256, batch: int = 4, iou: float = 0.5, progress: bool = True, overwrite: bool = False,
) -> Summary:  # fmt: skip
    """Detect over ``image`` and write ``out`` (.geojson, .txt DOTA, .json COCO); an existing ``out``
    is a finished run, kept unless ``overwrite``. GeoJSON on an image without a CRS is refused first."""
    from skysense.detection.geo import check_output, write
    from skysense.inference_files import peak_rss_mb

    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: the output folder does not exist: create it first")
    img = Image(image, detector.in_bands)
    try:
        check_output(out, img.crs, image)
        if out.exists() and not overwrite:
            return Summary(
                f"{out} (already complete; --overwrite recomputes it)", 0, {}, 0, 0.0, peak_rss_mb()
            )
        t0 = time.perf_counter()
        dets = detect_tiled(
            img, detector, tile=tile, overlap=overlap, batch=batch, iou=iou, progress=progress
        )
        tags = {"model": str(model_file), "tile": tile, "overlap": overlap, "nms_iou": iou}
        write(out, dets, img.crs, img.transform, image, img.height, img.width, tags)
    finally:
        img.close()
    counts = torch.bincount(dets.labels, minlength=len(dets.classes)).tolist() if len(dets) else []
    per_class = {dets.classes[k]: n for k, n in enumerate(counts) if n}
    return Summary(str(out), len(dets), per_class, dets.tiles, time.perf_counter() - t0, peak_rss_mb())


def predict_cli(args: argparse.Namespace) -> int:
    """``skysense predict IMAGE --checkpoint DETECTOR.ckpt --out OUT.geojson|.txt|.json``."""
    from skysense.inference_cli import _device

    if len(args.inputs) != 1:
        raise ValueError(f"a detector takes one image, got {len(args.inputs)}: run it once per image")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("detection runs in one process: start it without torchrun")
    raster_only = [f"--{k}" for k in ("s2", "s1", "stats") if getattr(args, k, None)]
    if getattr(args, "format", "gtiff") != "gtiff" or raster_only:
        raise ValueError(
            f"{' '.join(raster_only) or '--format'} is for raster outputs: a detector reads one hr image "
            "and writes its boxes as .geojson, .txt or .json (chosen by --out)"
        )
    detector = detector_from_checkpoint(args.checkpoint, _device(args.device), args.precision)
    summary = detect_file(
        args.inputs[0], args.out, detector, model_file=args.checkpoint, tile=args.tile, overlap=args.overlap,
        batch=args.batch_size, progress=not args.quiet, overwrite=args.overwrite,
    )  # fmt: skip
    print(summary.line())
    return 0
