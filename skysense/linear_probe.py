"""Linear probing of frozen features: the standard test of what self-supervised pre-training learnt.

The encoder is frozen; an ``hr`` scene becomes the global average of its last Swin stage (B, C4), or
of all four stages, optionally with each channel's spatial standard deviation next to its mean
(second-order pooling: the texture statistics that colour + LBP histograms capture by hand);
a multinomial logistic regression (scikit-learn, L2, features standardised on the train split, solved
in float64 to convergence) is fitted on the train split with its strength ``C`` chosen on the val split,
then refitted on train + val and scored on test: overall accuracy (OA) and the confusion matrix.

The hand-crafted reference is the classic texture + colour descriptor of scene classification:
per-channel colour histograms (32 bins of RGB) and rotation-invariant uniform LBP histograms of
the grey image at three radii (P, R) = (8, 1), (16, 2), (24, 3) (scikit-image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from skysense.data.scenes import Scenes, normalise_hr
from skysense.models.skysense import SkySense

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
# newton-cg in float64 to a gradient tolerance of 1e-6: sklearn's lbfgs stopped early twice over. At tol 1e-3
# the score depended on the CPU's BLAS kernels (hand-crafted AID 64.9 or 63.8); at 1e-6 on our float32
# features it still stopped on its relative-decrease test, short of the optimum (up to 3 of 676 AID val
# scenes off a 1e-10 fit, BENCHMARKS.md "Linear probe on AID"; coefficients 1e-3 off in a test case).
# newton-cg in float64 matches that fit. Part of every cached probe's stamp.
PROBE_SOLVER, PROBE_TOL, PROBE_MAX_ITER, PROBE_DTYPE = "newton-cg", 1e-6, 1000, np.float64
SOLVER = {
    "solver": PROBE_SOLVER,
    "tol": PROBE_TOL,
    "max_iter": PROBE_MAX_ITER,
    "dtype": np.dtype(PROBE_DTYPE).name,
}


@torch.no_grad()
def hr_features(
    encoder: SkySense,
    images: Tensor,
    size: int | None = None,
    batch: int = 128,
    bf16: bool = True,
    stages: str = "last",
    pool: str = "mean",
) -> np.ndarray:
    """images (N, 3, H, W) uint8 -> (N, C4) float32: last-stage Swin map, averaged over space.

    ``stages="all"`` concatenates the averages of all four stages (N, C1 + ... + C4) instead;
    ``pool="meanstd"`` appends each channel's standard deviation over space, doubling the width.
    ``size`` resizes first (antialiased bilinear); bf16 autocast on CPU changes the probe's OA by well
    under a point and runs ~2x faster here."""
    if stages not in ("last", "all"):
        raise ValueError(f"stages={stages!r}: use 'last' or 'all'")
    if pool not in ("mean", "meanstd"):
        raise ValueError(f"pool={pool!r}: use 'mean' or 'meanstd'")
    if "hr" not in encoder.encoders:
        raise ValueError("the encoder has no hr branch")
    swin = encoder.encoders["hr"]
    was_training = swin.training
    swin.eval()
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].float()
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            maps = swin(normalise_hr(x))  # 4 x (b, C_i, h_i, w_i)
        maps = [m.float() for m in (maps if stages == "all" else maps[-1:])]
        pooled = [m.mean((-2, -1)) for m in maps]
        if pool == "meanstd":
            pooled += [m.std((-2, -1), correction=0) for m in maps]
        out.append(torch.cat(pooled, dim=1))
    swin.train(was_training)
    return torch.cat(out).numpy()


def handcrafted_features(images: Tensor, bins: int = 32, progress: bool = False) -> np.ndarray:
    """images (N, 3, H, W) uint8 -> (N, 3 * bins + 10 + 18 + 26): colour + LBP histograms (module doc)."""
    try:
        from skimage.feature import local_binary_pattern
    except ImportError as e:  # an optional dependency, for this baseline only
        raise ImportError("the hand-crafted baseline needs scikit-image: pip install -e '.[bench]'") from e
    arr = images.numpy()
    grey = (0.299 * arr[:, 0] + 0.587 * arr[:, 1] + 0.114 * arr[:, 2]).astype(np.uint8)  # (N, H, W)
    rows = []
    for img, g in tqdm(zip(arr, grey), total=len(arr), disable=not progress, desc="hand-crafted"):
        parts = [np.histogram(img[c], bins=bins, range=(0, 256))[0] for c in range(3)]
        for p, r in ((8, 1), (16, 2), (24, 3)):
            codes = local_binary_pattern(g, p, r, method="uniform")  # values 0 .. p + 1
            parts.append(np.histogram(codes, bins=p + 2, range=(0, p + 2))[0])
        rows.append(np.concatenate([h / h.sum() for h in parts]))
    return np.stack(rows).astype(np.float32)


@dataclass
class ProbeResult:
    oa: float  # test overall accuracy, in [0, 1]
    val_oa: float  # of the chosen C, fitted on train only
    c: float
    confusion: np.ndarray  # (K, K) test counts, rows = truth
    val_by_c: dict[float, float] = field(default_factory=dict)


def probe_model(c: float) -> Pipeline:
    """The probe's classifier, unfitted: features cast to float64, standardised (statistics of the fit's
    data), then an L2 multinomial logistic regression of strength ``c`` solved as ``SOLVER`` says."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(
        FunctionTransformer(np.asarray, kw_args={"dtype": PROBE_DTYPE}),  # at fit and at predict
        StandardScaler(),
        LogisticRegression(C=c, solver=PROBE_SOLVER, tol=PROBE_TOL, max_iter=PROBE_MAX_ITER),
    )


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    cs: Sequence[float] = DEFAULT_CS,
    num_classes: int | None = None,
    warm_start: bool = False,
    progress: str = "",
) -> ProbeResult:
    """Logistic-regression probe (module doc): each split is (features (n, D), labels (n,)).

    ``warm_start`` (the demo's probe): each fit starts from the previous C's optimum (C ascending), the
    final one from the chosen C's: the same optimum to the same tolerance, fewer iterations. ``progress``:
    a label to print each C's validation score after."""
    from sklearn.metrics import confusion_matrix

    val_by_c, coefs, clf = {}, {}, probe_model(min(cs))
    for c in sorted(cs):
        if not warm_start:
            clf = probe_model(c)
        clf.set_params(logisticregression__C=c, logisticregression__warm_start=warm_start).fit(*train)
        val_by_c[c] = float((clf.predict(val[0]) == val[1]).mean())
        coefs[c] = (clf[-1].coef_.copy(), clf[-1].intercept_.copy())
        if progress:
            print(f"{progress} = {c:g}: val OA {100 * val_by_c[c]:.1f} %", flush=True)
    best = max(cs, key=lambda c: (val_by_c[c], -c))  # ties: the stronger regularisation
    clf = probe_model(best)
    if warm_start:
        clf[-1].set_params(warm_start=True)
        clf[-1].coef_, clf[-1].intercept_ = coefs[best]
    clf.fit(np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    pred = clf.predict(test[0])
    k = num_classes or int(max(train[1].max(), test[1].max())) + 1
    cm = confusion_matrix(test[1], pred, labels=list(range(k)))
    return ProbeResult(float((pred == test[1]).mean()), val_by_c[best], best, cm, val_by_c)


def probe_splits(
    features: dict[str, np.ndarray], splits: dict[str, Scenes], cs: Sequence[float] = DEFAULT_CS, **kw: Any
) -> ProbeResult:
    """:func:`fit_probe` on per-split features (``train``/``val``/``test`` -> (n, D)) of scene splits;
    ``kw``: ``warm_start``, ``progress``."""
    train, val, test = ((features[s], splits[s].labels.numpy()) for s in ("train", "val", "test"))
    return fit_probe(train, val, test, cs, num_classes=len(splits["train"].classes), **kw)


def summarise_seeds(runs: dict[int, dict[str, float]], paired: tuple[str, str] | None = None) -> dict:
    """Scores of repeated runs -> mean, sample std and per-seed values of each method.

    ``runs`` maps seed -> {method: OA}; only methods scored under every seed are summarised.
    ``paired=(a, b)`` adds the per-seed differences a - b, their mean and std: the runs of one seed
    share the split and the initialisation, so the paired difference is the fairer comparison.
    """
    seeds = sorted(runs)
    methods = [m for m in runs[seeds[0]] if all(m in runs[s] for s in seeds)]

    def stats(values: list[float]) -> dict:
        v = np.asarray(values, dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": values}

    out = {"seeds": seeds, "methods": {m: stats([runs[s][m] for s in seeds]) for m in methods}}
    if paired is not None and all(m in methods for m in paired):
        out["paired"] = {"a": paired[0], "b": paired[1]} | stats(
            [runs[s][paired[0]] - runs[s][paired[1]] for s in seeds]
        )
    return out


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"OA {np.trace(cm) / max(cm.sum(), 1):.1%}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(
    results: dict[str, float],
    path: str | Path,
    title: str = "linear probe, test OA",
    errors: dict[str, float] | None = None,
) -> None:
    """One bar per method (OA in [0, 1]) as a PNG; ``errors`` (same scale) draws +- whiskers, e.g. the
    std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.5 * len(results)))
    names = list(results)
    vals = [100 * results[n] for n in names]
    err = [100 * (errors or {}).get(n, 0.0) for n in names]
    ax.barh(names, vals, xerr=err if errors else None, color="tab:blue", capsize=3)
    for y, (v, e) in enumerate(zip(vals, err)):
        ax.text(v + e + 0.8, y, f"{v:.1f}" + (f" ± {e:.1f}" if e else ""), va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("overall accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
