"""Datasets of every layout: real data (skipped where absent) and folders written here."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
import torch

from skysense.data import (
    BigEarthNetMM,
    ChangeDetection,
    EOPatchDataset,
    PixelTimeSeries,
    SceneClassification,
    Segmentation,
    Sen1Floods11,
    collate,
)
from skysense.data.datasets import BIGEARTHNET_LABELS

from .conftest import data_path, write_tif


def days(y: int, m: int, d: int) -> int:
    return (dt.date(y, m, d) - dt.date(1970, 1, 1)).days


def test_days_helper_matches_hard_coded() -> None:
    assert days(2019, 9, 17) == 18156 and days(2019, 9, 18) == 18157


# ----------------------------------------------------------------------------- scene classification


@pytest.mark.data
def test_aid_real() -> None:
    root = data_path("aid")
    ds = SceneClassification(root)
    assert len(ds) == 6949 and len(ds.classes) == 30 and ds.classes[0] == "Airport"
    s = ds[0]
    assert (
        s["meta"]["id"] == "Airport/airport_1.jpg"
        and s["label"].item() == 0
        and s["label"].dtype == torch.int64
    )
    assert s["hr"].shape == (3, 150, 150) and s["hr"].dtype == torch.float32 and "lat" not in s
    with rasterio.open(root / "Airport" / "airport_1.jpg") as f:
        np.testing.assert_array_equal(s["hr"].numpy(), f.read().astype(np.float32))
    sizes = [len(SceneClassification(root, split=sp)) for sp in ("train", "val", "test")]
    assert sizes == [5521, 683, 745]  # hash split of the 6,949 ids, fixed forever


def test_scene_folder_written(tmp_path) -> None:
    for cls in ("b_water", "a_forest"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            write_tif(
                tmp_path / cls / f"{i}.tif",
                np.full((3, 8, 8), i, np.uint8),
                crs="EPSG:4326",
                origin=(10, 50),
                res=0.01,
            )
    ds = SceneClassification(tmp_path)
    assert ds.classes == ["a_forest", "b_water"] and len(ds) == 6
    s = ds[3]
    assert s["label"].item() == 1 and s["meta"]["class"] == "b_water"
    assert s["lon"].item() == pytest.approx(10.04) and s["lat"].item() == pytest.approx(49.96)
    assert s["lon"].dtype == torch.float64 and s["lon"].shape == ()


def test_empty_and_wrong_folders(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no samples found"):
        SceneClassification(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SceneClassification(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="A: missing folder"):
        ChangeDetection(tmp_path / "empty")


# ----------------------------------------------------------------------------- BigEarthNet-MM


@pytest.mark.data
def test_bigearthnet_real_pairs() -> None:
    root = data_path("bigearthnet_mm")
    ds = BigEarthNetMM(root)
    assert len(ds) == 3 and sorted(ds.unpaired_s1) == [
        f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_{i}" for i in (39, 40, 41)
    ]
    i = ds.ids.index("S2A_MSIL2A_20170617T113321_4_55")
    s = ds[i]
    assert s["s2"].shape == (1, 10, 120, 120) and s["s1"].shape == (1, 2, 120, 120)
    assert s["s2_dates"].tolist() == [days(2017, 6, 17)] and s["s1_dates"].tolist() == [days(2017, 6, 17)]
    assert s["label"].dtype == torch.float32 and s["label"].shape == (43,)
    assert torch.nonzero(s["label"]).flatten().tolist() == [BIGEARTHNET_LABELS.index("Pastures")]
    s1dir = root / "s1" / "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55"
    with rasterio.open(s1dir / f"{s1dir.name}_VH.tif") as f:
        np.testing.assert_array_equal(s["s1"][0, 1].numpy(), f.read(1))
    # lon/lat of the patch centre (UTM 29N, 605400 E, 5833440 N) ~ 7.46 W, 52.63 N (Ireland)
    assert s["lon"].item() == pytest.approx(-7.46, abs=0.02) and s["lat"].item() == pytest.approx(
        52.63, abs=0.02
    )
    only_s1 = BigEarthNetMM(root, modalities=("s1",))
    assert len(only_s1) == 6 and "s2" not in only_s1[0]
    batch = collate([ds[0], ds[1]])
    assert batch["s2"].shape == (2, 1, 10, 120, 120) and batch["s2_mask"].tolist() == [[False], [False]]


def test_bigearthnet_bad_pairing(tmp_path) -> None:
    root = tmp_path / "ben"
    s2 = root / "s2" / "P2"
    s1 = root / "s1" / "P1"
    s2.mkdir(parents=True)
    s1.mkdir(parents=True)
    meta = {"labels": ["Pastures"], "acquisition_date": "2017-06-17 11:33:21"}
    (s2 / "P2_labels_metadata.json").write_text(json.dumps(meta))
    bands = {
        "B02": 10,
        "B03": 10,
        "B04": 10,
        "B05": 20,
        "B06": 20,
        "B07": 20,
        "B08": 10,
        "B8A": 20,
        "B11": 20,
        "B12": 20,
    }
    for band, res in bands.items():
        n = 120 // (res // 10)
        write_tif(s2 / f"P2_{band}.tif", np.full((1, n, n), 1000, np.uint16), res=res)
    s1meta = {
        "labels": ["Pastures"],
        "acquisition_time": "2017-06-17T06:47:24",
        "corresponding_s2_patch": "P2",
    }
    (s1 / "P1_labels_metadata.json").write_text(json.dumps(s1meta))
    for pol in ("VV", "VH"):
        write_tif(s1 / f"P1_{pol}.tif", np.full((1, 120, 120), -12, np.float32), origin=(500600, 5000000))
    ds = BigEarthNetMM(root)
    with pytest.raises(ValueError, match="extent mismatch in S1-to-S2 pairing of P2"):
        ds[0]
    (s2 / "P2_B12.tif").unlink()
    with pytest.raises(ValueError, match=r"P2: missing Sentinel-2 band\(s\) B12"):
        BigEarthNetMM(root, modalities=("s2",))[0]
    (s2 / "P2_labels_metadata.json").write_text(
        json.dumps({"labels": ["Not a class"], "acquisition_date": "x"})
    )
    with pytest.raises(ValueError, match="unknown BigEarthNet label"):
        BigEarthNetMM(root, modalities=("s1",))[0] and BigEarthNetMM(root, modalities=("s2",))[0]


# ----------------------------------------------------------------------------- Sen1Floods11


@pytest.mark.data
def test_sen1floods11_real() -> None:
    root = data_path("sen1floods11")
    ds = Sen1Floods11(root)
    s = ds[0]
    assert s["meta"]["id"] == "Spain_7370579"
    assert s["s1_dates"].tolist() == [18156] and s["s2_dates"].tolist() == [18157]  # 2019-09-17, 2019-09-18
    assert s["s1"].shape == (1, 2, 512, 512) and s["s2"].shape == (1, 10, 512, 512)
    with rasterio.open(root / "Labels" / "Spain_7370579_LabelHand.tif") as f:
        lab = f.read(1)
    np.testing.assert_array_equal(s["target"].numpy(), lab.astype(np.int64))  # -1 kept as ignore
    assert s["target"].dtype == torch.int64 and (s["target"] == -1).sum() == (lab == -1).sum()
    with rasterio.open(root / "S2" / "Spain_7370579_S2Hand.tif") as f:
        np.testing.assert_array_equal(s["s2_invalid"][0].numpy(), (f.read() == 0).any(axis=0))
    with rasterio.open(root / "S1" / "Spain_7370579_S1Hand.tif") as f:  # EPSG:4326: centre of the bounds
        b = f.bounds
    assert s["lon"].item() == pytest.approx((b.left + b.right) / 2) and s["lat"].item() == pytest.approx(
        (b.bottom + b.top) / 2
    )
    assert 36.0 < s["lat"].item() < 43.0 and -9.5 < s["lon"].item() < 3.5  # Spain


def test_sen1floods11_errors(tmp_path) -> None:
    (tmp_path / "S1").mkdir()
    with pytest.raises(FileNotFoundError, match="Metadata"):
        Sen1Floods11(tmp_path)
    feats = {
        "features": [{"properties": {"location": "Spain", "s1_date": "2019/13/45", "s2_date": "2019/09/18"}}]
    }
    (tmp_path / "Sen1Floods11_Metadata.geojson").write_text(json.dumps(feats))
    write_tif(
        tmp_path / "S1" / "Spain_1_S1Hand.tif",
        np.full((2, 4, 4), -10, np.float32),
        crs="EPSG:4326",
        res=1e-4,
        origin=(-6, 40),
    )
    ds = Sen1Floods11(tmp_path, modalities=("s1",))
    with pytest.raises(ValueError, match="Sen1Floods11_Metadata.geojson.*no parsable date"):
        ds[0]


# ----------------------------------------------------------------------------- EOPatch


@pytest.mark.data
def test_eopatch_real() -> None:
    root = data_path("eolearn_slovenia", "TestEOPatch")
    ds = EOPatchDataset(root.parent)
    s = ds[0]
    assert s["s2"].shape == (68, 1, 101, 100) and s["s2_dates"].shape == (68,)
    assert s["s2_dates"][0].item() == days(2015, 7, 11) and s["s2_dates"][-1].item() == days(2017, 12, 22)
    clm = np.load(root / "mask" / "CLM.npy")[..., 0]
    is_data = np.load(root / "mask" / "IS_DATA.npy")[..., 0]
    np.testing.assert_array_equal(s["s2_invalid"].numpy(), (clm == 1) | (is_data == 0))
    ndvi = np.load(root / "data" / "NDVI.npy")[..., 0]
    valid = ~s["s2_invalid"].numpy()
    np.testing.assert_array_equal(s["s2"][:, 0].numpy()[valid], ndvi[valid])
    assert (s["s2"][:, 0].numpy()[~valid] == 0).all()
    lulc = np.load(root / "mask_timeless" / "LULC.npy")[..., 0].astype(np.int64)
    np.testing.assert_array_equal(s["target"].numpy(), np.where(lulc == 0, -1, lulc))
    assert ds.classes is not None and ds.classes[1] == "cultivated land"
    assert 45.8 < s["lat"].item() < 46.0 and 14.5 < s["lon"].item() < 14.6  # central Slovenia
    tiles = EOPatchDataset(root, patch_size=32)
    assert len(tiles) == 9 and tiles.ids[4] == "TestEOPatch/1_1"
    t = tiles[4]
    np.testing.assert_array_equal(t["s2"].numpy(), s["s2"][..., 32:64, 32:64].numpy())
    # the tile's transform starts 32 pixels right and down of the patch's
    full_t, tile_t = s["meta"]["s2"]["transform"], t["meta"]["s2"]["transform"]
    assert tile_t[2] == pytest.approx(full_t[2] + 32 * full_t[0]) and tile_t[5] == pytest.approx(
        full_t[5] + 32 * full_t[4]
    )


# ----------------------------------------------------------------------------- change detection


@pytest.mark.data
def test_levir_real() -> None:
    root = data_path("levir_cd")
    ds = ChangeDetection(root)
    assert len(ds) == 11 and ds.unlabelled == ["test_113_0256.png"]
    s = ds[ds.ids.index("test_2_0000_0000")]
    with rasterio.open(root / "label" / "test_2_0000_0000.png") as f:
        np.testing.assert_array_equal(s["target"].numpy(), (f.read(1) == 255).astype(np.int64))
    assert s["hr_pre"].shape == (3, 256, 256) and s["hr_post"].shape == (3, 256, 256)
    unl = ChangeDetection(root, require_label=False)
    with pytest.raises(ValueError, match=r"test_113_0256.png is \(384, 768\).*\(383, 768\)"):
        unl[unl.ids.index("test_113_0256")]


def test_change_label_values(tmp_path) -> None:
    for sub in ("A", "B", "label"):
        (tmp_path / sub).mkdir()
        write_tif(
            tmp_path / sub / "x.tif", np.full((3 if sub != "label" else 1, 4, 4), 7, np.uint8), crs=None
        )
    with pytest.raises(ValueError, match=r"label/x.tif: change label values \[7.0\]"):
        ChangeDetection(tmp_path)[0]


# ----------------------------------------------------------------------------- segmentation


@pytest.mark.data
def test_segmentation_real() -> None:
    loveda = Segmentation(data_path("seg_samples", "loveda"), reduce_zero_label=True)
    potsdam = Segmentation(data_path("seg_samples", "potsdam"))
    assert len(loveda) == 3 and len(potsdam) == 1
    s = loveda[loveda.ids.index("0")]
    with rasterio.open(data_path("seg_samples", "loveda", "ann_dir", "0.png")) as f:
        ann = f.read(1).astype(np.int64)
    np.testing.assert_array_equal(s["target"].numpy(), np.where(ann == 0, -1, ann - 1))
    p = potsdam[0]
    assert p["hr"].shape == (3, 512, 512) and sorted(p["target"].unique().tolist()) == [0, 1, 2, 3, 4, 5]


def test_segmentation_mismatch(tmp_path) -> None:
    (tmp_path / "img_dir").mkdir()
    (tmp_path / "ann_dir").mkdir()
    write_tif(tmp_path / "img_dir" / "a.tif", np.ones((3, 8, 8), np.uint8), crs=None)
    write_tif(tmp_path / "ann_dir" / "a.tif", np.ones((1, 4, 4), np.uint8), crs=None)
    with pytest.raises(ValueError, match=r"ann_dir/a.tif is \(4, 4\)"):
        Segmentation(tmp_path)[0]


# ----------------------------------------------------------------------------- sits .npz


@pytest.mark.data
def test_sits_real() -> None:
    f = data_path("sits", "samples_l8_rondonia_2bands.npz")
    ds = PixelTimeSeries(f)
    z = np.load(f)
    assert len(ds) == 160 and ds.classes == sorted(set(z["labels"].tolist()))
    s = ds[7]
    assert s["s2"].shape == (25, 2, 1, 1)
    np.testing.assert_array_equal(s["s2"][:, :, 0, 0].numpy(), z["X"][7])
    assert s["s2_dates"][0].item() == days(2018, 7, 12) and s["s2_dates"][-1].item() == days(2019, 7, 28)
    assert s["lon"].item() == z["lon"][7] and s["lat"].item() == z["lat"][7]
    assert ds.classes[s["label"].item()] == z["labels"][7]
    assert s["meta"]["s2"]["bands"] == ["EVI", "NDVI"] and s["meta"]["dates_exact"] is False


def test_sits_nan_and_bad_files(tmp_path) -> None:
    x = np.ones((2, 3, 1), np.float32)
    x[1, 2, 0] = np.nan
    good = dict(X=x, labels=np.array(["a", "b"]), bands=np.array(["NDVI"]), lon=np.zeros(2), lat=np.zeros(2),
                dates_first_sample=np.array(["2020-01-01", "2020-01-17", "2020-02-02"]))  # fmt: skip
    np.savez(tmp_path / "ok.npz", **good)
    s = PixelTimeSeries(tmp_path / "ok.npz")[1]
    assert s["s2_invalid"][:, 0, 0].tolist() == [False, False, True] and s["s2"][2].item() == 0
    np.savez(tmp_path / "nolabels.npz", **{k: v for k, v in good.items() if k != "labels"})
    with pytest.raises(ValueError, match=r"nolabels.npz: missing array\(s\) \['labels'\]"):
        PixelTimeSeries(tmp_path / "nolabels.npz")
    np.savez(
        tmp_path / "baddate.npz", **{**good, "dates_first_sample": np.array(["2020-01-01", "soon", "x"])}
    )
    with pytest.raises(ValueError, match="baddate.npz dates_first_sample"):
        PixelTimeSeries(tmp_path / "baddate.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:200])
    with pytest.raises(ValueError, match="trunc.npz"):
        PixelTimeSeries(tmp_path / "trunc.npz")


def test_all_nan_chip_and_bad_dates_named(tmp_path) -> None:
    (tmp_path / "S1").mkdir()
    feats = {
        "features": [{"properties": {"location": "Spain", "s1_date": "1900/01/01", "s2_date": "2019/09/18"}}]
    }
    (tmp_path / "Sen1Floods11_Metadata.geojson").write_text(json.dumps(feats))
    f = write_tif(
        tmp_path / "S1" / "Spain_1_S1Hand.tif", np.full((2, 4, 4), np.nan, np.float32), nodata=np.nan
    )
    (tmp_path / "Labels").mkdir()
    write_tif(tmp_path / "Labels" / "Spain_1_LabelHand.tif", np.zeros((1, 4, 4), np.int16))
    ds = Sen1Floods11(tmp_path, modalities=("s1",))
    with pytest.raises(ValueError, match="Spain_1_S1Hand.tif.*every pixel is nodata/NaN"):
        ds[0]
    write_tif(f, np.full((2, 4, 4), -10.0, np.float32), nodata=np.nan)
    with pytest.raises(ValueError, match="s1_dates of sample Spain_1 out of range"):
        ds[0]


def test_eopatch_all_clouds(tmp_path) -> None:
    p = tmp_path / "patch"
    (p / "data").mkdir(parents=True)
    (p / "mask").mkdir()
    np.save(p / "data" / "NDVI.npy", np.ones((2, 3, 3, 1), np.float32))
    np.save(p / "mask" / "CLM.npy", np.ones((2, 3, 3, 1), np.uint8))
    (p / "timestamps.json").write_text(json.dumps(["2020-01-01", "2020-01-06"]))
    with pytest.raises(ValueError, match="NDVI.npy: every pixel of every date is cloud"):
        EOPatchDataset(p, label=None)[0]


def _seg_folder(tmp_path, labels: dict[str, np.ndarray], images: tuple[str, ...]):
    (tmp_path / "img_dir").mkdir()
    (tmp_path / "ann_dir").mkdir()
    for name in images:
        write_tif(tmp_path / "img_dir" / f"{name}.tif", np.ones((3, 4, 4), np.uint8), crs=None)
    for name, lab in labels.items():
        write_tif(tmp_path / "ann_dir" / f"{name}.tif", lab[None].astype(np.uint8), crs=None)
    return tmp_path


def test_segmentation_labels_outside_the_classes(tmp_path) -> None:
    lab = np.array([[0, 1, 2, 255], [7, 1, 1, 1], [0, 0, 9, 0], [1, 1, 1, 1]])
    root = _seg_folder(tmp_path, {"a": lab}, ("a",))
    with pytest.raises(ValueError, match=r"ann_dir/a.tif: label value\(s\) \[7, 9\] outside the 3 classes"):
        Segmentation(root, num_classes=3)[0]
    t = Segmentation(root, num_classes=3, ignore_values=(255, 7, 9))[0]["target"]
    assert t[1, 0] == -1 and t[2, 2] == -1 and t[0, 3] == -1 and t[0, 2] == 2
    # reduce_zero_label: raw values are named as they are in the file
    with pytest.raises(ValueError, match=r"\[7, 9\] outside the 6 classes"):
        Segmentation(root, num_classes=6, reduce_zero_label=True)[0]
    assert Segmentation(root)[0]["target"][1, 0] == 7  # no num_classes: values as stored


def test_segmentation_image_without_label_is_named(tmp_path) -> None:
    root = _seg_folder(tmp_path, {"a": np.zeros((4, 4))}, ("a", "b"))
    with pytest.raises(ValueError, match=r"1 image\(s\) without a label map .*: b; .*skip_unlabelled=True"):
        Segmentation(root)
    ds = Segmentation(root, skip_unlabelled=True)
    assert ds.ids == ["a"] and ds.unlabelled == ["b"]


def test_change_pair_without_label_is_named(tmp_path) -> None:
    for sub in ("A", "B", "label"):
        (tmp_path / sub).mkdir()
    for name in ("x.tif", "y.tif"):
        for sub in ("A", "B"):
            write_tif(tmp_path / sub / name, np.ones((3, 4, 4), np.uint8), crs=None)
    write_tif(tmp_path / "label" / "x.tif", np.zeros((1, 4, 4), np.uint8), crs=None)
    with pytest.warns(UserWarning, match=r"1 pair\(s\) without a label skipped \(y.tif\)"):
        ds = ChangeDetection(tmp_path)
    assert ds.ids == ["x"]
    assert ChangeDetection(tmp_path, require_label=False).ids == ["x", "y"]
