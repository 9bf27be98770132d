"""Layer-wise learning-rate decay and encoder freezing for fine-tuning (paper Sec. 4; BEiT, Bao et al. 2022).

The model is a task model whose SkySense encoder is the submodule at ``encoder_prefix`` and whose heads
are everything else. Layer ids, with N = the block count of the deepest spatial encoder:

- ``hr`` Swin: the patch embedding 0, the blocks 1..sum(depths) in order. A patch merging (at the start of
  stage s > 0 here, at the end of stage s - 1 in mmpretrain) goes with the block before it, the last block
  of stage s - 1, as mmpretrain's Swin ``get_layer_depth`` does; the output norm ``norm{s}`` goes with the
  last block of stage s, the block it reads.
- ``s2``/``s1`` ViT: patch embedding, cls token and position embedding 0, ``layers.i`` i + 1.
- Each encoder's ids are scaled to N, round(i * N / depth), so that the top block of every encoder is N
  and the decays of a multi-modal model line up (Swin-H and ViT-L both have 24 blocks: no change there).
- Alignment heads, temporal fusion, geo-context (the rest of the encoder): N + 1. Task heads: N + 2.

A parameter of layer i gets ``lr_scale = decay ** (N + 2 - i)``: the heads train at the base rate, the patch
embedding at decay^(N + 2) of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from skysense.models.skysense import SkySense
from skysense.models.swin import SwinTransformerV2
from skysense.models.vit import VisionTransformer

MODES = ("frozen", "partial", "full")
NO_DECAY = ("token", "pos_embed", "logit_scale", "prototypes", "relative_position", "cpb")


def encoder_depth(enc: nn.Module) -> int:
    """Block count of one spatial encoder (its top layer id before scaling)."""
    if isinstance(enc, SwinTransformerV2):
        return sum(enc.cfg.depths)
    if isinstance(enc, VisionTransformer):
        return enc.cfg.depth
    raise TypeError(f"no layer ids for a {type(enc).__name__} encoder: expected Swin-V2 or ViT")


def block_id(name: str, enc: nn.Module) -> int:
    """Unscaled layer id, 0..depth, of a parameter of one spatial encoder (``name`` relative to it)."""
    parts = name.split(".")
    if isinstance(enc, SwinTransformerV2):
        depths = enc.cfg.depths
        if parts[0] == "patch_embed":
            return 0
        if parts[0] == "stages" and parts[2] == "blocks":
            return sum(depths[: int(parts[1])]) + int(parts[3]) + 1
        if parts[0] == "stages" and parts[2] == "downsample":  # with the last block of the stage before
            return sum(depths[: int(parts[1])])
        if parts[0].startswith("norm") and parts[0][4:].isdigit():  # with the last block of its stage
            return sum(depths[: int(parts[0][4:]) + 1])
    elif isinstance(enc, VisionTransformer):
        if parts[0] in ("patch_embed", "cls_token", "pos_embed"):
            return 0
        if parts[0] == "layers":
            return int(parts[1]) + 1
    raise ValueError(f"no layer id for the encoder parameter {name!r} of {type(enc).__name__}")


def locate(model: nn.Module, encoder_prefix: str = "encoder.") -> tuple[SkySense, str]:
    """The SkySense encoder of ``model`` and the prefix of its parameter names ("" for a bare encoder)."""
    if isinstance(model, SkySense):
        return model, ""
    path = encoder_prefix.rstrip(".")
    try:
        enc = model.get_submodule(path) if path else None
    except AttributeError:
        enc = None
    if not isinstance(enc, SkySense):
        raise ValueError(
            f"{type(model).__name__} has no SkySense encoder at {path!r}: pass encoder_prefix naming the "
            "submodule that holds it, with a trailing dot (e.g. 'encoder.'); unwrap DDP/compile first"
        )
    return enc, path + "."


def num_layers(encoder: SkySense) -> int:
    """N: the block count of the deepest spatial encoder."""
    return max(encoder_depth(e) for e in encoder.encoders.values())


def _layer_id(name: str, encoder: SkySense, prefix: str, n: int) -> int:
    if not name.startswith(prefix):
        return n + 2  # a task head
    parts = name[len(prefix) :].split(".", 2)
    if parts[0] != "encoders":
        return n + 1  # alignment, fusion, geo-context
    enc = encoder.encoders[parts[1]]
    depth = encoder_depth(enc)
    return (2 * block_id(parts[2], enc) * n + depth) // (2 * depth)  # round(i * N / depth), halves up


def layer_id(name: str, model: nn.Module, *, encoder_prefix: str = "encoder.") -> int:
    """Layer id, 0..N + 2, of the parameter ``name`` of ``model`` (see the module docstring)."""
    encoder, prefix = locate(model, encoder_prefix)
    return _layer_id(name, encoder, prefix, num_layers(encoder))


def param_groups(
    model: nn.Module,
    *,
    encoder_prefix: str = "encoder.",
    decay: float = 0.9,
    weight_decay: float = 0.05,
    no_decay: Sequence[str] = NO_DECAY,
) -> list[dict[str, Any]]:
    """Optimizer groups, one per (layer id, decay or not), in order of layer id.

    Each: ``{"params", "lr_scale": decay ** (N + 2 - id), "weight_decay": weight_decay or 0.0,
    "name": "decay" | "no_decay", "layer_id": id}``. ``no_decay``: 1-d parameters (norms, biases) and
    names holding one of ``no_decay``. Parameters with ``requires_grad=False`` are left out; a parameter
    shared between modules appears once.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay={decay}: the layer-wise decay must be in (0, 1] (the paper uses 0.9)")
    encoder, prefix = locate(model, encoder_prefix)
    n = num_layers(encoder)
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        i = _layer_id(name, encoder, prefix, n)
        kind = "no_decay" if p.ndim <= 1 or any(k in name for k in no_decay) else "decay"
        group = groups.setdefault(
            (i, kind),
            {
                "params": [],
                "lr_scale": decay ** (n + 2 - i),
                "weight_decay": weight_decay if kind == "decay" else 0.0,
                "name": kind,
                "layer_id": i,
            },
        )
        group["params"].append(p)
    if not groups:
        raise ValueError("the model has no trainable parameter: a frozen encoder needs a head to train")
    return [groups[key] for key in sorted(groups)]


