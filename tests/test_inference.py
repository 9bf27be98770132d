"""Large-scene inference: tiling and blending against the whole image, georeferencing, resume, nodata,
bad input, several processes (:mod:`skysense.inference`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import Affine, from_origin

from skysense.checkpoint import default_meta, save_pretrained
from skysense.inference import Grid, Head, encoder_head, infer
from skysense.models.skysense import build_model

ORIGIN = from_origin(500_000.0, 4_200_000.0, 0.5, 0.5)  # UTM 33N, 0.5 m pixels


def write_scene(path: Path, h: int, w: int, nodata: float | None = None, seed: int = 0, **kw) -> Path:
    """A smooth random 3-band uint8 scene (h x w) in EPSG:32633."""
    gen = np.random.default_rng(seed)
    x = gen.uniform(0, 255, (3, h // 8 + 2, w // 8 + 2)).astype(np.float32)
    x = F.interpolate(torch.from_numpy(x)[None], size=(h, w), mode="bilinear")[0].numpy()
    profile = {"driver": "GTiff", "height": h, "width": w, "count": 3, "dtype": "uint8"}
    profile |= {"crs": "EPSG:32633", "transform": ORIGIN, "nodata": nodata, **kw}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.clip(x, 1, 255).astype(np.uint8))
    return path


def local_head(stride: int = 4) -> Head:
    """A model whose receptive field is one 3 x 3 neighbourhood of stride cells (fits any overlap >= 2
    cells): cell means, then a fixed 3 x 3 box filter. Zero padding at the tile edge is what the
    whole image sees at the scene edge."""

    def run(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cells = F.avg_pool2d(batch["hr"], stride)
        return F.avg_pool2d(cells, 3, stride=1, padding=1, count_include_pad=True)

    return Head(run, stride, 3, ["r", "g", "b"], {"hr": lambda x: x / 255.0}, 3)


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {"crs": src.crs, "transform": src.transform, "names": src.descriptions}


def tiny_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("tiny", s2=None, s1=None)
    return save_pretrained(model, tmp_path / "tiny.safetensors", default_meta(model.cfg))


@pytest.mark.parametrize("size", [(128, 128), (100, 70)])  # a multiple of the tile step, and not
def test_tiled_equals_whole_image_where_the_receptive_field_fits(tmp_path, size):
    h, w = size
    src = write_scene(tmp_path / "in.tif", h, w)
    head = local_head()
    infer([src], tmp_path / "out.tif", head, model_file=src, tile=64, overlap=32, progress=False)
    got, _ = read(tmp_path / "out.tif")
    with rasterio.open(src) as s:
        x = torch.from_numpy(s.read().astype(np.float32))[None]
    # the whole image, zero-padded to a whole number of cells as the tiles are at the scene edge
    x = F.pad(x, (0, -w % 4, 0, -h % 4))
    whole = head.run({"hr": x / 255.0})[0].numpy()
    assert got.shape == (4, -(-h // 4), -(-w // 4))
    # the edge cells hold zero padding in both; the cells outside the scene are cropped in both.
    # Blending identical values changes only the rounding: sum(w f) / sum(w) to float32 precision
    np.testing.assert_allclose(got[:3], whole, rtol=0, atol=1e-6)
    valid = got[3]
    assert valid[:-1, :-1].min() == 1.0
    if w % 4:  # the last column of cells covers w % 4 of its 4 pixel columns
        np.testing.assert_allclose(valid[0, -1], (w % 4) / 4, atol=1e-6)


def test_output_grid_aligns_with_the_input_in_map_coordinates(tmp_path):
    src = write_scene(tmp_path / "in.tif", 96, 128)
    infer([src], tmp_path / "out.tif", local_head(8), model_file=src, tile=64, overlap=32, progress=False)
    got, meta = read(tmp_path / "out.tif")
    assert meta["crs"].to_epsg() == 32633
    assert meta["transform"] == ORIGIN @ Affine.scale(8)
    assert meta["names"] == ("r", "g", "b", "valid")
    with rasterio.open(src) as s, rasterio.open(tmp_path / "out.tif") as o:
        for i, j in [(0, 0), (5, 3), (11, 15)]:
            x, y = o.xy(i, j)  # the cell centre in map coordinates
            r, c = s.index(x, y)  # the input pixel there
            assert (r // 8, c // 8) == (i, j)
            # the cell's value is its neighbourhood of input pixels around that place (mean of 3 x 3 cells)
            block = s.read(
                window=((max(0, r // 8 - 1) * 8, r // 8 * 8 + 16), (max(0, c // 8 - 1) * 8, c // 8 * 8 + 16))
            )
            if 0 < i < 11 and 0 < j < 15:
                np.testing.assert_allclose(got[:3, i, j], block.mean((1, 2)) / 255.0, rtol=1e-5)


def test_nodata_region_is_masked_in_the_valid_band(tmp_path):
    src = write_scene(tmp_path / "in.tif", 96, 96, nodata=0)
    with rasterio.open(src, "r+") as d:
        d.write(np.zeros((3, 40, 42), np.uint8), window=((0, 40), (0, 42)))  # nodata top-left corner
    infer([src], tmp_path / "out.tif", local_head(4), model_file=src, tile=64, overlap=32, progress=False)
    got, _ = read(tmp_path / "out.tif")
    valid = got[3]
    assert (valid[:10, :10] == 0).all() and np.isnan(got[:3, :10, :10]).all()
    np.testing.assert_allclose(valid[:10, 10], 0.5)  # columns 40-43: two of four pixels are nodata
    assert (valid[12:, 12:] == 1).all() and np.isfinite(got[:3, 12:, 12:]).all()


def test_tiny_encoder_single_tile_equals_the_model(tmp_path):
    weights = tiny_weights(tmp_path)
    src = write_scene(tmp_path / "in.tif", 64, 64)
    head = encoder_head(weights, "hr2", precision="fp32")
    infer([src], tmp_path / "out.tif", head, model_file=weights, tile=64, overlap=0, progress=False)
    got, meta = read(tmp_path / "out.tif")
    from skysense.pretrained import load_pretrained

    model, m, _ = load_pretrained(weights)
    with rasterio.open(src) as s:
        x = m.modalities["hr"].normalise(torch.from_numpy(s.read().astype(np.float32))[None])
    with torch.no_grad():
        ref = model.encoders["hr"](x)[1][0].numpy()
    assert got.shape == (ref.shape[0] + 1, 8, 8)
    assert meta["names"][0] == "hr2_0000" and meta["transform"] == ORIGIN @ Affine.scale(8)
    np.testing.assert_allclose(got[:-1], ref, rtol=1e-4, atol=1e-5)  # the same ops, one batch of one


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bytes(tmp_path):
    weights = tiny_weights(tmp_path)
    src = write_scene(tmp_path / "in.tif", 160, 96)
    head = encoder_head(weights, "hr3", precision="fp32")
    kw = {"model_file": weights, "tile": 64, "overlap": 32, "batch": 2, "progress": False}
    infer([src], tmp_path / "whole.tif", head, **kw)
    out = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        infer([src], out, head, stop_after=2, **kw)
    assert not out.exists()  # nothing under the final name until every strip is written
    summary = infer([src], out, head, **kw)
    assert summary.tiles == (Grid(160, 96, 64, 32, 16).rows - 2) * Grid(160, 96, 64, 32, 16).cols
    a, b = read(tmp_path / "whole.tif")[0], read(out)[0]
    assert a.tobytes() == b.tobytes()
    assert not list(tmp_path.glob("*.partial*"))
    assert infer([src], out, head, **kw).tiles == 0  # finished: nothing recomputed


def test_bad_input_is_refused_with_the_fix(tmp_path):
    src = write_scene(tmp_path / "in.tif", 64, 64)
    head = local_head()
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        infer([src], tmp_path / "nope" / "out.tif", head, model_file=src, progress=False)
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", height=64, width=64, count=3, dtype="uint8") as d:
        d.write(np.ones((3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="no CRS or geotransform"):
        infer([bare], tmp_path / "out.tif", head, model_file=src, progress=False)
    head.in_bands = 4
    with pytest.raises(ValueError, match="3 band.*the weights take 4"):
        infer([src], tmp_path / "out.tif", head, model_file=src, progress=False)
    with pytest.raises(ValueError, match="multiples of 32"):
        Grid(64, 64, 60, 0, 4)
    with pytest.raises(ValueError, match="half the tile"):
        Grid(64, 64, 64, 64, 4)
    assert not (tmp_path / "out.tif").exists()


def embed_one_and_two_ranks(tmp_path: Path, suffix: str, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """The same ``skysense embed`` run in one process and under ``torchrun`` with 2 ranks; the outputs."""
    weights = tiny_weights(tmp_path)
    src = write_scene(tmp_path / "in.tif", 192, 96)
    args = ["embed", str(src), "--weights", str(weights), "--tile", "64", "--overlap", "32", "--level", "hr3"]
    args += ["--precision", "fp32", "--device", "cpu", "--quiet", "--batch-size", "2", *extra]
    # one thread per process in both runs (torchrun sets it for its ranks): a float sum's order depends on
    # the thread count, the tiles and their batches do not
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"
    done = subprocess.run(
        [sys.executable, "-m", "skysense.cli", *args, "--out", str(one)], env=env, timeout=400
    )
    assert done.returncode == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    done = subprocess.run([*run, "-m", "skysense.cli", *args, "--out", str(two)], env=env, timeout=400)
    assert done.returncode == 0
    return one, two


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_write_what_one_process_writes(tmp_path):
    one, two = embed_one_and_two_ranks(tmp_path, ".tif")
    a, ma = read(one)
    b, mb = read(two)
    assert ma == mb and a.tobytes() == b.tobytes()


def task_checkpoint(tmp_path: Path, task: str, classes: list[str]) -> Path:
    """A ``skysense finetune``-style checkpoint of a random tiny hr model for ``task``."""
    import dataclasses

    from skysense.engine.state import save_checkpoint
    from skysense.tasks.finetune import FinetuneConfig, TaskHeadConfig, TaskModel

    torch.manual_seed(0)
    head = TaskHeadConfig(channels=16)
    model = TaskModel(build_model("tiny", s2=None, s1=None), task, "hr", len(classes), head)
    cfg = FinetuneConfig(task=task, input="hr", head=head)
    meta = {"task": task, "classes": classes, "encoder": model.encoder.cfg.to_dict()}
    meta |= {"head": dataclasses.asdict(head), "input": "hr"}
    path = tmp_path / f"{task}.ckpt"
    save_checkpoint(path, {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "meta": meta})
    return path


def _model_on(ckpt: Path, scenes: dict[str, Path]) -> torch.Tensor:
    from skysense.checkpoint import sensor_spec
    from skysense.tasks.evaluate import load_task_model

    model, _, _ = load_task_model(ckpt)
    spec = sensor_spec("hr", 3)
    batch = {}
    for key, path in scenes.items():
        with rasterio.open(path) as s:
            batch[key] = spec.normalise(torch.from_numpy(s.read().astype(np.float32))[None])
    with torch.no_grad():
        return model(batch)["logits"]


@pytest.mark.slow
def test_predict_segmentation_writes_classes_confidence_and_a_quicklook(tmp_path):
    from skysense.cli import main

    ckpt = task_checkpoint(tmp_path, "segmentation", ["water", "field", "town"])
    src = write_scene(tmp_path / "in.tif", 64, 64)
    out = tmp_path / "seg.tif"
    argv = [
        "predict",
        str(src),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--tile",
        "64",
        "--overlap",
        "0",
    ]
    assert main([*argv, "--quiet", "--device", "cpu", "--precision", "fp32"]) == 0
    got, meta = read(out)
    assert meta["names"] == ("class", "confidence", "valid") and meta["transform"] == ORIGIN
    prob = _model_on(ckpt, {"hr": src}).softmax(1)[0]  # one tile = the whole scene
    np.testing.assert_array_equal(got[0], prob.argmax(0).numpy())
    np.testing.assert_allclose(got[1], prob.max(0).values.numpy(), rtol=1e-4)
    assert (tmp_path / "seg.png").stat().st_size > 0


def test_predict_classification_scores_every_tile(tmp_path):
    from skysense.inference import task_head

    ckpt = task_checkpoint(tmp_path, "classification", ["forest", "port"])
    src = write_scene(tmp_path / "in.tif", 128, 64)
    out = tmp_path / "cls.tif"
    head = task_head(ckpt, 64, precision="fp32")
    infer([src], out, head, model_file=ckpt, tile=64, overlap=64, progress=False)  # overlap: none per tile
    got, meta = read(out)
    assert got.shape == (5, 2, 1) and meta["transform"] == ORIGIN @ Affine.scale(64)
    assert meta["names"] == ("class", "confidence", "score_forest", "score_port", "valid")
    with rasterio.open(src) as s:
        for i in range(2):
            tile = tmp_path / f"t{i}.tif"
            with rasterio.open(tile, "w", **{**s.profile, "height": 64}) as t:
                t.write(s.read(window=((64 * i, 64 * i + 64), (0, 64))))
            p = _model_on(ckpt, {"hr": tile}).softmax(1)[0].numpy()
            np.testing.assert_allclose(got[2:4, i, 0], p, rtol=1e-4)


def test_predict_change_takes_a_before_after_pair_on_one_grid(tmp_path):
    from skysense.inference import task_head

    ckpt = task_checkpoint(tmp_path, "change", ["change"])
    before = write_scene(tmp_path / "a.tif", 64, 64, seed=1)
    after = write_scene(tmp_path / "b.tif", 64, 64, seed=2)
    head = task_head(ckpt, 64, precision="fp32")
    infer([before, after], tmp_path / "c.tif", head, model_file=ckpt, tile=64, overlap=0, progress=False)
    got, meta = read(tmp_path / "c.tif")
    assert meta["names"] == ("change", "probability", "valid")
    p = _model_on(ckpt, {"hr_pre": before, "hr_post": after}).sigmoid()[0, 0].numpy()
    np.testing.assert_allclose(got[1], p, rtol=1e-4)
    np.testing.assert_array_equal(got[0], (got[1] > 0.5).astype(np.float32))
    shifted = write_scene(tmp_path / "s.tif", 64, 64, transform=ORIGIN @ Affine.translation(3, 0))
    with pytest.raises(ValueError, match="differs from"):
        infer([before, shifted], tmp_path / "d.tif", head, model_file=ckpt, progress=False)


# ----------------------------------------------------------------------------- multi-modal stacks
def write_stack(
    folder: Path, crs: str, transform: Affine, h: int, w: int, bands: int, dates: list[str]
) -> Path:
    """One float32 GeoTIFF per date named ``<date>.tif``: smooth values around 1000 (DN-like)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(1)
    for d in dates:
        x = 1000 + 100 * gen.standard_normal((bands, h, w)).astype(np.float32)
        profile = {"driver": "GTiff", "height": h, "width": w, "count": bands, "dtype": "float32"}
        with rasterio.open(folder / f"{d}.tif", "w", crs=crs, transform=transform, **profile) as dst:
            dst.write(x)
    return folder


