"""What runs on a batch of tiles in large-scene inference (:mod:`skysense.inference`): the encoder for
``embed`` (the fused map or an hr pyramid level) and fine-tuned task models for ``predict``
(segmentation, change, scene classification), each with its input normalisation, output stride, band
names and precision (fp32, or bf16 autocast where asked or native)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

if typing.TYPE_CHECKING:
    from skysense.models.skysense import SkySense

PRECISIONS = ("auto", "fp32", "bf16")
LEVELS = ("fused", "hr1", "hr2", "hr3", "hr4")
MODEL_STRIDE = 32  # the hr encoder's coarsest stride: tiles and overlaps are multiples of it


@dataclass
class Head:
    """A model on a batch of tiles: ``run({"hr": (B, C, T, T)}) -> (B, K, T / stride, T / stride)``.

    ``finish`` turns the blended (K, h, w) map into the written bands named ``bands``; ``inputs``
    are the sample keys the inputs feed (``hr``, or ``hr_pre``/``hr_post`` for change)."""

    run: Callable[[dict[str, Tensor]], Tensor]
    stride: int
    channels: int  # K, of the raw output
    bands: list[str]
    normalise: dict[str, Callable[[Tensor], Tensor]]  # per modality (hr, s2, s1); bands on dim -3
    in_bands: int
    finish: Callable[[np.ndarray], np.ndarray] = lambda a: a
    inputs: tuple[str, ...] = ("hr",)
    fixed_tile: bool = False  # classification: one score per tile, no overlap


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or
    AMX (there bf16 ran the base encoder 1.75x faster than fp32; see bench/inference.py)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _amp(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype: bf16 where asked, or ``auto`` where the device runs it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


def _wrap(fn: Callable[[dict[str, Tensor]], Tensor], device: torch.device, precision: str) -> Any:
    dtype = _amp(device, precision)

    @torch.inference_mode()
    def run(batch: dict[str, Tensor]) -> Tensor:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return fn(batch).float().cpu()

    return run


def encoder_head(
    weights: str | Path, level: str = "fused", device: str = "cpu", precision: str = "auto"
) -> Head:
    """``embed``: the fused map (stride 32) or one level of the hr pyramid (``hr1`` .. ``hr4``)."""
    from skysense.pretrained import load_pretrained

    if level not in LEVELS:
        raise ValueError(f"--level {level!r}: use one of {', '.join(LEVELS)}")
    loaded, meta, _ = load_pretrained(weights, check_inputs=False, allow_missing=("geo",))
    model = typing.cast("SkySense", loaded)
    if level != "fused" and "hr" not in meta.modalities:
        raise ValueError(f"{weights}: these weights have no hr encoder (they take {list(meta.modalities)})")
    dev = torch.device(device)
    model.to(dev)
    in_bands = len(meta.modalities["hr"].bands) if "hr" in meta.modalities else 0
    if level == "fused":
        fn: Callable[[dict[str, Tensor]], Tensor] = lambda b: model(b)["fused"]  # noqa: E731
        width, stride = int(model.out_dim), MODEL_STRIDE
    else:
        i = int(level[2]) - 1
        fn = lambda b: model.encoders["hr"](b["hr"])[i]  # noqa: E731
        assert meta.config.hr is not None
        width, stride = int(meta.config.hr.out_channels[i]), 4 * 2**i
    bands = [f"{level}_{k:04d}" for k in range(width)]
    norms: dict[str, Callable[[Tensor], Tensor]] = {m: s.normalise for m, s in meta.modalities.items()}
    if level == "fused" and any(m in meta.modalities for m in ("s2", "s1")):
        inputs: tuple[str, ...] = ("hr", "s2", "s1")  # whichever a scene gives (the model takes any subset)
    else:
        inputs = ("hr",)
    return Head(_wrap(fn, dev, precision), stride, width, bands, norms, in_bands, inputs=inputs)


def task_head(checkpoint: str | Path, tile: int, device: str = "cpu", precision: str = "auto") -> Head:
    """``predict``: segmentation (class, confidence), change (change, probability) or scene
    classification (class, confidence, one score per class; one cell per tile)."""
    from skysense.checkpoint import _spec, sensor_spec
    from skysense.tasks.evaluate import load_task_model

    model, _, meta = load_task_model(checkpoint)
    if "hr" not in model.encoder.cfg.modalities or meta["input"] not in ("hr", "fused"):
        raise ValueError(
            f"{checkpoint}: predict runs checkpoints over hr images; this one reads {meta['input']!r}"
        )
    dev = torch.device(device)
    model.to(dev)
    hr = (meta.get("contract") or {}).get("hr")
    hr_cfg = model.encoder.cfg.hr
    assert hr_cfg is not None
    spec = _spec(hr) if hr else sensor_spec("hr", hr_cfg.in_chans)
    classes = [str(c) for c in meta["classes"]]
    task = meta["task"]

    def top(p: np.ndarray) -> np.ndarray:  # (K, h, w) probabilities -> class, confidence
        return np.stack([p.argmax(0).astype(np.float32), p.max(0)])

    common: dict[str, Any] = {"normalise": {"hr": spec.normalise}, "in_bands": len(spec.bands)}
    if task == "segmentation":
        fn: Callable[[dict[str, Tensor]], Tensor] = lambda b: model(b)["logits"].softmax(1)  # noqa: E731
        return Head(_wrap(fn, dev, precision), 1, len(classes), ["class", "confidence"], finish=top, **common)
    if task == "change":
        fn = lambda b: model(b)["logits"].sigmoid()  # noqa: E731
        flag = lambda p: np.concatenate([(p > 0.5).astype(np.float32), p])  # noqa: E731
        bands = ["change", "probability"]
        return Head(
            _wrap(fn, dev, precision), 1, 1, bands, finish=flag, inputs=("hr_pre", "hr_post"), **common
        )
    if task == "classification":
        fn = lambda b: model(b)["logits"].softmax(1)[..., None, None]  # noqa: E731
        scores = lambda p: np.concatenate([top(p), p])  # noqa: E731
        bands = ["class", "confidence", *[f"score_{c}" for c in classes]]
        run = _wrap(fn, dev, precision)
        return Head(run, tile, len(classes), bands, finish=scores, fixed_tile=True, **common)
    raise ValueError(f"{checkpoint}: predict does not handle task {task!r} yet")
