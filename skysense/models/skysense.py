"""The factorised multi-modal spatiotemporal encoder of SkySense (paper Sec. 3.1, Fig. 2).

``F_i = g_i(x_i)`` per modality and date (Swin-V2 for ``hr``, ViT for ``s2``/``s1``, time folded
into the batch), alignment heads put ``s2``/``s1`` on the ``hr`` stage-4 grid, temporal fusion
with DTPE and an extra token gives ``F_fus_mm`` per cell, geo-context attention gives ``F_fus``.

Input: a batched sample dict with any subset of the built modalities::

    hr        (B, C, H, W)          float, normalised
    s2, s1    (B, T, C, H, W)       float, normalised; T may differ between modalities
    s2_dates  (B, T) int64          days since 1970-01-01 (skysense.dates); also s1_dates
    s2_mask   (B, T) bool           True = padded time step (optional, default no padding)
    hr_dates  (B,) or (B, 1) int64  optional: adds DTPE to the hr token too
    lat, lon  (B,) float degrees    optional: picks the geo-context region

Output (a dict, keys present for the modalities given)::

    hr        list of 4 maps (B, C_i, H/4/2^i, W/4/2^i)
    s2, s1    list of maps (B, T, D, h, w), one per ``out_indices`` layer, zero on padded steps;
              h = ceil(H / patch): a last token row/column partly over the zero padding
    s2_aligned, s1_aligned  (B, T, C_hr4, gh, gw) on the fused grid
    fused_mm  (B, D_fus, gh, gw)    F_fus_mm
    fused     (B, D_fus + d, gh, gw) F_fus (F_fus_mm when the config has no geo-context)
    region    (B,) int64            geo-context region, -1 without a location

Without ``hr`` the fused grid is the s2/s1 input size (H, W), any size: the alignment head gives
``patch`` x ``patch`` cells per token and the cells over the patch embedding's padding are cropped, so
a 9x9 ``s2`` input gives a 9x9 fused map whose cell (i, j) is pixel (i, j).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from skysense.config import MODALITIES, SERIES, SkySenseConfig, get_preset
from skysense.dates import check_days
from skysense.models.alignment import AlignmentHead, resample_to_grid
from skysense.models.geo_context import GeoContext
from skysense.models.swin import SwinTransformerV2
from skysense.models.temporal_fusion import TemporalFusion
from skysense.models.vit import VisionTransformer
from skysense.validate import Takes, check_modalities

# Keys a sample may carry besides the model inputs (targets and metadata of the data layer).
PASSIVE_KEYS = {"label", "target", "meta", "id", "hr_pre", "hr_post"}


class SkySense(nn.Module):
    """SkySense encoder; ``encoders``/``align`` are keyed by modality (``hr``, ``s2``, ``s1``)."""

    def __init__(self, cfg: SkySenseConfig) -> None:
        super().__init__()
        if not cfg.modalities:
            raise ValueError("the config builds no modality: set at least one of hr, s2, s1")
        self.cfg = cfg
        grid_dim = cfg.aligned_dim
        if cfg.hr is not None and cfg.fusion.in_dim != grid_dim:
            raise ValueError(f"fusion.in_dim={cfg.fusion.in_dim} must equal the hr stage-4 width {grid_dim}")
        self.encoders = nn.ModuleDict()
        self.align = nn.ModuleDict()
        if cfg.hr is not None:
            self.encoders["hr"] = SwinTransformerV2(cfg.hr)
        for m in SERIES:
            vit_cfg = getattr(cfg, m)
            if vit_cfg is None:
                continue
            if vit_cfg.depth - 1 not in vit_cfg.out_indices:
                raise ValueError(f"{m}.out_indices must include the last layer {vit_cfg.depth - 1}")
            self.encoders[m] = VisionTransformer(vit_cfg)
            self.align[m] = AlignmentHead(vit_cfg.embed_dim, grid_dim, vit_cfg.patch_size)
        self.fusion = TemporalFusion(cfg.fusion)
        self.geo = GeoContext(cfg.geo, cfg.fusion.embed_dim) if cfg.geo is not None else None
        self.out_dim = self.geo.out_dim if self.geo is not None else cfg.fusion.embed_dim
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations of every transformer block in backward (memory for compute)."""
        modules: list[Any] = [*self.encoders.values(), self.fusion]
        for module in modules:
            module.grad_checkpointing = enable

    # ------------------------------------------------------------------ input contract
    def check_inputs(self, sample: dict[str, Any]) -> tuple[list[str], int]:
        """Validate a batched sample; return the modalities present and the batch size.

        Raises ValueError/TypeError naming the key and what to do, before any compute. The
        per-modality checks are :func:`skysense.validate.check_modalities`; here: the key names,
        non-finite values, ``hr_dates`` and the location.
        """
        allowed = set(PASSIVE_KEYS) | {"lat", "lon"}
        for m in MODALITIES:
            allowed |= {m, f"{m}_dates", f"{m}_mask", f"{m}_invalid"}
        unknown = sorted(k for k in sample if k not in allowed)
        if unknown:
            raise ValueError(
                f"unknown input key(s) {unknown}: modalities are {list(MODALITIES)} with optional "
                "'<mod>_dates', '<mod>_mask', plus 'lat', 'lon'"
            )
        if not any(m in sample for m in MODALITIES):
            raise ValueError(
                f"the sample holds no modality: give at least one of {list(self.cfg.modalities)}"
            )
        takes = {m: Takes(getattr(self.cfg, m).in_chans) for m in self.cfg.modalities}
        dated = SERIES if self.fusion.dtpe is not None else ()  # the fusion encodes their dates
        present, batch = check_modalities(
            sample, takes, owner="the model", dated=dated, fix="normalise it first (skysense.data.Normalize)"
        )
        assert batch is not None
        for m in present:
            pad = sample.get(f"{m}_mask")
            x = sample[m][~pad] if pad is not None else sample[m]  # padded steps may hold anything
            if not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x)).sum())
                raise ValueError(
                    f"{m} contains {bad} NaN/inf values: replace nodata by 0 and flag it in "
                    f"'{m}_invalid' (the skysense data readers do this)"
                )
        self._check_extras(sample, batch)
        return present, batch

    @staticmethod
    def _check_extras(sample: dict[str, Any], batch: int) -> None:
        """``hr_dates`` (B,) or (B, 1) days; ``lat``/``lon`` (B,) degrees, both or neither."""
        if "hr_dates" in sample:
            hr_days = sample["hr_dates"]
            if not isinstance(hr_days, Tensor) or hr_days.numel() != batch or hr_days.dim() > 2:
                raise ValueError(f"hr_dates must have shape (B,) or (B, 1) with B = {batch}")
            check_days(hr_days, "hr_dates")
        if ("lat" in sample) != ("lon" in sample):
            raise ValueError("give both 'lat' and 'lon' (degrees) or neither")
        if "lat" in sample:
            lat, lon = torch.as_tensor(sample["lat"]), torch.as_tensor(sample["lon"])
            if lat.shape != (batch,) or lon.shape != (batch,):
                raise ValueError(
                    f"lat/lon must have shape ({batch},), got {tuple(lat.shape)}/{tuple(lon.shape)}"
                )
            if not (torch.isfinite(lat).all() and torch.isfinite(lon).all()):
                raise ValueError("lat/lon contain NaN/inf")
            if lat.abs().max() > 90 or lon.abs().max() > 360:
                raise ValueError("lat must be in [-90, 90] and lon in [-180, 360] degrees (WGS84)")

    # ------------------------------------------------------------------ forward
    def encode_series(self, m: str, x: Tensor, pad: Tensor) -> list[Tensor]:
        """Run the spatial encoder on the valid dates only: (B, T, C, H, W) -> maps (B, T, D, h, w).

        Padded steps never reach the encoder, so their content cannot change anything.
        """
        b, t = x.shape[:2]
        valid = ~pad
        maps = self.encoders[m](x[valid])  # each (N_valid, D, h, w)
        out = []
        for f in maps:
            full = f.new_zeros(b, t, *f.shape[1:])
            full[valid] = f
            out.append(full)
        return out

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        present, b = self.check_inputs(sample)
        out: dict[str, Any] = {}
        grid: tuple[int, int] | None = None
        tokens, days, dated, pads = [], [], [], []
        if "hr" in present:
            pyramid = self.encoders["hr"](sample["hr"])
            out["hr"] = pyramid
            top = pyramid[-1]  # (B, C4, gh, gw)
            grid = (top.shape[-2], top.shape[-1])
            tokens.append(top.unsqueeze(1))
            hr_days = sample.get("hr_dates")
            has = hr_days is not None and "hr" in self.cfg.fusion.dtpe_modalities
            days.append(hr_days.reshape(b, 1) if hr_days is not None and has else top.new_zeros(b, 1).long())
            dated.append(torch.full((b, 1), has, dtype=torch.bool, device=top.device))
            pads.append(torch.zeros(b, 1, dtype=torch.bool, device=top.device))
        for m in (s for s in SERIES if s in present):
            x = sample[m]
            t = x.shape[1]
            pad = sample.get(f"{m}_mask")
            pad = torch.zeros(b, t, dtype=torch.bool, device=x.device) if pad is None else pad
            maps = self.encode_series(m, x, pad)
            out[m] = maps
            last = maps[-1].flatten(0, 1)  # (B*T, D, h, w)
            # one aligned cell per input pixel: the cells of the patch embedding's zero padding go
            aligned = self.align[m](last)[..., : x.shape[-2], : x.shape[-1]]
            if grid is None:
                grid = (aligned.shape[-2], aligned.shape[-1])
            aligned = resample_to_grid(aligned, grid).unflatten(0, (b, t))  # (B, T, C4, gh, gw)
            out[f"{m}_aligned"] = aligned
            tokens.append(aligned)
            m_days = sample.get(f"{m}_dates")
            days.append(
                m_days if m_days is not None else torch.zeros(b, t, dtype=torch.int64, device=x.device)
            )
            use_dates = m_days is not None and m in self.cfg.fusion.dtpe_modalities
            dated.append(~pad if use_dates else torch.zeros_like(pad))
            pads.append(pad)
        feats = torch.cat(tokens, dim=1)  # (B, L, C4, gh, gw)
        fused_mm = self.fusion(feats, torch.cat(days, 1), torch.cat(dated, 1), torch.cat(pads, 1))
        out["fused_mm"] = fused_mm
        region = None
        if "lat" in sample:
            region = self.geo.regions(sample["lat"], sample["lon"]) if self.geo is not None else None
        out["region"] = region if region is not None else torch.full((b,), -1, dtype=torch.int64)
        out["fused"] = self.geo(fused_mm, region) if self.geo is not None else fused_mm
        return out


def build_model(config: str | SkySenseConfig, **overrides: Any) -> SkySense:
    """A SkySense encoder from a preset name (``tiny`` ... ``huge``) or a config.

    ``overrides`` set top-level config fields, e.g. ``s1=None`` for an hr+s2 model or
    ``grad_checkpointing=True``.
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    unknown = [key for key in overrides if not hasattr(cfg, key)]
    if unknown:
        raise ValueError(f"unknown SkySenseConfig field {unknown[0]!r}")
    # a copy: the caller's config (and its sub-configs) stays as it was
    return SkySense(dataclasses.replace(copy.deepcopy(cfg), **overrides))