def _wgs84_stack(tmp_path: Path, hr_px: int, marker: tuple[float, float] | None = None) -> Path:
    """An s2 stack in EPSG:4326 with ~10 m pixels over the hr scene at ORIGIN (and beyond it)."""
    from rasterio.warp import transform_bounds

    size_m = hr_px * 0.5
    left, bottom, right, top = transform_bounds(
        "EPSG:32633",
        "EPSG:4326",
        500_000 - 50,
        4_200_000 - size_m - 50,
        500_000 + size_m + 50,
        4_200_000 + 50,
    )
    res = 1e-4  # degrees: ~11 m north-south, ~9 m east-west here
    h, w = int((top - bottom) / res) + 1, int((right - left) / res) + 1
    folder = write_stack(
        tmp_path / "s2", "EPSG:4326", from_origin(left, top, res, res), h, w, 10, ["2021-06-14", "20210720"]
    )
    if marker is not None:
        for f in folder.iterdir():
            with rasterio.open(f, "r+") as d:
                r, c = d.index(*marker)
                d.write(np.full((10, 1, 1), 9000, np.float32), window=((r, r + 1), (c, c + 1)))
    return folder


def test_stack_on_another_crs_lands_on_the_same_cell(tmp_path):
    from rasterio.warp import transform as warp_points

    from skysense.inference_stack import StackScene

    hr = write_scene(tmp_path / "hr.tif", 256, 256)
    x, y = 500_000 + 40.0, 4_200_000 - 88.0  # a known point: hr pixel (176, 80)
    lon, lat = (v[0] for v in warp_points("EPSG:32633", "EPSG:4326", [x], [y]))
    stack = _wgs84_stack(tmp_path, 256, marker=(lon, lat))
    scene = StackScene(hr, {"s2": stack}, {"hr": 3, "s2": 10})
    try:
        assert (scene.height, scene.width) == (256, 256) and scene.transform == ORIGIN  # s2 covers all of hr
        assert scene.k["s2"] == 16  # ~9 m over 0.5 m: read at 8 m
        sample, invalid = scene.tile(0, 0, 256)
        assert sample["s2"].shape == (2, 10, 16, 16) and not invalid.any()
        assert sample["s2_dates"].tolist() == [18792, 18828]  # 2021-06-14, 2021-07-20 in days since 1970
        for t in range(2):
            r, c = np.unravel_index(sample["s2"][t, 0].argmax(), (16, 16))
            assert abs(r - 176 // 16) <= 1 and abs(c - 80 // 16) <= 1  # bilinear spreads it over a cell
    finally:
        scene.close()
    # an s1 stack in Web Mercator over the west half only: the output is cut to where all overlap
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(
        "EPSG:32633", "EPSG:3857", 500_000, 4_199_872, 500_064, 4_200_000
    )
    s1 = write_stack(
        tmp_path / "s1", "EPSG:3857", from_origin(left - 40, top + 40, 10, 10), 25, 11, 2, ["20210701"]
    )
    scene = StackScene(hr, {"s2": stack, "s1": s1}, {"hr": 3, "s2": 10, "s1": 2})
    try:
        with rasterio.open(s1 / "20210701.tif") as f:
            s1_east = transform_bounds(f.crs, "EPSG:32633", *f.bounds)[2]
        assert scene.transform.c == ORIGIN.c and scene.height == 256  # the s1 file spans all rows
        assert 0 <= s1_east - (scene.transform.c + scene.width * 0.5) < 0.5  # whole hr pixels inside it
        assert scene.width < 128
    finally:
        scene.close()


def test_stack_errors_name_the_problem(tmp_path):
    from skysense.inference_stack import StackScene

    hr = write_scene(tmp_path / "hr.tif", 64, 64)
    far = write_stack(
        tmp_path / "far", "EPSG:32633", from_origin(600_000, 4_100_000, 10, 10), 8, 8, 10, ["20200101"]
    )
    with pytest.raises(ValueError, match="do not overlap"):
        StackScene(hr, {"s2": far}, {"hr": 3, "s2": 10})
    undated = write_stack(tmp_path / "undated", "EPSG:32633", ORIGIN, 8, 8, 10, ["20200101"])
    (undated / "20200101.tif").rename(undated / "s2_june.tif")
    with pytest.raises(ValueError, match="s2_june.tif: no date in the file name"):
        StackScene(hr, {"s2": undated}, {"hr": 3, "s2": 10})
    wrong = write_stack(tmp_path / "wrong", "EPSG:32633", ORIGIN, 8, 8, 4, ["20200101"])
    with pytest.raises(ValueError, match="4 band.*take 10 s2 bands"):
        StackScene(hr, {"s2": wrong}, {"hr": 3, "s2": 10})


@pytest.mark.slow
def test_embed_hr_with_an_s2_stack_on_another_crs(tmp_path):
    from skysense.cli import main

    torch.manual_seed(0)
    model = build_model("tiny")
    weights = save_pretrained(model, tmp_path / "mm.safetensors", default_meta(model.cfg))
    hr = write_scene(tmp_path / "hr.tif", 128, 96)
    stack = _wgs84_stack(tmp_path, 128)
    out = tmp_path / "mm.tif"
    argv = ["embed", str(hr), "--s2", str(stack), "--weights", str(weights), "--out", str(out)]
    assert (
        main([*argv, "--tile", "64", "--overlap", "32", "--quiet", "--device", "cpu", "--precision", "fp32"])
        == 0
    )
    got, meta = read(out)
    assert got.shape == (model.out_dim + 1, 4, 3) and meta["transform"] == ORIGIN @ Affine.scale(32)
    assert np.isfinite(got).all() and (got[-1] == 1).all()
    with rasterio.open(out) as o:
        assert o.tags()["s2_dates"] == "2021-06-14,2021-07-20"
    d = model.cfg.fusion.embed_dim
    assert np.abs(got[d:-1]).max() > 0  # the geo-context half: the tiles' centres give a location


def test_cog_output_holds_the_same_bands(tmp_path):
    src = write_scene(tmp_path / "in.tif", 300, 280)
    kw = {"model_file": src, "tile": 64, "overlap": 32, "progress": False}
    infer([src], tmp_path / "plain.tif", local_head(1), **kw)
    infer([src], tmp_path / "cog.tif", local_head(1), cog=True, **kw)
    with rasterio.open(tmp_path / "cog.tif") as c:
        assert c.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and c.descriptions[-1] == "valid"
    assert read(tmp_path / "cog.tif")[0].tobytes() == read(tmp_path / "plain.tif")[0].tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cog.tif", "in.tif", "plain.tif"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_process_resumes_to_the_same_bytes(tmp_path):
    import signal
    import time

    weights = tiny_weights(tmp_path)
    src = write_scene(tmp_path / "in.tif", 4096, 128)
    args = [
        sys.executable,
        "-m",
        "skysense.cli",
        "embed",
        str(src),
        "--weights",
        str(weights),
        "--tile",
        "128",
    ]
    args += ["--overlap", "32", "--precision", "fp32", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, out = tmp_path / "whole.tif", tmp_path / "out.tif"
    assert subprocess.run([*args, "--out", str(whole)], env=env, timeout=400).returncode == 0
    proc = subprocess.Popen([*args, "--out", str(out)], env=env)
    record = tmp_path / "out.tif.rank0of1.partial.json"
    deadline = time.monotonic() + 300
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no clean-up runs: the state a power cut leaves
    proc.wait()
    assert not out.exists()  # killed before the last of its 43 tile rows
    rerun = subprocess.run([*args, "--out", str(out)], env=env, timeout=400, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert int(rerun.stdout.split(" tiles,")[0].split()[-1]) < 43 * 2  # the recorded rows were skipped
    assert read(out)[0].tobytes() == read(whole)[0].tobytes()


def test_a_full_disk_is_said_plainly(tmp_path, monkeypatch, capsys):
    import errno

    import skysense.inference
    from skysense.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    weights = tiny_weights(tmp_path)
    src = write_scene(tmp_path / "in.tif", 64, 64)
    monkeypatch.setattr(skysense.inference, "infer", full)
    assert main(["embed", str(src), "--weights", str(weights), "--out", str(tmp_path / "o.tif")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun the same command" in err
