"""Downstream data: a split built alone is the same split built with the others, and decodes only its own
images (``evaluate`` scores one split)."""

import numpy as np
import pytest
import torch
from PIL import Image

from skysense.config import from_dict
from skysense.data.datasets import SceneClassification
from skysense.tasks.data import SPLITS, TaskDataConfig, build_task_data
from skysense.tasks.finetune import FinetuneConfig, evaluate_split, finetune
from tests.tasks.test_finetune import user_segmentation_folder


def scene_folder(root, classes=3, per_class=12, size=24):
    """An AID-style folder: root/<class>/<i>.png, each class its own mean colour plus noise."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(per_class):
            img = (60 * k + 40 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{k}" / f"{i:02d}.png")
    return root


@pytest.fixture
def decoded(monkeypatch):
    """The ids of the scenes SceneClassification decodes, in call order."""
    ids: list[str] = []
    load = SceneClassification._load

    def counting(self, rec):
        ids.append(rec["id"])
        return load(self, rec)

    monkeypatch.setattr(SceneClassification, "_load", counting)
    return ids


def assert_same_samples(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], k


def test_one_scene_split_decodes_only_its_scenes(tmp_path, decoded):
    cfg = TaskDataConfig(dataset="scenes", root=str(scene_folder(tmp_path / "aid")), size=16)
    full = build_task_data(cfg)
    assert len(decoded) == 36 and sum(full.counts().values()) == 36
    for split in SPLITS:
        decoded.clear()
        alone = build_task_data(cfg, (split,))
        assert list(alone.splits) == [split] and alone.classes == full.classes
        assert len(decoded) == full.counts()[split]  # not one scene of another split
        assert_same_samples(alone.splits[split], full.splits[split])


def test_one_quadrant_split_is_the_same_split_built_with_the_others(tmp_path):
    root = user_segmentation_folder(tmp_path / "seg")
    cfg = TaskDataConfig(dataset="segmentation", root=str(root), size=16)
    full = build_task_data(cfg)
    for split in SPLITS:
        alone = build_task_data(cfg, [split])
        assert list(alone.splits) == [split]
        assert_same_samples(alone.splits[split], full.splits[split])
    with pytest.raises(ValueError, match=r"splits \['tset'\]: choose from"):
        build_task_data(cfg, ["tset"])


@pytest.mark.slow
def test_evaluate_decodes_the_scored_split_only_and_scores_as_before(tmp_path, decoded):
    from skysense.tasks.evaluate import evaluate, load_task_model

    root = scene_folder(tmp_path / "aid")
    cfg = from_dict(
        FinetuneConfig,
        {
            "task": "classification",
            "steps": 2,
            "batch_size": 4,
            "bf16": False,
            "progress": False,
            "out_dir": str(tmp_path / "run"),
            "data": {"dataset": "scenes", "root": str(root), "size": 16},
        },
    )
    finetune(cfg)
    ckpt = tmp_path / "run" / "best.ckpt"
    model, run_cfg, _ = load_task_model(ckpt)
    full = build_task_data(run_cfg.data)  # every split, as evaluate used to build
    decoded.clear()
    record = evaluate(ckpt, split="test", out_dir=tmp_path / "eval")
    assert len(decoded) == record["samples"] == full.counts()["test"] < 36
    expected, _ = evaluate_split(model, full, "test", run_cfg, torch.device("cpu"))
    assert record["scores"] == expected
