"""Dated stacks in large-scene inference: cloud masks per date and cell, predict with multi-modal
segmentation checkpoints, and the errors of bad stacks (:mod:`skysense.inference_stack`,
:mod:`skysense.inference_clouds`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from skysense.checkpoint import default_meta, save_pretrained
from skysense.inference import encoder_head, infer
from skysense.inference_stack import StackScene
from skysense.models.skysense import build_model
from tests.test_inference import read, write_stack

GRID = from_origin(500_000.0, 4_200_000.0, 10.0, 10.0)  # UTM 33N, 10 m
DATES = ["20210601", "20210711", "20210820"]
SQUARE = (slice(8, 16), slice(4, 12))  # rows, cols of the cloud


def s2_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("tiny", hr=None, s1=None)
    return save_pretrained(model, tmp_path / "s2.safetensors", default_meta(model.cfg))


def cloud_sidecar(date_file: Path, square: tuple[slice, slice] = SQUARE) -> Path:
    """A binary cloud mask ``<stem>_cloud.tif`` on the date's grid: 1 over ``square``."""
    mask = np.zeros((32, 32), np.uint8)
    mask[square] = 1
    path = date_file.with_name(f"{date_file.stem}_cloud.tif")
    profile = {"driver": "GTiff", "height": 32, "width": 32, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", crs="EPSG:32633", transform=GRID, **profile) as dst:
        dst.write(mask[None])
    return path


def embed_stack(weights: Path, folder: Path, out: Path) -> np.ndarray:
    """The fused map of the s2 stack ``folder`` on its own grid (one cell a pixel, one 32-px tile)."""
    head = dataclasses.replace(encoder_head(weights, "fused", precision="fp32"), stride=1)
    scene = StackScene(None, {"s2": folder}, {"s2": 10})
    infer(scene, out, head, model_file=weights, tile=32, overlap=0, progress=False)
    return read(out)[0]


@pytest.mark.slow
def test_a_cloudy_date_is_left_out_where_cloudy_and_changes_nothing_where_clear(tmp_path):
    weights = s2_weights(tmp_path)
    clear = write_stack(tmp_path / "clear", "EPSG:32633", GRID, 32, 32, 10, DATES)
    cloudy = write_stack(tmp_path / "cloudy", "EPSG:32633", GRID, 32, 32, 10, DATES)  # the same values
    cloud_sidecar(cloudy / f"{DATES[1]}.tif")
    without = write_stack(tmp_path / "without", "EPSG:32633", GRID, 32, 32, 10, DATES)
    (without / f"{DATES[1]}.tif").unlink()  # the stack without the cloudy date
    a = embed_stack(weights, clear, tmp_path / "a.tif")
    b = embed_stack(weights, cloudy, tmp_path / "b.tif")
    c = embed_stack(weights, without, tmp_path / "c.tif")
    inside = np.zeros((32, 32), dtype=bool)
    inside[SQUARE] = True
    # clear cells: the cloudy date's values and features are what they were, its mask changes nothing
    assert a[:, ~inside].tobytes() == b[:, ~inside].tobytes()
    # cloudy cells: as if the date were not in the stack at all
    np.testing.assert_allclose(b[:-1, inside], c[:-1, inside], rtol=0, atol=2e-5)
    assert np.abs(a[:-1, inside] - b[:-1, inside]).max() > 1e-3  # and unlike keeping it
    assert (b[-1] == 1).all()  # two clear dates remain everywhere
    # the same mask as an SCL band of the date's file (9 = cloud of high probability, 4 = vegetation)
    scl = write_stack(tmp_path / "scl", "EPSG:32633", GRID, 32, 32, 10, DATES)
    with rasterio.open(scl / f"{DATES[1]}.tif") as src:
        x, profile = src.read(), src.profile
    classes = np.full((1, 32, 32), 4, np.float32)
    classes[0][SQUARE] = 9
    with rasterio.open(scl / f"{DATES[1]}.tif", "w", **{**profile, "count": 11}) as dst:
        dst.write(np.concatenate([x, classes]))
        dst.set_band_description(11, "SCL")
    assert embed_stack(weights, scl, tmp_path / "scl.tif").tobytes() == b.tobytes()


@pytest.mark.slow
def test_a_cell_with_no_clear_date_is_invalid(tmp_path):
    weights = s2_weights(tmp_path)
    folder = write_stack(tmp_path / "s2", "EPSG:32633", GRID, 32, 32, 10, DATES)
    everywhere = (slice(0, 4), slice(0, 6))
    for d in DATES:
        cloud_sidecar(folder / f"{d}.tif", everywhere)
    cloud_sidecar(folder / f"{DATES[2]}.tif", (slice(0, 4), slice(0, 8)))  # replaces the last one
    got = embed_stack(weights, folder, tmp_path / "o.tif")
    valid = got[-1]
    assert (valid[everywhere] == 0).all() and np.isnan(got[:-1][:, everywhere[0], everywhere[1]]).all()
    assert (valid[:4, 6:8] == 1).all() and np.isfinite(got[:, :4, 6:8]).all()  # one clear date there
    assert valid.sum() == 32 * 32 - 24


def fused_checkpoint(tmp_path: Path, s2_bands: int = 10) -> Path:
    """A ``skysense finetune``-style segmentation checkpoint of a random tiny s2 + s1 model (fused)."""
    from skysense.engine.state import save_checkpoint
    from skysense.tasks.finetune import FinetuneConfig, TaskHeadConfig, TaskModel

    torch.manual_seed(0)
    encoder = build_model("tiny", hr=None)
    if s2_bands != 10:
        from skysense.config import preset_with

        encoder = build_model(preset_with("tiny", {"hr": None, "s1": None, "s2": {"in_chans": s2_bands}}))
    head = TaskHeadConfig(channels=16)
    model = TaskModel(encoder, "segmentation", "fused", 3, head)
    cfg = FinetuneConfig(task="segmentation", input="fused", head=head)
    meta = {"task": "segmentation", "classes": ["dry", "water", "cloud"], "encoder": encoder.cfg.to_dict()}
    meta |= {"head": dataclasses.asdict(head), "input": "fused"}
    path = tmp_path / "seg.ckpt"
    save_checkpoint(path, {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "meta": meta})
    return path


def _reference(ckpt: Path, s2: Path, s1: Path) -> torch.Tensor:
    """The checkpoint's class probabilities on the whole stacks at once (1, K, 32, 32)."""
    from skysense.checkpoint import sensor_spec
    from skysense.data.readers import parse_date
    from skysense.dates import to_days
    from skysense.inference import lonlat
    from skysense.tasks.evaluate import load_task_model

    model, _, _ = load_task_model(ckpt)
    batch: dict[str, torch.Tensor] = {}
    for m, folder, bands in (("s2", s2, 10), ("s1", s1, 2)):
        files = sorted(folder.glob("*.tif"))
        x = np.stack([rasterio.open(f).read() for f in files]).astype(np.float32)
        batch[m] = sensor_spec(m, bands).normalise(torch.from_numpy(x))[None]
        batch[f"{m}_dates"] = to_days([parse_date(f.stem) for f in files])[None]
    batch |= lonlat("EPSG:32633", GRID, [0], [0], 32)
    with torch.no_grad():
        return model(batch)["logits"].softmax(1)


@pytest.mark.slow
def test_predict_over_s2_and_s1_stacks(tmp_path):
    from skysense.cli import main

    ckpt = fused_checkpoint(tmp_path)
    s2 = write_stack(tmp_path / "s2", "EPSG:32633", GRID, 32, 32, 10, DATES)
    s1 = write_stack(tmp_path / "s1", "EPSG:32633", GRID, 32, 32, 2, ["20210605", "20210801"])
    for f in s1.iterdir():  # dB-like values
        with rasterio.open(f, "r+") as d:
            d.write(d.read() / 100 - 25)
    argv = ["predict", "--s2", str(s2), "--s1", str(s1), "--checkpoint", str(ckpt), "--tile", "32"]
    argv += ["--overlap", "0", "--quiet", "--device", "cpu", "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "seg.tif")]) == 0
    got, meta = read(tmp_path / "seg.tif")
    assert meta["names"] == ("class", "confidence", "valid") and meta["transform"] == GRID
    assert got.shape == (3, 32, 32) and (got[2] == 1).all()
    prob = _reference(ckpt, s2, s1)[0]
    np.testing.assert_allclose(got[1], prob.max(0).values.numpy(), rtol=1e-4, atol=1e-5)
    top2 = prob.topk(2, 0).values
    clear_cut = (top2[0] - top2[1]).numpy() > 1e-4  # the class where no near tie can flip it
    np.testing.assert_array_equal(got[0][clear_cut], prob.argmax(0).numpy()[clear_cut])
    assert (tmp_path / "seg.png").stat().st_size > 0
    with rasterio.open(tmp_path / "seg.tif") as o:
        assert o.tags()["s2_dates"] == "2021-06-01,2021-07-11,2021-08-20"
    # the same run into a Zarr store
    assert main([*argv, "--out", str(tmp_path / "seg.zarr"), "--format", "zarr"]) == 0
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")
    assert group["bands"][:].tobytes() == got.tobytes()
    assert group.attrs["s2_dates"] == "2021-06-01,2021-07-11,2021-08-20" and group.attrs["epsg"] == 32633


def test_predict_errors_name_the_fix(tmp_path, capsys):
    from skysense.cli import main
    from skysense.inference import task_head
    from tests.test_inference import task_checkpoint, write_scene

    s2 = write_stack(tmp_path / "s2", "EPSG:32633", GRID, 32, 32, 10, DATES)
    hr_ckpt = task_checkpoint(tmp_path, "segmentation", ["a", "b"])
    assert (
        main(["predict", "--s2", str(s2), "--checkpoint", str(hr_ckpt), "--out", str(tmp_path / "o.tif")])
        == 2
    )
    assert (
        "reads hr; --s2/--s1 stacks (with at most one hr image) go with multi-modal"
        in capsys.readouterr().err
    )
    fused = fused_checkpoint(tmp_path)
    assert main(["predict", "--checkpoint", str(fused), "--out", str(tmp_path / "o.tif")]) == 2
    assert "no input: give an hr GeoTIFF and/or s2/s1 stack folders" in capsys.readouterr().err
    ndvi = fused_checkpoint(tmp_path, s2_bands=1)  # a 1-band series (NDVI): no default statistics
    with pytest.raises(ValueError, match="1 band.*--stats FILE"):
        task_head(ndvi, 32, precision="fp32")
    stats = tmp_path / "stats.json"
    stats.write_text('{"s2": {"bands": ["NDVI"], "mean": [0.5], "std": [0.2]}}')
    head = task_head(ndvi, 32, precision="fp32", stats=stats)
    np.testing.assert_allclose(head.normalise["s2"](torch.full((1, 1, 2, 2), 0.7)), 1.0, rtol=1e-6)
    hr = write_scene(tmp_path / "hr.tif", 64, 64)
    assert (
        main(["predict", str(hr), str(hr), "--checkpoint", str(hr_ckpt), "--out", str(tmp_path / "o.tif")])
        == 2
    )
    assert "takes 1 input(s) (hr), got 2" in capsys.readouterr().err


def test_bad_stacks_keep_their_clear_errors(tmp_path):
    s2 = write_stack(tmp_path / "s2", "EPSG:32633", GRID, 32, 32, 10, DATES)
    (s2 / f"{DATES[0]}.tif").rename(s2 / "s2_20211345.tif")  # month 13: no real date
    with pytest.raises(ValueError, match="s2_20211345.tif: no date in the file name"):
        StackScene(None, {"s2": s2}, {"s2": 10})
    (s2 / "s2_20211345.tif").unlink()
    orphan = cloud_sidecar(s2 / "20200101.tif")
    with pytest.raises(ValueError, match="20200101_cloud.tif: a cloud mask without its date file"):
        StackScene(None, {"s2": s2}, {"s2": 10})
    orphan.unlink()
    far = write_stack(
        tmp_path / "s1", "EPSG:32633", from_origin(600_000, 4_100_000, 10, 10), 8, 8, 2, ["20200101"]
    )
    with pytest.raises(ValueError, match="do not overlap"):
        StackScene(None, {"s2": s2, "s1": far}, {"s2": 10, "s1": 2})
    bare = tmp_path / "bare"
    bare.mkdir()
    profile = {"driver": "GTiff", "height": 8, "width": 8, "count": 10, "dtype": "uint16"}
    with rasterio.open(bare / "20200101.tif", "w", **profile):
        pass
    with pytest.raises(ValueError, match="no CRS or geotransform"):
        StackScene(None, {"s2": bare}, {"s2": 10})
    with rasterio.open(s2 / f"{DATES[1]}.tif") as src:  # an 11th band that is no cloud band
        x, profile = src.read(), src.profile
    with rasterio.open(s2 / f"{DATES[1]}.tif", "w", **{**profile, "count": 11}) as dst:
        dst.write(np.concatenate([x, x[:1]]))
    with pytest.raises(ValueError, match="11 band.*take 10 s2 bands.*SCL or CLM"):
        StackScene(None, {"s2": s2}, {"s2": 10})


@pytest.mark.slow
@pytest.mark.data
def test_predict_with_a_sen1floods11_finetune_matches_its_training_data_path(tmp_path):
    """A one-step ``skysense finetune`` of configs/finetune/sen1floods11_tiny.yaml, predicted over a
    128-px crop of the real chip written as s2/s1 stacks, equals the model on the dataset reader's
    normalised sample of the same crop (dates from the metadata, the L1C chip's 10 encoder bands)."""
    from skysense.cli import main
    from skysense.data import Normalize, Sen1Floods11
    from skysense.data.root import data_root
    from skysense.inference import lonlat
    from skysense.tasks.evaluate import load_task_model

    root = data_root() / "sen1floods11"
    if not root.is_dir():
        pytest.skip(f"{root} not found (set SKYSENSE_DATA)")
    run = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "sen1floods11_tiny.yaml"
    args = ["finetune", "--config", str(config), "steps=1", "eval_every=1", "ckpt_every=1", "warmup_steps=0"]
    assert main([*args, f"out_dir={run}", "--threads", "1"]) == 0
    sample = Normalize()(Sen1Floods11(root)[0])
    for m, sub, day in (("s2", "S2", "20190918"), ("s1", "S1", "20190917")):  # the metadata's dates
        (tmp_path / m).mkdir()
        with rasterio.open(next((root / sub).glob("*.tif"))) as src:
            x = src.read(window=((0, 128), (0, 128)))
            x = x[[1, 2, 3, 4, 5, 6, 7, 8, 11, 12]] if m == "s2" else x  # B2 .. B8A, B11, B12
            profile = {**src.profile, "count": len(x), "height": 128, "width": 128}
            with rasterio.open(tmp_path / m / f"{day}.tif", "w", **profile) as dst:
                dst.write(x)
            transform = src.transform
    out = tmp_path / "flood.tif"
    argv = ["predict", "--s2", str(tmp_path / "s2"), "--s1", str(tmp_path / "s1"), "--out", str(out)]
    argv += ["--checkpoint", str(run / "best.ckpt"), "--tile", "128", "--overlap", "0", "--quiet"]
    assert main([*argv, "--device", "cpu", "--precision", "fp32"]) == 0
    got, meta = read(out)
    assert meta["transform"] == transform and meta["crs"].to_epsg() == 4326
    model, _, _ = load_task_model(run / "best.ckpt")
    batch = {k: sample[k][None, ..., :128, :128] for k in ("s2", "s1")}
    batch |= {k: sample[k][None] for k in ("s2_dates", "s1_dates")}
    batch |= lonlat(meta["crs"], transform, [0], [0], 128)
    with torch.no_grad():
        prob = model(batch)["logits"].softmax(1)[0]
    np.testing.assert_allclose(got[1], prob.max(0).values.numpy(), rtol=1e-4, atol=1e-5)
    top2 = prob.topk(2, 0).values
    clear_cut = (top2[0] - top2[1]).numpy() > 1e-4
    np.testing.assert_array_equal(got[0][clear_cut], prob.argmax(0).numpy()[clear_cut])


def test_the_fusion_in_chunks_of_cells_equals_one_call(tmp_path, monkeypatch):
    import skysense.inference_heads

    weights = s2_weights(tmp_path)
    folder = write_stack(tmp_path / "s2", "EPSG:32633", GRID, 32, 32, 10, DATES)
    cloud_sidecar(folder / f"{DATES[0]}.tif")
    whole = embed_stack(weights, folder, tmp_path / "whole.tif")
    monkeypatch.setattr(skysense.inference_heads, "CELLS", 100)  # 1024 cells: 11 calls, the last short
    np.testing.assert_allclose(
        embed_stack(weights, folder, tmp_path / "chunks.tif"), whole, rtol=0, atol=1e-6
    )
