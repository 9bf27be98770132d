"""What runs on a batch of tiles in large-scene inference (:mod:`skysense.inference`): the encoder for
``embed`` (the fused map or an hr pyramid level) and fine-tuned task models for ``predict``
(segmentation, change, scene classification), each with its input normalisation, output stride, band
names and precision (fp32, or bf16 autocast where asked or measured faster: ``--precision``)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

if typing.TYPE_CHECKING:
    from skysense.models.skysense import SkySense

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
    modality_bands: dict[str, int] = field(default_factory=dict)  # bands the model takes, per modality


def _amp(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` (:func:`skysense.runtime.resolve_precision`: bf16 where
    asked, or with ``auto`` where it measures faster), None for fp32."""
    from skysense.runtime import resolve_precision

    dtype = resolve_precision(precision, device.type)
    return dtype if dtype == torch.bfloat16 else None


def _wrap(fn: Callable[[dict[str, Tensor]], Tensor], device: torch.device, precision: str) -> Any:
    dtype = _amp(device, precision)

    @torch.inference_mode()
    def run(batch: dict[str, Tensor]) -> Tensor:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return fn(batch).float().cpu()

    return run


SERIES = ("s2", "s1")
CELLS = 4096  # cells per call of the fusion in CellMaskedFusion


class CellMaskedFusion:
    """The temporal fusion with each date left out where ``cell_pad`` (B, L, h, w) says, cell by cell;
    installed as the fusion module's ``forward`` (the model's other reads of the module stay as they are).

    The fusion mixes the tokens of one cell only (paper Eq. 2-3), so the cells go into the batch
    dimension, each with its own padding: (B, L, C, h, w) -> (B h w, L, C, 1, 1). With ``cell_pad``
    None it is the fusion's own forward."""

    def __init__(self, fusion: torch.nn.Module) -> None:
        self.inner = fusion.forward
        self.cell_pad: Tensor | None = None
        fusion.forward = self.forward

    def forward(self, feats: Tensor, days: Tensor, dated: Tensor, pad: Tensor) -> Tensor:
        if self.cell_pad is None:
            return self.inner(feats, days, dated, pad)
        b, l, c, h, w = feats.shape
        cells = (self.cell_pad | pad[:, :, None, None]).permute(0, 2, 3, 1).reshape(b * h * w, l)

        def per_cell(t: Tensor) -> Tensor:  # (B, L) -> (B h w, L)
            return t[:, None].expand(b, h * w, l).reshape(b * h * w, l)

        x = feats.permute(0, 3, 4, 1, 2).reshape(b * h * w, l, c, 1, 1)
        days, dated = per_cell(days), per_cell(dated)
        # a few thousand cells at a time: the attention and MLP activations of all cells of a batch of
        # 60-date tiles would take gigabytes
        out = torch.cat([
            self.inner(x[i : i + CELLS], days[i : i + CELLS], dated[i : i + CELLS], cells[i : i + CELLS])
            for i in range(0, b * h * w, CELLS)
        ])  # fmt: skip
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # from (B h w, D, 1, 1)