def freeze(model: nn.Module, mode: str, encoder_prefix: str = "encoder.", blocks: int = 0) -> None:
    """Set ``requires_grad`` of the encoder's parameters for a fine-tuning mode; heads are left alone.

    ``frozen``: the whole encoder (the linear probe with a mean-pooling head). ``partial``: the patch
    embeddings and the first ``blocks`` blocks of every spatial encoder, counted in its own blocks
    (unscaled layer ids 0..blocks, so a patch merging or output norm goes with the block before it).
    ``full``: nothing (undoes an earlier call).

    Only gradients change, not train/eval mode: the encoder has no BatchNorm, but stochastic depth (the
    fusion's drop_path) stays active in train mode; call ``encoder.eval()`` after ``model.train()`` for
    deterministic frozen features.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {list(MODES)}")
    encoder, _ = locate(model, encoder_prefix)
    n = num_layers(encoder)
    if mode == "partial" and not 0 <= blocks <= n:
        raise ValueError(f"blocks={blocks}: must be in [0, {n}], the depth of the deepest encoder")
    for name, p in encoder.named_parameters():
        frozen = mode == "frozen"
        if mode == "partial":
            parts = name.split(".", 2)
            frozen = parts[0] == "encoders" and block_id(parts[2], encoder.encoders[parts[1]]) <= blocks
        p.requires_grad_(not frozen)


__all__ = ["MODES", "NO_DECAY", "freeze", "layer_id", "param_groups"]
