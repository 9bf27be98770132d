"""DINO-style projection heads for L_CL of MGCL (paper Sec. 3.2, Eq. 5-8) and the CMA projection.

Head: MLP (in -> hidden -> ... -> bottleneck, GELU) -> l2-normalised bottleneck -> prototype layer
whose weight rows are l2-normalised on the fly (weight normalisation with the gain fixed at 1,
DINO's ``norm_last_layer``), giving K = ``out_dim`` logits.

Choice [open]: one head per feature **stream** (``hr``, ``s2``, ``s1``, ``fused``), shared by the
pixel, object and image granularities (as iBOT shares its head between patch and class tokens):
the streams have different widths and statistics, while the granularities of one stream live in
the same feature space. ``share_granularities=False`` builds one head per (stream, granularity).

Choice [ours]: the head of a stream listed in ``HeadConfig.standardise`` first standardises its input per
channel over the tokens of each call (BatchNorm without affine weights or running statistics, as in the
projectors of SimCLR, BYOL and MoCo v3). The fused stream needs it: ``F_fus_mm`` is the extra token's
output with no final norm (as released), and from a fresh initialisation it is that token's learnt
embedding plus a small per-cell part (pairwise cosine ~0.9 across cells and samples), so every teacher
distribution is the same, the centred targets are uniform and the stream collapses within 50 steps
(BENCHMARKS.md, multi-modal pre-training). Standardising removes the shared part before the head.
The hr stream (stage 4 after its norm) has a milder shared part at initialisation; standardising it
too raised the AID linear probe by 3-10 points at the same budget (BENCHMARKS.md, "Linear probe on AID"). The
s2/s1 streams were not measured with it and stay plain by default.
Under DDP each rank uses the statistics of its own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from skysense.config import check_ranges

GRANULARITIES: tuple[str, ...] = ("pix", "obj", "img")


@dataclass
class HeadConfig:
    """Sizes of the projection heads. Paper sizes are unpublished [open]; DINO uses 2048/256/65536,
    but pixel-level targets on every cell and date make a smaller K the sensible default."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 8192  # K, prototypes of the L_CL distributions
    n_layers: int = 3
    share_granularities: bool = True
    cma_dim: int = 256  # width of the shared cross-modal embedding (0 = use the aligned features as-is)
    standardise: tuple[str, ...] = ("hr", "fused")  # streams whose head input is standardised (module doc)

    def __post_init__(self) -> None:
        dims = dict.fromkeys(("hidden_dim", "bottleneck_dim", "out_dim", "n_layers"), 1)
        check_ranges("pretrain.heads.", self, at_least=dims | {"cma_dim": 0})


class DINOHead(nn.Module):
    """(..., in_dim) -> (..., out_dim) logits; ``standardise``: per-channel standardisation of the input
    over all its tokens first (module doc)."""

    def __init__(self, in_dim: int, cfg: HeadConfig, standardise: bool = False) -> None:
        super().__init__()
        # No parameters or buffers: checkpoints keep their keys, and the teacher (in eval mode) also
        # standardises with the statistics of its own call.
        self.norm = nn.BatchNorm1d(in_dim, affine=False, track_running_stats=False) if standardise else None
        dims = [in_dim] + [cfg.hidden_dim] * (cfg.n_layers - 1) + [cfg.bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Linear(cfg.bottleneck_dim, cfg.out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is not None and x.shape[:-1].numel() > 1:  # one token has no spread to remove
            x = self.norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)  # (..., in_dim)
        z = F.normalize(self.mlp(x), dim=-1)  # (..., bottleneck)
        return F.linear(z, F.normalize(self.prototypes.weight, dim=-1))  # cosine logits in [-1, 1]


class ProjectionHeads(nn.Module):
    """Heads keyed by stream (or ``stream.granularity``) plus the shared CMA projection.

    ``dims``: feature width of every stream, e.g. ``{"hr": 128, "s2": 32, "s1": 32, "fused": 48}``;
    ``cma_in``: width of the aligned modality features (the hr stage-4 width), 0 for no CMA projection.
    """

    def __init__(self, dims: dict[str, int], cfg: HeadConfig, cma_in: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleDict()
        for stream, dim in dims.items():
            if cfg.share_granularities:
                self.heads[stream] = DINOHead(dim, cfg, stream in cfg.standardise)
            else:
                for g in GRANULARITIES:
                    self.heads[f"{stream}_{g}"] = DINOHead(dim, cfg, stream in cfg.standardise)
        self.cma: nn.Module = nn.Linear(cma_in, cfg.cma_dim) if cma_in and cfg.cma_dim else nn.Identity()

    def forward(self, stream: str, granularity: str, x: Tensor) -> Tensor:
        key = stream if self.cfg.share_granularities else f"{stream}_{granularity}"
        return self.heads[key](x)
