"""Linear probe: features of the frozen encoder, the logistic-regression probe, the hand-crafted baseline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skysense.data.scenes import normalise_hr
from skysense.linear_probe import (
    fit_probe,
    handcrafted_features,
    hr_features,
    plot_bars,
    plot_confusion,
    probe_model,
    summarise_seeds,
)
from skysense.models.skysense import build_model


def test_hr_features_are_the_pooled_last_stage():
    model = build_model("tiny", s2=None, s1=None).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    got = hr_features(model, images, size=64, batch=2, bf16=False)
    x = F.interpolate(images.float(), size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        want = model.encoders["hr"](normalise_hr(x))[-1].mean((-2, -1))
    assert got.shape == (3, model.cfg.hr.out_channels[-1])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    every = hr_features(model, images, size=64, batch=2, bf16=False, stages="all")
    assert every.shape == (3, sum(model.cfg.hr.out_channels))
    np.testing.assert_allclose(every[:, -got.shape[1] :], got, rtol=1e-5, atol=1e-6)
    second = hr_features(model, images, size=64, batch=3, bf16=False, stages="all", pool="meanstd")
    with torch.no_grad():
        maps = [m.double() for m in model.encoders["hr"](normalise_hr(x))]
    var = [((m - m.mean((-2, -1), keepdim=True)) ** 2).mean((-2, -1)) for m in maps]  # by definition
    assert second.shape == (3, 2 * every.shape[1])
    np.testing.assert_allclose(second[:, : every.shape[1]], every, rtol=1e-5, atol=1e-6)
    std = torch.cat(var, 1).sqrt().numpy()
    np.testing.assert_allclose(second[:, every.shape[1] :], std, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pool"):
        hr_features(model, images, pool="max")
    bf16 = hr_features(model, images, size=64, bf16=True)
    assert np.abs(bf16 - got).max() < 0.1 * np.abs(got).max()  # bf16 is an approximation, not noise


@pytest.mark.slow
def test_probe_separates_separable_classes_and_counts_right():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5

    def split(n):
        y = rng.integers(0, 3, n)
        return centres[y] + rng.normal(size=(n, 8)) * 0.1, y

    train, val, test = split(60), split(20), split(40)
    r = fit_probe(train, val, test, num_classes=4)
    assert r.oa == 1.0 and r.val_oa == 1.0
    assert r.confusion.shape == (4, 4) and r.confusion.sum() == 40
    assert np.array_equal(np.diag(r.confusion)[:3], np.bincount(test[1], minlength=3))
    noise = fit_probe(*[(rng.normal(size=x.shape), y) for x, y in (train, val, test)])
    assert noise.oa < 0.8  # labels unrelated to the features are not learnt


def _reference(c: float, solver: str = "newton-cg", tol: float = 1e-10):
    """A second formulation of the probe's fit, by default newton-cg to 1e-10 (on float64 features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, solver=solver, tol=tol, max_iter=10000))


def test_probe_is_converged_like_a_second_solver():
    """At every C the probe predicts the same val labels as the 1e-10 reference. Stopped at tol 1e-3
    (lbfgs, the probe's first solver) it did not at C = 10 here, and on AID its score depended on the CPU."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 40))

    def split(n):
        y = rng.integers(0, 10, n)
        return centres[y] + rng.normal(size=(n, 40)) * 1.5, y

    train, val, test = split(400), split(150), split(300)
    got = fit_probe(train, val, test)
    for c, acc in got.val_by_c.items():
        assert acc == float((_reference(c).fit(*train).predict(val[0]) == val[1]).mean()), c


def test_probe_fits_float32_features_to_the_float64_optimum():
    """Features arrive as float32 and ill-conditioned (correlated channels, as pooled Swin maps are): the
    probe's coefficients match the float64 reference to 2e-4. lbfgs on the float32 features (the probe's
    second solver) stops on its relative-decrease test about 1e-3 away, which this case tells apart."""
    rng = np.random.default_rng(0)
    d = 100
    centres = rng.normal(size=(10, d))
    mix = rng.normal(size=(d, d)) * (np.arange(1, d + 1) ** -1.0)[:, None]  # a decaying spectrum
    y = rng.integers(0, 10, 400)
    x = (centres[y] + rng.normal(size=(400, d)) * 2) @ mix
    x32 = x.astype(np.float32)
    want = _reference(10.0).fit(x32.astype(np.float64), y)[-1].coef_

    def error(coef: np.ndarray) -> float:
        return float(np.linalg.norm(coef - want) / np.linalg.norm(want))

    model = probe_model(10.0).fit(x32, y)
    assert model[-1].coef_.dtype == np.float64
    assert error(model[-1].coef_) < 2e-4
    old = _reference(10.0, solver="lbfgs", tol=1e-6)
    assert error(old.fit(x32, y)[-1].coef_) > 5e-4


def test_handcrafted_histograms_by_hand():
    pytest.importorskip("skimage")
    img = torch.full((1, 3, 16, 16), 7, dtype=torch.uint8)
    img[0, 1] = 200
    f = handcrafted_features(img, bins=32)[0]
    assert f.shape == (3 * 32 + 10 + 18 + 26,)
    r, g, b = f[:32], f[32:64], f[64:96]
    assert r[0] == 1 and g[200 // 8] == 1 and b[0] == 1  # one bin each (width 8)
    lbp = np.split(f[96:], [10, 28])
    for hist, p, rad in zip(lbp, (8, 16, 24), (1, 2, 3)):
        # a flat grey image: every neighbour >= centre -> code P, away from the border (read as 0)
        assert hist.sum() == pytest.approx(1) and hist[p] >= (16 - 2 * rad) ** 2 / 256 - 1e-6


def test_plots_are_written(tmp_path):
    plot_bars({"a": 0.5, "b": 0.75}, tmp_path / "bars.png")
    plot_bars({"a": 0.5, "b": 0.75}, tmp_path / "err.png", errors={"a": 0.02})  # "b" has no whisker
    plot_confusion(np.eye(3, dtype=int) * 4, ["x", "y", "z"], tmp_path / "cm.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000 and (tmp_path / "cm.png").stat().st_size > 1000
    assert (tmp_path / "err.png").read_bytes() != (tmp_path / "bars.png").read_bytes()


def test_summarise_seeds_by_hand():
    runs = {
        0: {"full": 0.60, "io": 0.58, "rnd": 0.50},
        1: {"full": 0.64, "io": 0.66, "rnd": 0.48},
        2: {"full": 0.62, "io": 0.59},  # rnd missing under seed 2: left out
    }
    s = summarise_seeds(runs, paired=("full", "io"))
    assert s["seeds"] == [0, 1, 2] and set(s["methods"]) == {"full", "io"}
    assert s["methods"]["full"]["mean"] == pytest.approx(0.62)
    assert s["methods"]["full"]["std"] == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert s["methods"]["io"]["values"] == [0.58, 0.66, 0.59]
    # differences +0.02, -0.02, +0.03: mean 0.01, sample std sqrt((1 + 9 + 4) / 2) / 100
    assert s["paired"]["values"] == pytest.approx([0.02, -0.02, 0.03])
    assert s["paired"]["mean"] == pytest.approx(0.01)
    assert s["paired"]["std"] == pytest.approx(np.sqrt(7.0) / 100)
    one = summarise_seeds({3: {"full": 0.7}}, paired=("full", "io"))
    assert one["methods"]["full"] == {"mean": 0.7, "std": 0.0, "values": [0.7]} and "paired" not in one
