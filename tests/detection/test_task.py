"""Detection fine-tuning on the engine: data squaring, augmentation, modes, resume, the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from skysense.config import from_dict
from skysense.data.splits import hash_fraction
from skysense.detection.boxes import obb_to_poly
from skysense.detection.data import VAL_FRACTION
from skysense.detection.models import ENCODER_PREFIX
from skysense.detection.task import (
    DetectionConfig,
    DetectionTask,
    SquareImages,
    augment,
    detection_split,
    finetune_detection,
)
from skysense.engine.distributed import Ranks

CPU = Ranks(0, 1, torch.device("cpu"), False)
HEAD = {"fpn_channels": 16, "rpn_pre_nms": 100, "rpn_post_nms": 32, "roi_batch": 32, "fc_dim": 32}


def _stems(count: int, val: bool) -> list[str]:
    """Image ids whose hash puts them into ``val`` (or ``train``) of a training list."""
    return [s for s in (str(i) for i in range(200)) if (hash_fraction(s) < VAL_FRACTION) == val][:count]


def make_ucas(root: Path, size: tuple[int, int] = (72, 96)) -> Path:
    """A UCAS-AOD-shaped folder (YOLO-OBB labels, the re-split lists): 3 train, 1 val, 2 test images,
    each with two bright turned rectangles on a dark background (class 0 and 1)."""
    h, w = size
    rng = np.random.default_rng(0)
    listed: dict[str, list[str]] = {"train": [], "test": []}
    for k, stem in enumerate([*_stems(3, False), *_stems(1, True), "900", "901"]):
        boxes = torch.tensor([[28.0, 30, 30, 14, 0.4 + k], [66, 44, 20, 12, -0.3 * k]])
        img = Image.fromarray(rng.integers(0, 40, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        lines = []
        for c, poly in enumerate(obb_to_poly(boxes)):
            draw.polygon([tuple(p) for p in poly.tolist()], fill=(230, 200 - 150 * c, 90 + 150 * c))
            corners = " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in poly.tolist())
            lines.append(f"{c} {corners}")
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        img.save(root / "images" / "train" / f"{stem}.png")
        (root / "labels" / "train" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        listed["test" if stem.startswith("90") else "train"].append(f"images/train/{stem}.png")
    for part in ("val",):
        (root / "images" / part).mkdir(parents=True, exist_ok=True)
        (root / "labels" / part).mkdir(parents=True, exist_ok=True)
    (root / "splits_resplit").mkdir(exist_ok=True)
    for split, names in listed.items():
        (root / "splits_resplit" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def _cfg(tmp_path: Path, **kw) -> DetectionConfig:
    d = {
        "task": "oriented_detection",
        "steps": 4,
        "batch_size": 2,
        "lr": 1e-3,
        "warmup_steps": 1,
        "progress": False,
        "ckpt_every": 2,
        "eval_every": 2,
        "eval_batch_size": 2,
        "out_dir": str(tmp_path / "run"),
        "head": HEAD,
        "data": {"dataset": "ucas_aod", "root": str(make_ucas(tmp_path / "ucas")), "size": 64},
    }
    return from_dict(DetectionConfig, d | kw)


def test_images_are_resized_and_padded_to_a_square_with_their_boxes(tmp_path):
    samples, classes = detection_split(_cfg(tmp_path), "test")
    assert classes == ["plane", "car"] and len(samples) == 2
    s = samples[0]
    assert s["hr"].shape == (3, 64, 64)
    scale = 64 / 96  # the longer side 96 -> 64; the shorter 72 -> 48, then padded with zeros
    assert s["hr"][:, 48:].abs().sum() == 0 and s["hr"][:, :48].abs().sum() > 0
    assert torch.allclose(s["target"]["boxes"][0, :4], torch.tensor([28.0, 30, 30, 14]) * scale, atol=0.05)
    assert s["target"]["labels"].tolist() == [0, 1]
    assert len(SquareImages(samples.samples, 64, limit=1)) == 1
    with pytest.raises(IndexError):
        SquareImages(samples.samples, 64, limit=1)[1]


@pytest.mark.parametrize("oriented", [True, False])
def test_augmentation_moves_the_boxes_with_the_pixels(oriented):
    """A bright block in a dark image: after any flip / turn its box still covers the bright pixels."""
    img = torch.full((3, 32, 32), -1.0)
    img[:, 4:10, 18:30] = 1.0  # rows 4..9, columns 18..29
    box = torch.tensor([[24.0, 7, 12, 6, 0.0]]) if oriented else torch.tensor([[18.0, 4, 30, 10]])
    batch = {"hr": img[None], "target": [{"boxes": box, "labels": torch.tensor([0])}]}
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(12):
        images, targets = augment(batch, gen)
        x, b = images[0], targets[0]["boxes"]
        bright = (x[0] > 0).nonzero().float()  # (row, col) of the block
        if oriented:  # its horizontal envelope, worked out here (angles are 0 or +-pi/2 after turns)
            cx, cy, w, h, a = b[0].tolist()
            ex = abs(w * math.cos(a)) + abs(h * math.sin(a))
            ey = abs(w * math.sin(a)) + abs(h * math.cos(a))
            x1, y1, x2, y2 = cx - ex / 2, cy - ey / 2, cx + ex / 2, cy + ey / 2
        else:
            x1, y1, x2, y2 = b[0].tolist()
        assert (x1, y1) == pytest.approx((bright[:, 1].min().item(), bright[:, 0].min().item()), abs=1e-4)
        assert (x2, y2) == pytest.approx(
            (bright[:, 1].max().item() + 1, bright[:, 0].max().item() + 1), abs=1e-4
        )
        seen.add(tuple(round(v) for v in (x1, y1)))
    assert len(seen) >= 3  # the draws differ


def test_modes_and_layer_decay_reach_the_detector(tmp_path):
    task = DetectionTask(_cfg(tmp_path, mode="frozen"))
    task.setup(CPU, fresh=True)
    enc = task.model.backbone.encoder
    assert not any(p.requires_grad for p in enc.parameters())
    task.trained.train()
    assert not enc.training and task.model.training
    task = DetectionTask(_cfg(tmp_path, layer_decay=0.5))
    task.setup(CPU, fresh=True)
    groups = task.param_groups()
    names = {id(p): n for n, p in task.model.named_parameters()}
    scales = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scales["cls_score.weight"] == 1.0
    patch = ENCODER_PREFIX + "encoders.hr.patch_embed.projection.weight"
    assert scales[patch] == 0.5 ** (6 + 2)  # tiny hr: 6 blocks; the patch embedding is layer 0
    assert not any(n.startswith(ENCODER_PREFIX + "fusion.") for n in scales)


def test_checkpoints_carry_the_task_the_classes_the_head_and_the_input_contract(tmp_path):
    cfg = _cfg(tmp_path, task="detection", steps=2)
    result = finetune_detection(cfg)
    assert result["step"] == 2 and all(math.isfinite(v) for v in result["losses"])
    from skysense.detection.task import load_detector

    model, meta = load_detector(tmp_path / "run" / "best.ckpt")
    assert meta["task"] == "detection" and meta["classes"] == ["plane", "car"]
    assert meta["head"]["fpn_channels"] == 16 and meta["image_size"] == 64 and meta["input"] == "hr"
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["metric"] == "map50" and "ap50/plane" in best["scores"]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64))[0]["boxes"].shape[1] == 4


@pytest.mark.slow
def test_a_killed_detection_run_resumes_exactly(tmp_path):
    """The detection task's random draws (augmentation, the RPN and RoI samplers) resume with the run."""
    full = finetune_detection(_cfg(tmp_path, out_dir=str(tmp_path / "full"), eval_every=0))
    part = finetune_detection(_cfg(tmp_path, out_dir=str(tmp_path / "cut"), eval_every=0, stop_after=2))
    rest = finetune_detection(_cfg(tmp_path, out_dir=str(tmp_path / "cut"), eval_every=0), resume=True)
    assert len(part["losses"]) == 2 and len(rest["losses"]) == 2
    assert part["losses"] + rest["losses"] == full["losses"]  # bit for bit