def cell_pads(batch: dict[str, Tensor]) -> Tensor | None:
    """Pop ``{s2,s1}_masked`` (B, T, n, n) from ``batch`` -> (B, L, h, w) on the fused grid, True where a
    date is left out of a cell: where any of its pixels there is masked (nodata, cloud). The grid and
    the token order L = [hr, s2 dates, s1 dates] are the model's (:meth:`SkySense.forward`)."""
    masked = {m: batch.pop(f"{m}_masked") for m in SERIES if f"{m}_masked" in batch}
    if not masked:
        return None
    series = [m for m in SERIES if m in batch]
    if "hr" in batch:
        grid = (batch["hr"].shape[-2] // MODEL_STRIDE, batch["hr"].shape[-1] // MODEL_STRIDE)
    else:
        grid = (batch[series[0]].shape[-2], batch[series[0]].shape[-1])
    b, dev = batch[series[0]].shape[0], batch[series[0]].device
    pads = [torch.zeros(b, 1, *grid, dtype=torch.bool, device=dev)] if "hr" in batch else []
    for m in series:
        x = batch[m]
        mask = masked.get(m, torch.zeros(x.shape[:2] + x.shape[-2:], dtype=torch.bool, device=dev)).float()
        n = mask.shape[-1]
        if n > grid[1]:  # several pixels per cell: any masked one leaves the date out
            mask = torch.nn.functional.max_pool2d(mask, n // grid[1])
        elif n < grid[1]:  # several cells per pixel
            mask = mask.repeat_interleave(grid[0] // n, -2).repeat_interleave(grid[1] // n, -1)
        pads.append(mask > 0)
    return torch.cat(pads, 1)


def masked_cells(model: SkySense, fn: Callable[[dict[str, Tensor]], Tensor]) -> Callable[..., Tensor]:
    """``fn`` (a forward of ``model``) with the stacks' masked pixels left out of the fusion per cell."""
    fusion = CellMaskedFusion(model.fusion)

    def run(batch: dict[str, Tensor]) -> Tensor:
        batch = dict(batch)
        fusion.cell_pad = cell_pads(batch)
        try:
            return fn(batch)
        finally:
            fusion.cell_pad = None

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
    if level == "fused" and any(m in meta.modalities for m in SERIES):
        inputs: tuple[str, ...] = ("hr", "s2", "s1")  # whichever a scene gives (the model takes any subset)
        fn = masked_cells(model, fn)
    else:
        inputs = ("hr",)
    return Head(_wrap(fn, dev, precision), stride, width, bands, norms, in_bands, inputs=inputs)


def normaliser(
    m: str, bands: int, contract: dict[str, Any], stats: str | Path | None = None
) -> Callable[[Tensor], Tensor]:
    """Modality ``m``'s normalisation: the checkpoint's input contract, else the ``stats`` file
    (``skysense stats --out``), else the sensor's default statistics (:func:`sensor_spec`)."""
    from skysense.checkpoint import _spec, sensor_spec

    if m in contract:
        return _spec(contract[m]).normalise
    if stats is not None:
        from skysense.bands import load_stats

        table = load_stats(stats)
        if m in table and len(table[m].bands) == bands:
            st = table[m]
            mean, std = torch.tensor(st.mean).view(-1, 1, 1), torch.tensor(st.std).view(-1, 1, 1)
            return lambda x: (x.float() - mean) / std
        raise ValueError(f"{stats}: no statistics of {bands} {m} band(s) (it has {sorted(table)})")
    try:
        return sensor_spec(m, bands).normalise
    except ValueError:
        raise ValueError(
            f"the checkpoint's {m} input has {bands} band(s) and no normalisation statistics: give them "
            f"with --stats FILE (`skysense stats` of the data it was trained on)"
        ) from None


def task_head(
    checkpoint: str | Path, tile: int, device: str = "cpu", precision: str = "auto",
    stats: str | Path | None = None,
) -> Head:  # fmt: skip
    """``predict``: segmentation (class, confidence; over hr images or s2/s1 stacks through the fused
    map), change (change, probability) or scene classification (class, confidence, one score per
    class; one cell per tile)."""
    from skysense.tasks.evaluate import load_task_model

    model, _, meta = load_task_model(checkpoint)
    cfg, task = model.encoder.cfg, meta["task"]
    stacked = task == "segmentation" and meta["input"] != "hr" and any(m in cfg.modalities for m in SERIES)
    if not stacked and ("hr" not in cfg.modalities or meta["input"] not in ("hr", "fused")):
        raise ValueError(
            f"{checkpoint}: predict runs hr checkpoints and segmentation over s2/s1 stacks; this one is "
            f"{task} over {meta['input']!r}"
        )
    dev = torch.device(device)
    model.to(dev)
    bands = {m: int(getattr(cfg, m).in_chans) for m in cfg.modalities}
    contract = meta.get("contract") or {}
    norms = {m: normaliser(m, n, contract, stats) for m, n in bands.items() if stacked or m == "hr"}
    classes = [str(c) for c in meta["classes"]]

    def top(p: np.ndarray) -> np.ndarray:  # (K, h, w) probabilities -> class, confidence
        return np.stack([p.argmax(0).astype(np.float32), p.max(0)])

    common: dict[str, Any] = {"normalise": norms, "in_bands": bands.get("hr", 0), "modality_bands": bands}
    if task == "segmentation":
        fn: Callable[[dict[str, Tensor]], Tensor] = lambda b: model(b)["logits"].softmax(1)  # noqa: E731
        inputs: tuple[str, ...] = ("hr",)
        if stacked:
            fn, inputs = masked_cells(model.encoder, fn), tuple(m for m in ("hr", *SERIES) if m in bands)
        run = _wrap(fn, dev, precision)
        return Head(run, 1, len(classes), ["class", "confidence"], finish=top, inputs=inputs, **common)
    if task == "change":
        fn = lambda b: model(b)["logits"].sigmoid()  # noqa: E731
        flag = lambda p: np.concatenate([(p > 0.5).astype(np.float32), p])  # noqa: E731
        bands_out = ["change", "probability"]
        return Head(
            _wrap(fn, dev, precision), 1, 1, bands_out, finish=flag, inputs=("hr_pre", "hr_post"), **common
        )
    if task == "classification":
        fn = lambda b: model(b)["logits"].softmax(1)[..., None, None]  # noqa: E731
        scores = lambda p: np.concatenate([top(p), p])  # noqa: E731
        bands_out = ["class", "confidence", *[f"score_{c}" for c in classes]]
        run = _wrap(fn, dev, precision)
        return Head(run, tile, len(classes), bands_out, finish=scores, fixed_tile=True, **common)
    raise ValueError(f"{checkpoint}: predict does not handle task {task!r} yet")
