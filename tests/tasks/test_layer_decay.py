"""Layer-wise learning-rate decay groups and freezing modes on the ``tiny`` model (paper Sec. 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skysense.models.skysense import build_model
from skysense.tasks.heads import ClassificationHead
from skysense.tasks.layer_decay import freeze, layer_id, param_groups

# tiny: hr Swin depths (1, 1, 3, 1) -> N = 6 blocks; s2/s1 ViT depth 2, ids scaled by 6 / 2
N = 6
HEAD_ID = N + 2


class TaskModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = build_model("tiny")
        self.head = ClassificationHead(self.encoder.out_dim, 4)


@pytest.fixture
def model() -> TaskModel:
    return TaskModel()


# name -> (layer id, group name), worked out by hand from the module docstring's rules
EXPECTED = {
    "encoder.encoders.hr.patch_embed.projection.weight": (0, "decay"),
    "encoder.encoders.hr.patch_embed.norm.weight": (0, "no_decay"),
    "encoder.encoders.hr.stages.0.blocks.0.attn.w_msa.qkv.weight": (1, "decay"),
    "encoder.encoders.hr.stages.0.blocks.0.attn.w_msa.cpb_mlp.0.weight": (1, "no_decay"),
    "encoder.encoders.hr.stages.1.downsample.reduction.weight": (1, "decay"),  # with the block before
    "encoder.encoders.hr.stages.2.blocks.2.ffn.layers.1.weight": (5, "decay"),
    "encoder.encoders.hr.stages.3.blocks.0.attn.w_msa.proj.weight": (6, "decay"),
    "encoder.encoders.hr.stages.3.blocks.0.attn.w_msa.logit_scale": (6, "no_decay"),
    "encoder.encoders.hr.norm3.weight": (6, "no_decay"),
    "encoder.encoders.s2.pos_embed": (0, "no_decay"),
    "encoder.encoders.s2.layers.0.attn.attn.in_proj_weight": (3, "decay"),
    "encoder.encoders.s1.layers.1.ffn.layers.0.0.weight": (6, "decay"),
    "encoder.align.s2.decoder.0.weight": (7, "decay"),
    "encoder.fusion.layers.1.attn.attn.out_proj.weight": (7, "decay"),
    "encoder.fusion.cls_token": (7, "no_decay"),
    "encoder.geo.prototypes": (7, "no_decay"),
    "head.fc.weight": (8, "decay"),
    "head.fc.bias": (8, "no_decay"),
}


def group_of(groups: list[dict], model: nn.Module) -> dict[str, dict]:
    by_param = {id(p): g for g in groups for p in g["params"]}
    return {name: by_param[id(p)] for name, p in model.named_parameters() if id(p) in by_param}


def test_lr_scale_of_named_parameters(model: TaskModel) -> None:
    groups = group_of(param_groups(model, decay=0.9, weight_decay=0.05), model)
    for name, (i, kind) in EXPECTED.items():
        g = groups[name]
        assert (g["layer_id"], g["name"]) == (i, kind), name
        assert layer_id(name, model) == i, name
        assert g["lr_scale"] == pytest.approx(0.9 ** (HEAD_ID - i)), name
        assert g["weight_decay"] == (0.05 if kind == "decay" else 0.0), name
    assert groups["encoder.encoders.hr.patch_embed.projection.weight"]["lr_scale"] == pytest.approx(0.9**8)
    assert groups["head.fc.weight"]["lr_scale"] == 1.0


def test_every_encoder_spans_the_same_ids(model: TaskModel) -> None:
    for m in ("hr", "s2", "s1"):
        ids = [
            layer_id(n, model) for n, _ in model.named_parameters() if n.startswith(f"encoder.encoders.{m}.")
        ]
        assert min(ids) == 0 and max(ids) == N, m
    hr_blocks = [
        layer_id(n, model) for n, _ in model.named_parameters() if n.endswith("attn.w_msa.qkv.weight")
    ]
    assert hr_blocks == list(range(1, N + 1))  # the blocks in order, one id each


def test_each_trainable_parameter_in_exactly_one_group(model: TaskModel) -> None:
    groups = param_groups(model)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert all(g["params"] for g in groups)
    assert len({(g["layer_id"], g["name"]) for g in groups}) == len(groups)
    torch.optim.AdamW(groups, lr=1e-3)  # the extra keys are accepted by the optimizer


def test_frozen_parameters_in_no_group(model: TaskModel) -> None:
    freeze(model, "partial", blocks=1)
    ids = {id(p) for g in param_groups(model) for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.encoder.encoders["hr"].patch_embed.projection.weight) not in ids
    freeze(model, "frozen")
    groups = param_groups(model)
    assert {g["layer_id"] for g in groups} == {HEAD_ID}
    for p in model.head.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        param_groups(model)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_modes(model: TaskModel) -> None:
    names = {n for n, _ in model.named_parameters()}
    head = {n for n in names if n.startswith("head.")}
    freeze(model, "frozen")
    assert trainable(model) == head
    freeze(model, "full")
    assert trainable(model) == names
    freeze(model, "partial", blocks=1)
    frozen_prefixes = [
        "encoder.encoders.hr.patch_embed.",
        "encoder.encoders.hr.stages.0.blocks.0.",
        "encoder.encoders.hr.stages.1.downsample.",
        "encoder.encoders.hr.norm0.",
    ] + [
        f"encoder.encoders.{m}.{part}"
        for m in ("s2", "s1")
        for part in ("patch_embed.", "cls_token", "pos_embed", "layers.0.")
    ]
    assert names - trainable(model) == {n for n in names if any(n.startswith(p) for p in frozen_prefixes)}
    freeze(model, "partial", blocks=0)  # the patch embeddings (and ViT tokens) only
    frozen = names - trainable(model)
    assert frozen and all(layer_id(n, model) == 0 for n in frozen)


def test_freeze_and_groups_reject_bad_arguments(model: TaskModel) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        freeze(model, "linear")
    with pytest.raises(ValueError, match="blocks=7"):
        freeze(model, "partial", blocks=N + 1)
    with pytest.raises(ValueError, match="no SkySense encoder at 'backbone'"):
        param_groups(model, encoder_prefix="backbone.")
    with pytest.raises(ValueError, match="decay"):
        param_groups(model, decay=0.0)


def test_bare_encoder() -> None:
    enc = build_model("tiny", s1=None, geo=None)
    assert layer_id("encoders.hr.stages.2.blocks.0.norm1.weight", enc) == 3
    assert layer_id("encoders.s2.layers.1.ln1.weight", enc) == N
    assert layer_id("fusion.porj_linear.weight", enc) == N + 1
    assert max(g["layer_id"] for g in param_groups(enc)) == N + 1  # no head in a bare encoder
