"""Temporal fusion against an independent float64 reference built from torch.nn layers."""

import torch
from torch import nn

from skysense.config import FusionConfig
from skysense.dates import dtpe_index, to_days
from skysense.models.temporal_fusion import TemporalFusion

CFG = FusionConfig(in_dim=6, embed_dim=8, depth=2, num_heads=2, drop_path=0.0, dtpe_days=365)


def make_fusion() -> TemporalFusion:
    torch.manual_seed(1)
    fusion = TemporalFusion(CFG).double().eval()
    with torch.no_grad():
        fusion.dtpe.normal_()  # zero-initialised in the model; random here so DTPE matters
    return fusion


def reference(fusion: TemporalFusion, feats, days, dated, pad):
    """Naive per-cell loop: add the DTPE row to the raw features, project, prepend, nn layers."""
    layers = []
    for layer in fusion.layers:
        ref = (
            nn.TransformerEncoderLayer(
                CFG.embed_dim,
                CFG.num_heads,
                int(CFG.embed_dim * CFG.mlp_ratio),
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
                layer_norm_eps=CFG.norm_eps,
            )
            .double()
            .eval()
        )
        sd = layer.state_dict()
        ref.load_state_dict(
            {
                "self_attn.in_proj_weight": sd["attn.attn.in_proj_weight"],
                "self_attn.in_proj_bias": sd["attn.attn.in_proj_bias"],
                "self_attn.out_proj.weight": sd["attn.attn.out_proj.weight"],
                "self_attn.out_proj.bias": sd["attn.attn.out_proj.bias"],
                "linear1.weight": sd["ffn.layers.0.0.weight"],
                "linear1.bias": sd["ffn.layers.0.0.bias"],
                "linear2.weight": sd["ffn.layers.1.weight"],
                "linear2.bias": sd["ffn.layers.1.bias"],
                "norm1.weight": sd["ln1.weight"],
                "norm1.bias": sd["ln1.bias"],
                "norm2.weight": sd["ln2.weight"],
                "norm2.bias": sd["ln2.bias"],
            }
        )
        layers.append(ref)
    b, l, c, h, w = feats.shape
    out = torch.zeros(b, CFG.embed_dim, h, w, dtype=torch.float64)
    rows = dtpe_index(days)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                toks = []
                for t in range(l):
                    f = feats[i, t, :, y, x] + (fusion.dtpe[0, rows[i, t]] if dated[i, t] else 0.0)
                    toks.append(fusion.porj_linear(f))
                seq = torch.cat([fusion.cls_token[0], torch.stack(toks)])[None]  # (1, 1+L, D)
                key_pad = torch.cat([torch.tensor([False]), pad[i]])[None]
                for ref in layers:
                    seq = ref(seq, src_key_padding_mask=key_pad)
                out[i, :, y, x] = seq[0, 0]
    return out


def inputs():
    torch.manual_seed(2)
    feats = torch.randn(2, 4, CFG.in_dim, 2, 3, dtype=torch.float64)
    days = torch.stack([to_days(["2020-01-05", "2020-02-29", "2020-07-01", "2021-12-31"])] * 2)
    dated = torch.tensor([[False, True, True, True], [True, True, True, True]])
    pad = torch.tensor([[False, False, False, False], [False, False, True, True]])
    return feats, days, dated, pad


@torch.no_grad()
def test_fusion_matches_naive_reference():
    fusion = make_fusion()
    feats, days, dated, pad = inputs()
    assert torch.allclose(
        fusion(feats, days, dated, pad), reference(fusion, feats, days, dated, pad), atol=1e-10
    )


@torch.no_grad()
def test_padded_steps_change_nothing():
    fusion = make_fusion()
    feats, days, dated, pad = inputs()
    out = fusion(feats, days, dated, pad)
    feats2, days2 = feats.clone(), days.clone()
    feats2[1, 2:] = 1e6 * torch.randn_like(feats2[1, 2:])
    days2[1, 2:] = to_days(["1999-06-01", "2001-01-01"])
    assert torch.equal(fusion(feats2, days2, dated, pad), out)
    # ...and equal the unpadded shorter sequence on its own.
    alone = fusion(feats[1:, :2], days[1:, :2], dated[1:, :2], pad[1:, :2])
    assert torch.allclose(alone, out[1:], atol=1e-12)


@torch.no_grad()
def test_dtpe_is_date_aware_and_leap_day_shares_feb_28():
    fusion = make_fusion()
    feats, _, dated, pad = inputs()
    dated = torch.ones_like(dated)

    def run(dates):
        return fusion(feats[:1, :1], torch.stack([to_days(dates)]), dated[:1, :1], pad[:1, :1])

    assert torch.equal(run(["2020-02-29"]), run(["2021-02-28"]))
    assert torch.equal(run(["2020-03-01"]), run(["2019-03-01"]))
    assert not torch.allclose(run(["2020-03-01"]), run(["2020-09-01"]))
    undated = fusion(feats[:1, :1], torch.stack([to_days(["2020-03-01"])]), ~dated[:1, :1], pad[:1, :1])
    zero = TemporalFusion(CFG).double().eval()
    zero.load_state_dict({**fusion.state_dict(), "dtpe": torch.zeros_like(fusion.dtpe)})
    assert torch.allclose(
        undated,
        zero(feats[:1, :1], torch.stack([to_days(["2020-03-01"])]), dated[:1, :1], pad[:1, :1]),
        atol=1e-12,
    )