def test_bad_configs_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="task='change'.*detection, oriented_detection"):
        _cfg(tmp_path, task="change")
    with pytest.raises(ValueError, match="data.size"):
        _cfg(tmp_path, data={"dataset": "ucas_aod", "size": 8})
    with pytest.raises(ValueError, match="unknown detection set"):
        DetectionTask(_cfg(tmp_path, data={"dataset": "coco", "size": 64}))


@pytest.mark.data
@pytest.mark.slow
def test_finetune_and_evaluate_oriented_detection_on_real_ucas_aod_through_the_cli(tmp_path, capsys):
    from skysense.cli import main
    from tests.data.conftest import data_path

    root = data_path("detection", "ucas_aod")
    run = tmp_path / "run"
    args = ["finetune", "--config", "configs/finetune/ucas_aod_tiny.yaml", "steps=3", "eval_every=3"]
    args += [f"out_dir={run}", f"data.root={root}", "data.size=256", "data.limit=2", "head.fpn_channels=16"]
    assert main(args) == 0
    assert "finetune: 3 steps, best validation map50" in capsys.readouterr().out
    assert (
        main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--split", "test", "--out", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "evaluate: test split, 2 samples: map50" in out
    record = json.loads((tmp_path / "scores_test.json").read_text())
    assert record["samples"] == 2 and 0.0 <= record["scores"]["map50"] <= 1.0
    assert (tmp_path / "pr_test.png").stat().st_size > 1000
    drawn = sorted(p.name for p in tmp_path.glob("predictions_test_*.png"))
    assert len(drawn) == 2


@pytest.mark.parametrize(
    "name,task", [("ucas_aod_tiny", "oriented_detection"), ("airport_tiny", "detection")]
)
def test_the_presets_are_read_as_detection_configs(name, task):
    from skysense.detection.task import detection_task_of
    from skysense.engine.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "finetune" / f"{name}.yaml"
    assert detection_task_of(path) and not detection_task_of(path.with_name("aid_tiny.yaml"))
    assert not detection_task_of(path, ["task=segmentation"])
    assert load_config(DetectionConfig, path).task == task
