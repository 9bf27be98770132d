"""``skysense info``: architecture and parameter counts per part (paper Table 9 / spec Sec. 2).

The model is built with its large tensors on the meta device (:func:`build_for_counting`), so even
``huge`` (2B parameters) is instant and allocates nothing.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING, Any

from skysense.config import PRESETS, get_preset

if TYPE_CHECKING:
    from torch import nn

# The paper's counts for huge, in millions (spec Sec. 2). "other" (189M) is not described in
# the paper; it is not part of the encoder we build (pre-training heads are counted separately).
PAPER_HUGE_M = {"tokenizers": 0.21, "backbones": 1260.31, "fusion": 398.20, "prototypes": 215.0}
PAPER_HUGE_TOTAL_M = 2062.85


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per part of a :class:`~skysense.models.skysense.SkySense` model."""
    counts: dict[str, int] = {}
    encoders: Any = model.encoders
    align: Any = model.align
    for m in ("hr", "s2", "s1"):
        counts[m] = _count(encoders[m]) if m in encoders else 0
        counts[f"align_{m}"] = _count(align[m]) if m in align else 0
    # The paper's "tokenizers" (0.21M for huge) matches the patch-embedding conv weights (0.2135M).
    counts["tokenizers"] = sum(e.patch_embed.projection.weight.numel() for e in encoders.values())
    fusion: Any = model.fusion
    counts["fusion"] = _count(fusion)
    geo: Any = model.geo
    counts["prototypes"] = 0 if geo is None else geo.prototypes.numel()
    counts["geo_query"] = 0 if geo is None else _count(geo.query)
    counts["backbones"] = counts["hr"] + counts["s2"] + counts["s1"]
    counts["fusion_with_alignment"] = counts["fusion"] + counts["align_s2"] + counts["align_s1"]
    counts["total"] = _count(model)
    return counts


def build_for_counting(cfg: Any) -> nn.Module:
    """The model of ``cfg`` with every tensor of 65,536 elements or more on the meta device, their in-place
    initialisers skipped; smaller tensors (the buffers of position tables that ``__init__`` computes) stay
    on the CPU. Built under ``torch.device("meta")`` instead, those computations would run through torch's
    Python decompositions, which import ``torch._dynamo``: a second or more of start-up for ``info``."""
    import torch
    from torch.overrides import TorchFunctionMode

    from skysense.models.skysense import build_model

    factories = {torch.empty: 0, torch.zeros: 0, torch.ones: 0, torch.rand: 0, torch.randn: 0, torch.full: 0}

    class BigOnMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.endswith("__") and args and getattr(args[0], "is_meta", False):
                return args[0]  # an initialiser filling a meta tensor: nothing to fill
            if func in factories and kwargs.get("device") is None and args:
                size = args[0] if isinstance(args[0], (tuple, list, torch.Size)) else args
                if all(isinstance(n, int) for n in size) and math.prod(size) >= 1 << 16:
                    kwargs["device"] = "meta"
            return func(*args, **kwargs)

    with BigOnMeta():
        return build_model(cfg)


def describe(preset: str) -> dict[str, Any]:
    cfg = get_preset(preset)
    model = build_for_counting(cfg)
    counts = parameter_counts(model)
    report: dict[str, Any] = {"preset": preset, "config": cfg.to_dict(), "parameters": counts}
    report["fused_channels"] = model.out_dim
    if preset == "huge":
        ours = {
            "tokenizers": counts["tokenizers"],
            "backbones": counts["backbones"],
            "fusion": counts["fusion_with_alignment"],
            "prototypes": counts["prototypes"],
        }
        report["paper_comparison"] = {
            k: {"ours_M": ours[k] / 1e6, "paper_M": v, "diff_pct": 100 * (ours[k] / 1e6 - v) / v}
            for k, v in PAPER_HUGE_M.items()
        }
        report["paper_comparison"]["total"] = {
            "ours_M": counts["total"] / 1e6,
            "paper_M": PAPER_HUGE_TOTAL_M,
            "diff_pct": 100 * (counts["total"] / 1e6 - PAPER_HUGE_TOTAL_M) / PAPER_HUGE_TOTAL_M,
            "note": "the paper's total includes 189M 'other' parameters it does not describe",
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    cfg, counts = report["config"], report["parameters"]
    lines = [f"SkySense preset {report['preset']!r}"]
    if cfg["hr"]:
        h = cfg["hr"]
        lines.append(
            f"  hr  SwinV2: embed {h['embed_dim']}, depths {h['depths']}, heads {h['num_heads']}, "
            f"window {h['window_size']}, patch {h['patch_size']}, {h['in_chans']} bands"
        )
    for m in ("s2", "s1"):
        if cfg[m]:
            v = cfg[m]
            lines.append(
                f"  {m}  ViT: width {v['embed_dim']}, depth {v['depth']}, heads {v['num_heads']}, "
                f"patch {v['patch_size']}, {v['in_chans']} bands, dense layers {v['out_indices']}"
            )
    f = cfg["fusion"]
    lines.append(
        f"  fusion: {f['in_dim']} -> {f['embed_dim']}, depth {f['depth']}, heads {f['num_heads']}, "
        f"DTPE {'on' if f['use_dtpe'] else 'off'} ({f['dtpe_days']} days)"
    )
    if cfg["geo"]:
        g = cfg["geo"]
        lines.append(
            f"  geo-context: {g['lat_bands']}x{g['lon_bands']} equal-area regions x "
            f"{g['num_prototypes']} prototypes x {g['dim']}"
        )
    lines.append(f"  fused output channels: {report['fused_channels']}")
    lines.append("  parameters:")
    for key in ("hr", "s2", "s1", "align_s2", "align_s1", "fusion", "prototypes", "geo_query", "total"):
        lines.append(f"    {key:<12} {counts[key] / 1e6:12.3f} M")
    if "paper_comparison" in report:
        lines.append("  vs the paper (huge):")
        for key, row in report["paper_comparison"].items():
            lines.append(
                f"    {key:<12} ours {row['ours_M']:10.2f} M  paper {row['paper_M']:10.2f} M  "
                f"({row['diff_pct']:+.2f}%)"
            )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    report = describe(args.preset)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="architecture and parameter counts of a preset (instant, meta device)",
        description="Print the architecture of a model preset (encoders, fusion, geo-context) and its "
        "parameters per part; for huge, next to the paper's counts (Table 9). The model is built on "
        "the meta device: nothing is allocated, even for the 2B-parameter huge.",
    )
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset (default tiny)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run)
