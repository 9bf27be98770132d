"""``skysense demo``: the main job end to end on a small default (``make demo``: about 2 minutes).

1. Pre-train the ``tiny`` hr encoder (SwinV2) self-supervised on the AID train split: the recorded recipe of
   ``configs/pretrain/aid_hr_cpu.yaml`` (MGCL, EMA teacher), shortened to ``--steps`` steps without the
   local crops and at the pilot runs' learning rate :data:`LR` (twice the recipe's: a 100-step run gains
   1.1 to 1.5 probe points from it, seeds 0 and 1); ``metrics.csv``, ``loss_curve.png`` and the checkpoint
   go to ``<out>/pretrain``. The AID scenes are decoded once, for this step and the next.
2. Linear-probe the frozen teacher against the same network at its random initialisation on the AID hash
   split (:mod:`skysense.linear_probe`): test overall accuracy (OA) of a logistic regression on the
   128-d last-stage features of the 128-px scenes. That is the "128 px, last stage, mean" probe of
   ``bench/linear_probe.py`` (same split, features and solver; :data:`REFERENCE` quotes its full-budget
   scores) with C chosen from {0.01, 0.1, 1} instead of {0.01, 0.1, 1, 10}: the weakest regularisation
   takes two thirds of the fit time, and on the demo's features it moves the OA by under half a point.
   Each fit starts from the previous C's optimum (the same optimum, fewer iterations).
3. Run the multi-modal path on real Sentinel data: the centre 256 x 256 px of the Sen1Floods11 chip (S2 +
   S1, their dates, the chip's location) cut into 64-px tiles and fused.
4. ``demo_quicklook.png``: an AID test scene next to the PCA of its features from the pre-trained and the
   random-init encoder, and the Sentinel chip (S2, S1, water label) next to its fused features;
   ``demo_summary.json`` holds everything printed.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skysense.runtime import add_threads_argument, apply_threads

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from torch import Tensor

    from skysense.data.scenes import Scenes
    from skysense.models.skysense import SkySense

CONFIG = "aid_hr_cpu.yaml"  # package data: skysense/configs/pretrain/ (the repository's configs/pretrain/)
# the recipe's pilot rate (its header); 100 steps, seeds 0 / 1: probe OA 31.9 / 30.8 % (2.5e-4: 30.8 / 29.3)
LR = 5e-4
NUM_CLASSES = 30
# The bench's 128-px last-stage probe after the full recipe (3,500 steps, 4 local crops): the mean of the
# eight seeds of BENCHMARKS.md "Linear probe on AID" (bench/results/linear_probe_std_hr_*.json; their lbfgs
# probe carries up to about a point of solver noise), and the hand-crafted colour + LBP descriptor at 128 px.
REFERENCE: dict[str, Any] = {
    "full_recipe_pretrained": 0.468,
    "full_recipe_random_init": 0.284,
    "full_recipe_steps": 3500,
    "full_recipe_lr": 2.5e-4,
    "full_recipe_local_crops": 4,
    "handcrafted_colour_lbp": 0.643,
    "source": "BENCHMARKS.md, 'Linear probe on AID' (bench/results/linear_probe_std_hr_*.json)",
}
PROBE_CS = (0.01, 0.1, 1.0)  # the bench's grid without C = 10 (module doc)
QUICKLOOK_CLASS = "Farmland"  # the AID test scene of the quick look: the first of this class
QUICKLOOK_PX, QUICKLOOK_STAGE = 256, 3  # its stage-3 map is 16 x 16: where 100 steps change the features


def demo_config() -> Any:
    """The recorded AID recipe, shipped with the package (works from a non-editable install)."""
    from importlib.resources import files

    path = files("skysense") / "configs" / "pretrain" / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the package's copy of configs/pretrain is missing; reinstall skysense"
        )
    return path


def pretrain_config(root: Path, run: Path, steps: int) -> tuple[Any, list[str]]:
    """The recorded recipe shortened as step 1 of the module doc says, and the overrides that do it."""
    from importlib.resources import as_file

    from skysense.pretrain.cli import load_config

    overrides = [
        f"out_dir={run}",
        f"steps={steps}",
        f"warmup_steps={max(1, steps // 10)}",
        f"lr={LR}",
        f"ckpt_every={steps}",
        f"data.root={root}",
        "pretrain.views.local_crops=0",  # the recipe's 4 local crops cost half a step more
    ]
    with as_file(demo_config()) as path:
        return load_config(path, overrides), overrides


def load_aid(root: Path, size: int) -> dict[str, Scenes]:
    """The three AID splits decoded once, at ``size`` px: step 1 trains on ``train``, step 2 probes all."""
    from skysense.data.scenes import load_scenes

    return {s: load_scenes(root / "aid", s, size) for s in ("train", "val", "test")}


def pretrain(cfg: Any, overrides: list[str], scenes: Scenes) -> dict[str, Any]:
    """Step 1 of the module doc on the decoded train scenes (what ``data.sources [aid]`` would decode
    again); returns what the summary says about it."""
    from skysense.data.scenes import SceneSamples
    from skysense.engine.loop import fit
    from skysense.pretrain.trainer import PretrainTask

    class DecodedScenes(PretrainTask):
        def dataset(self) -> Sequence[dict[str, Any]]:
            return SceneSamples(scenes)  # type: ignore[return-value]  # a Dataset of such dicts

    start = time.perf_counter()
    result = fit(DecodedScenes(cfg), cfg, overwrite=True)  # the demo's own folder: a re-run replaces it
    losses = [float(x) for x in result["losses"]]
    return {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "scenes": int(result["samples"]),
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first": round(losses[0], 3),
        "loss_last": round(losses[-1], 3),
        "overrides": overrides,
    }


def features(encoder: SkySense, images: Tensor, label: str, chunk: int = 1024) -> np.ndarray:
    """:func:`~skysense.linear_probe.hr_features` with a progress bar (chunks of whole batches: the same
    numbers)."""
    import numpy as np
    from tqdm import tqdm

    from skysense.linear_probe import hr_features

    parts = [
        hr_features(encoder, images[i : i + chunk])
        for i in tqdm(range(0, len(images), chunk), desc=label, unit="chunk", leave=False)
    ]
    return np.concatenate(parts)


def probe(out_dir: Path, cfg: Any, scenes: dict[str, Scenes], per_class_train: int = 0) -> dict[str, Any]:
    """Step 2 of the module doc: OAs of the pre-trained and random-init encoders, plots."""
    from skysense.data.scenes import per_class
    from skysense.engine.state import CKPT
    from skysense.linear_probe import plot_bars, plot_confusion, probe_splits
    from skysense.pretrain.trainer import initial_encoder, load_encoder

    print("[2/4] linear probe on the frozen features (AID hash split)", flush=True)
    splits = dict(scenes, train=per_class(scenes["train"], per_class_train))
    encoders = {"pre-trained": load_encoder(Path(cfg.out_dir) / CKPT), "random init": initial_encoder(cfg)}
    results, start, n = {}, time.perf_counter(), sum(len(d.ids) for d in splits.values())
    for name, enc in encoders.items():
        t = time.perf_counter()
        feats = {s: features(enc.eval(), d.images, f"      {name}: {s} features") for s, d in splits.items()}
        print(f"      {name}: features of the {n:,} scenes in {time.perf_counter() - t:.0f} s", flush=True)
        results[name] = r = probe_splits(
            feats, splits, PROBE_CS, warm_start=True, progress=f"      {name}: C"
        )
        took = time.perf_counter() - t
        print(f"      {name}: test OA {100 * r.oa:.1f} % (C = {r.c:g}; {took:.0f} s)", flush=True)
    plot_bars(
        {
            f"pre-trained, {cfg.steps} steps": results["pre-trained"].oa,
            "random init": results["random init"].oa,
        }
        | {"chance": 1 / NUM_CLASSES}
        | {f"pre-trained, {REFERENCE['full_recipe_steps']} steps*": REFERENCE["full_recipe_pretrained"]}
        | {"hand-crafted colour + LBP*": REFERENCE["handcrafted_colour_lbp"]},
        out_dir / "linear_probe_oa.png",
        f"AID linear probe, {len(splits['test'].ids)} test scenes (* BENCHMARKS.md)",
    )
    cm = results["pre-trained"].confusion
    plot_confusion(cm, splits["train"].classes, out_dir / "confusion_pretrained.png")
    return {
        "split": {s: len(d.ids) for s, d in splits.items()},
        "features": f"{feats['test'].shape[1]}-d last-stage features (spatial mean, scenes at "
        f"{cfg.data.hr_tile} px)",
        "oa_pretrained": round(results["pre-trained"].oa, 4),
        "oa_random_init": round(results["random init"].oa, 4),
        "c_pretrained": results["pre-trained"].c,
        "c_random_init": results["random init"].c,
        "c_grid": list(PROBE_CS),
        "chance": round(1 / NUM_CLASSES, 4),
        "seconds": round(time.perf_counter() - start, 1),
        "reference": REFERENCE,
        "_encoders": encoders,
        "_test": splits["test"],
    }


def load_sen1floods11(root: Path) -> dict[str, Any]:
    """The Sen1Floods11 chip, normalised (spec statistics), plus raw RGB, VV and the water label to show."""
    from skysense.data.datasets import Sen1Floods11
    from skysense.data.transforms import Normalize

    raw = Sen1Floods11(root / "sen1floods11")[0]
    sample = Normalize()(raw)
    s2_bands = list(raw["meta"]["s2"]["bands"])
    rgb = raw["s2"][0, [s2_bands.index(b) for b in ("B4", "B3", "B2")]].permute(1, 2, 0).numpy()
    return {
        "chip": raw["meta"]["id"],
        **{k: sample[k] for k in ("s2", "s1", "s2_dates", "s1_dates")},
        "lat": float(raw["lat"]),
        "lon": float(raw["lon"]),
        "rgb": rgb,
        "vv": raw["s1"][0, 0].numpy(),
        "label": raw["target"].numpy(),
    }


def tile_batch(sample: dict[str, Any], tile: int) -> dict[str, Tensor]:
    """Cut the chip into non-overlapping tile x tile windows: a batch of geo-aligned samples."""
    import torch

    s2, s1 = sample["s2"], sample["s1"]
    rows, cols = s2.shape[-2] // tile, s2.shape[-1] // tile

    def cut(x: Tensor) -> Tensor:  # (T, C, H, W) -> (rows*cols, T, C, tile, tile)
        x = x[..., : rows * tile, : cols * tile].unfold(-2, tile, tile).unfold(-2, tile, tile)
        return x.permute(2, 3, 0, 1, 4, 5).reshape(rows * cols, *x.shape[:2], tile, tile)

    n = rows * cols
    return {
        "s2": cut(s2),
        "s1": cut(s1),
        "s2_dates": sample["s2_dates"].expand(n, -1),
        "s1_dates": sample["s1_dates"].expand(n, -1),
        "lat": torch.full((n,), sample["lat"], dtype=torch.float64),
        "lon": torch.full((n,), sample["lon"], dtype=torch.float64),
    }


def pca_rgb(features: Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) in [0, 1]: the first three principal components, for a quick look."""
    import torch

    c, h, w = features.shape
    x = features.reshape(c, -1).t().double()
    x = x - x.mean(0)
    _, _, v = torch.pca_lowrank(x, q=3, center=False)
    y = x @ v[:, :3]
    lo, hi = y.quantile(0.02, dim=0), y.quantile(0.98, dim=0)
    return ((y - lo) / (hi - lo + 1e-12)).clamp(0, 1).reshape(h, w, 3).numpy()


