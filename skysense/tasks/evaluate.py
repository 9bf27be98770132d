"""``evaluate``: a fine-tuned checkpoint on a split of its data, with the scores, a confusion matrix and
prediction overlays as PNGs a person can look at (paper Sec. 4 metrics)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skysense.config import SkySenseConfig, from_dict
from skysense.engine.state import load_checkpoint
from skysense.files import write_json
from skysense.models.skysense import SkySense
from skysense.tasks.data import SPLITS, TaskData, build_task_data
from skysense.tasks.finetune import FinetuneConfig, TaskHeadConfig, TaskModel, evaluate_split, name_classes


def load_task_model(path: str | Path) -> tuple[TaskModel, FinetuneConfig, dict[str, Any]]:
    """The model of a ``skysense finetune`` checkpoint (``best.ckpt`` or ``last.ckpt``), its run config
    and its meta (task, classes, encoder and head config); a clear error for any other file."""
    try:
        ck = load_checkpoint(path)
    except ValueError as e:
        raise ValueError(
            f"{path}: not a checkpoint of `skysense finetune` ({str(e).split('(')[-1].split(')')[0]})"
        ) from None
    if "meta" not in ck or "model" not in ck or "task" not in ck.get("meta", {}):
        raise ValueError(
            f"{path}: not a fine-tuning checkpoint (it holds {sorted(ck)[:8]}): evaluate takes the "
            "best.ckpt or last.ckpt of a `skysense finetune` run"
        )
    meta = ck["meta"]
    cfg = from_dict(FinetuneConfig, ck["config"])
    encoder = SkySense(SkySenseConfig.from_dict(meta["encoder"]))
    model = TaskModel(
        encoder, meta["task"], meta["input"], len(meta["classes"]), TaskHeadConfig(**meta["head"])
    )
    model.load_state_dict(ck["model"])
    return model.eval(), cfg, meta


def evaluate(
    checkpoint: str | Path, data_root: str = "", split: str = "test", out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Scores of ``split`` (``data_root`` replaces the run's data folder); writes ``scores_<split>.json``,
    ``confusion_<split>.png`` (class tasks) and ``predictions_<split>.png`` into ``out_dir`` (default:
    the checkpoint's folder)."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    from skysense.detection.predict import is_detection_checkpoint

    if is_detection_checkpoint(checkpoint):  # per-class AP, PR curves and drawn boxes
        from skysense.detection.scoring import evaluate_detection

        return evaluate_detection(checkpoint, data_root, split, out_dir)
    model, cfg, meta = load_task_model(checkpoint)
    if data_root:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_root))
    data = build_task_data(cfg.data, (split,))  # the scored split only
    name_classes(data, cfg)
    if len(data.classes) != len(meta["classes"]):
        raise ValueError(
            f"{checkpoint} predicts {len(meta['classes'])} classes {meta['classes'][:6]}..., the data has "
            f"{len(data.classes)} {data.classes[:6]}...: evaluate on data with the checkpoint's classes"
        )
    scores, ev = evaluate_split(model, data, split, cfg, torch.device("cpu"))
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": str(checkpoint),
        "split": split,
        "samples": len(data.splits[split]),
        "scores": scores,
    }
    write_json(out / f"scores_{split}.json", record)
    if meta["task"] in ("classification", "segmentation"):
        from skysense.linear_probe import plot_confusion

        title = f"{meta['task']} on {cfg.data.dataset} {split} ({len(data.splits[split])} samples)"
        plot_confusion(ev.confusion, data.classes, out / f"confusion_{split}.png", title)
    plot_predictions(model, data, split, meta["task"], out / f"predictions_{split}.png")
    return record


@torch.no_grad()
def plot_predictions(
    model: TaskModel, data: TaskData, split: str, task: str, path: Path, count: int = 4
) -> None:
    """A few samples of ``split``: the image (hr, or s2 as false colour) next to the truth and the
    prediction (dense tasks), or with both labels in the title (scene tasks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skysense.data.collate import collate

    samples = data.splits[split][:count]
    batch = collate(samples)
    logits = model(batch)["logits"]
    dense = task in ("segmentation", "change")
    cols = 3 if dense else 1
    fig, axes = plt.subplots(len(samples), cols, figsize=(3 * cols, 3 * len(samples)), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(data.classes) <= 10 else "tab20")
    for i, s in enumerate(samples):
        axes[i, 0].imshow(_picture(s))
        if dense:
            truth = s["target"].numpy()
            pred = (logits[i, 0] > 0).long().numpy() if task == "change" else logits[i].argmax(0).numpy()
            shown = np.ma.masked_less(truth, 0)
            k = max(len(data.classes) - 1, 1)
            axes[i, 1].imshow(shown, cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
            axes[i, 2].imshow(pred, cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
            axes[i, 1].set_title("truth (white: ignored)", fontsize=8)
            axes[i, 2].set_title("prediction", fontsize=8)
        else:
            true = s["label"]
            if task == "multilabel":
                axes[i, 0].set_title(
                    f"{int(true.sum())} labels, {int((logits[i] > 0).sum())} predicted", fontsize=8
                )
            else:
                pred = int(logits[i].argmax())
                axes[i, 0].set_title(
                    f"true {data.classes[int(true)]}\npredicted {data.classes[pred]}", fontsize=8
                )
        for ax in axes[i]:
            ax.axis("off")
    if dense:
        from matplotlib.patches import Patch

        handles = [
            Patch(color=cmap(j / max(len(data.classes) - 1, 1)), label=c) for j, c in enumerate(data.classes)
        ]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _picture(sample: dict[str, Any]) -> np.ndarray:
    """An RGB picture (H, W, 3) in [0, 1] of a normalised sample: hr (or the before image), else s2
    bands 4-3-2 (or s1 VV) of its last date, each stretched between its 2nd and 98th percentile."""
    if "hr" in sample or "hr_pre" in sample:
        from skysense.bands import NORM_STATS

        st = NORM_STATS["hr"]  # undo the normalisation: the true colours
        x = (sample["hr"] if "hr" in sample else sample["hr_pre"])[:3].float()
        x = x * torch.tensor(st.std[:3]).view(3, 1, 1) + torch.tensor(st.mean[:3]).view(3, 1, 1)
        return (x.permute(1, 2, 0).numpy() / 255.0).clip(0, 1)
    if "s2" in sample and sample["s2"].shape[1] >= 3:
        x = sample["s2"][-1, [2, 1, 0]]
    else:
        m = "s2" if "s2" in sample else "s1"
        x = sample[m][-1, :1].expand(3, -1, -1)
    x = x.float().permute(1, 2, 0).numpy()
    lo, hi = np.percentile(x, 2), np.percentile(x, 98)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