def centre_window(sample: dict[str, Any], size: int) -> dict[str, Any]:
    """The centre ``size`` x ``size`` pixels of every image of a :func:`load_sen1floods11` sample."""
    h, w = sample["s2"].shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    out = dict(sample)
    for key in ("s2", "s1"):
        out[key] = sample[key][..., top : top + size, left : left + size]
    for key in ("rgb", "vv", "label"):  # (H, W, ...)
        out[key] = sample[key][top : top + size, left : left + size]
    return out


def multimodal(root: Path, preset: str = "tiny", tile: int = 64, window: int = 256) -> dict[str, Any]:
    """Step 3 of the module doc: the tiles of the chip's centre ``window`` through the fused encoder
    (random init: the demo pre-trains hr only); returns the summary entries and the arrays to draw."""
    import numpy as np
    import torch

    from skysense.models.skysense import build_model

    print(
        f"[3/4] Sentinel-2 + Sentinel-1 chip of Sen1Floods11 through the fused {preset} encoder", flush=True
    )
    if not (root / "sen1floods11").is_dir():
        raise FileNotFoundError(f"no Sen1Floods11 chip at {root / 'sen1floods11'}: set SKYSENSE_DATA")
    torch.manual_seed(0)
    model = build_model(preset).eval()
    sample = centre_window(load_sen1floods11(root), window)
    batch = tile_batch(sample, tile)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(batch)
    seconds = time.perf_counter() - start
    n, rows = batch["s2"].shape[0], sample["s2"].shape[-2] // tile
    fused = out["fused"].float()  # (N, C, g, g): one mosaic of the tiles' feature maps
    g = fused.shape[-1]
    mosaic = fused.reshape(rows, n // rows, fused.shape[1], g, g).permute(2, 0, 3, 1, 4)
    day = {m: str(np.datetime64(int(sample[f"{m}_dates"][0]), "D")) for m in ("s2", "s1")}
    return {
        "chip": sample["chip"],
        "s2_date": day["s2"],
        "s1_date": day["s1"],
        "lat_lon": [round(sample["lat"], 5), round(sample["lon"], 5)],
        "geo_region": int(out["region"][0]),
        "window_px": window,
        "tiles": n,
        "tile_px": tile,
        "fused_shape": list(out["fused"].shape),
        "seconds": round(seconds, 2),
        "weights": f"{preset}, random init",
        "_sample": sample,
        "_mosaic": mosaic.reshape(fused.shape[1], rows * g, (n // rows) * g),
    }


def scene_features(encoder: SkySense, image: Tensor, stage: int) -> Tensor:
    """One scene (3, S, S) on 0-255 -> the hr encoder's map of stage ``stage`` (1-4): (C, h, w) float32."""
    import torch

    from skysense.data.scenes import normalise_hr

    with torch.inference_mode():
        return encoder.encoders["hr"](normalise_hr(image[None].float()))[stage - 1][0].float()


def quicklook(path: Path, probed: dict[str, Any], mm: dict[str, Any]) -> None:
    """Step 4 of the module doc: two rows of panels, each image next to the features computed from it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch.nn.functional as F
    from matplotlib.patches import Patch

    test = probed["_test"]
    names = [test.ids[i].split("/")[0] for i in range(len(test.ids))]
    i = names.index(QUICKLOOK_CLASS) if QUICKLOOK_CLASS in names else 0
    size = (QUICKLOOK_PX, QUICKLOOK_PX)
    image = F.interpolate(test.images[i][None].float(), size=size, mode="bilinear", antialias=True)[0]
    fig, ax = plt.subplots(2, 4, figsize=(16, 8.6))
    ax[0, 0].imshow(image.permute(1, 2, 0).clamp(0, 255).byte().numpy())
    ax[0, 0].set_title(f"AID test scene: {names[i]} ({QUICKLOOK_PX} px)")
    for a, name in zip(ax[0, 1:3], ("pre-trained", "random init")):
        feats = scene_features(probed["_encoders"][name], image, QUICKLOOK_STAGE)
        a.imshow(pca_rgb(feats), interpolation="nearest")
        a.set_title(
            f"its hr stage-{QUICKLOOK_STAGE} features ({feats.shape[-1]} x {feats.shape[-1]}), {name}"
        )
    ax[0, 3].text(
        0.0,
        0.5,
        "Feature panels: the first three principal\ncomponents of each feature map as RGB\n"
        "(similar colours = similar features).\n\nTop: the hr encoder just pre-trained on AID\n"
        "and the same network before pre-training.\nBottom: the multi-modal path on real\n"
        "Sentinel data (random init: the demo\npre-trains hr only).",
        va="center",
        fontsize=10,
    )
    s = mm["_sample"]
    ax[1, 0].imshow(np.clip(s["rgb"] / np.percentile(s["rgb"], 98), 0, 1))
    ax[1, 0].set_title(f"Sentinel-2 true colour, {mm['s2_date']}")
    ax[1, 1].imshow(s["vv"], cmap="gray", vmin=-25, vmax=0)
    ax[1, 1].set_title(f"Sentinel-1 VV (dB), {mm['s1_date']}")
    colours = {-1: ("no label", "#bbbbbb"), 0: ("dry", "#d9c79e"), 1: ("water", "#1f5fbf")}
    rgb = np.zeros((*s["label"].shape, 3))
    for v, (_, c) in colours.items():
        rgb[s["label"] == v] = matplotlib.colors.to_rgb(c)
    ax[1, 2].imshow(rgb, interpolation="nearest")
    ax[1, 2].set_title(f"hand label, chip {mm['chip']}")
    ax[1, 2].legend(
        handles=[Patch(color=c, label=n) for n, c in colours.values()], loc="lower right", fontsize=8
    )
    ax[1, 3].imshow(pca_rgb(mm["_mosaic"]), interpolation="nearest")
    ax[1, 3].set_title(f"fused S2 + S1 features, {mm['tiles']} tiles ({mm['weights']})")
    for a in ax.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(summary: dict[str, Any]) -> str:
    """The printed result: what was trained on what, for how long, the probe with its context, the files."""
    pt, lp, mm, ref = summary["pretraining"], summary["linear_probe"], summary["multimodal"], REFERENCE
    epochs = pt["steps"] * pt["batch_size"] / max(pt["scenes"], 1)
    pad = " " * 14

    def pct(x: float) -> str:
        return f"{100 * x:5.1f} %"

    lines = [
        f"SkySense demo: {summary['seconds']:.0f} s on {summary['threads']} CPU thread(s)",
        "",
        f"Pre-training  the tiny hr encoder (SwinV2, {pt['encoder_parameters_m']:.2f} M parameters), "
        "self-supervised (MGCL, EMA teacher),",
        f"{pad}on the {pt['scenes']:,} AID train scenes without their labels: {pt['steps']} steps of "
        f"{pt['batch_size']} ({epochs:.1f} epochs, lr {pt['lr']:g}) in {pt['seconds']:.0f} s; loss "
        f"{pt['loss_first']:.2f} -> {pt['loss_last']:.2f}",
        f"Linear probe  AID scene classes (30): test overall accuracy on {lp['split']['test']:,} scenes of a "
        "logistic regression",
        f"{pad}on the frozen encoder's {lp['features']}:",
        f"{pad}  {'pre-trained, ' + str(pt['steps']) + ' steps':<26} {pct(lp['oa_pretrained'])}",
        f"{pad}  {'random init, same network':<26} {pct(lp['oa_random_init'])}",
        f"{pad}  {'chance':<26} {pct(lp['chance'])}",
        f"{pad}For scale, the same probe after the full recipe ({ref['full_recipe_steps']:,} steps, lr "
        f"{ref['full_recipe_lr']:g}, {ref['full_recipe_local_crops']} local crops, ~23 min): "
        f"{100 * ref['full_recipe_pretrained']:.1f} % (random",
        f"{pad}init {100 * ref['full_recipe_random_init']:.1f} %); hand-crafted colour + texture (LBP) "
        f"features: {100 * ref['handcrafted_colour_lbp']:.1f} % (BENCHMARKS.md)",
        f"Multi-modal   the Sentinel-2 + Sentinel-1 chip {mm['chip']} (S2 {mm['s2_date']}, S1 "
        f"{mm['s1_date']}, lat {mm['lat_lon'][0]:.2f}, lon {mm['lat_lon'][1]:.2f}):",
        f"{pad}its centre {mm['window_px']} px as {mm['tiles']} tiles of {mm['tile_px']} px through the "
        f"fused encoder ({mm['weights']}) in {mm['seconds']:.1f} s -> features "
        f"{' x '.join(map(str, mm['fused_shape']))}",
        f"Files         in {summary['out_dir']}/",
    ]
    lines += [f"{pad}  {name:<26} {what}" for name, what in summary["files"].items()]
    return "\n".join(lines)


FILES = {
    "demo_quicklook.png": "AID scene and Sentinel chip next to their features",
    "linear_probe_oa.png": "the probe's accuracies as bars",
    "confusion_pretrained.png": "the pre-trained probe's confusion matrix",
    "demo_summary.json": "everything printed here",
    "pretrain/loss_curve.png": "pre-training losses per step",
    "pretrain/metrics.csv": "losses, lr, monitors per step",
    "pretrain/last.ckpt": "the pre-trained checkpoint (skysense export turns it into weights)",
}


def run_demo(root: Path, out_dir: Path, steps: int, per_class_train: int = 0, preset: str = "tiny") -> dict:
    """Steps 1-4 of the module doc; returns the summary (also written to ``demo_summary.json``)."""
    if not (root / "aid").is_dir():
        raise FileNotFoundError(
            f"no AID scenes at {root / 'aid'}: set SKYSENSE_DATA to the shared data folder"
        )
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, overrides = pretrain_config(root, out_dir / "pretrain", steps)
    print(
        f"[1/4] pre-training the tiny hr encoder on the AID train scenes (no labels), {steps} steps of "
        f"{cfg.batch_size}; first the AID scenes at {cfg.data.hr_tile} px, decoded once for steps 1 and 2",
        flush=True,
    )
    scenes = load_aid(root, cfg.data.hr_tile)
    pt = pretrain(cfg, overrides, scenes["train"])
    lp = probe(out_dir, cfg, scenes, per_class_train)
    encoder = lp["_encoders"]["pre-trained"].encoders["hr"]
    pt["encoder_parameters_m"] = round(sum(p.numel() for p in encoder.parameters()) / 1e6, 3)
    mm = multimodal(root, preset)
    print("[4/4] quick look", flush=True)
    quicklook(out_dir / "demo_quicklook.png", lp, mm)
    import torch

    summary = {
        "pretraining": pt,
        "linear_probe": {k: v for k, v in lp.items() if not k.startswith("_")},
        "multimodal": {k: v for k, v in mm.items() if not k.startswith("_")},
        "out_dir": str(out_dir),
        "files": FILES,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    summary["printed"] = report(summary)
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def quiet_expected_warnings() -> None:
    """Warnings a user cannot act on: AID's JPEG scenes carry no georeference (expected for them)."""
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


def _run(args: argparse.Namespace) -> int:
    from skysense.data.root import data_root

    apply_threads(args.threads)
    quiet_expected_warnings()
    root = Path(args.data) if args.data else data_root()
    summary = run_demo(root, Path(args.out), args.steps, args.per_class, args.preset)
    print("\n" + summary["printed"])
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="pre-train briefly on AID, linear-probe it, run real S1+S2 through the encoder; plots",
        description="The main job end to end in about 2 minutes on one thread (114 s with another process "
        "busy on one of 2 cores): pre-train the "
        "tiny hr encoder self-supervised on the AID train scenes, linear-probe it against its random "
        "initialisation (test OA on 30 classes), run a real Sentinel-2 + Sentinel-1 chip through the fused "
        "multi-modal encoder, and write a quick look, plots and a summary. Reads the data in $SKYSENSE_DATA "
        "(default ../shared/data); downloads nothing.",
    )
    p.add_argument("--steps", type=int, default=100, help="pre-training steps (default 100: 50 s of CPU)")
    p.add_argument("--per-class", type=int, default=0, help="probe train scenes per class (0 = all)")
    p.add_argument("--preset", default="tiny", help="model preset of the S1+S2 path (default tiny)")
    p.add_argument("--data", default=None, help="data root (default: $SKYSENSE_DATA or ../shared/data)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    add_threads_argument(p)
    p.set_defaults(func=_run)
