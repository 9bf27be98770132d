"""Detection datasets: augmentation geometry, collate, folder pairing, the shared sets' documented counts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from skysense.data.scenes import normalise_hr
from skysense.detection.boxes import obb_to_poly
from skysense.detection.data import (
    DETECTION_SETS,
    DOTA_CLASSES,
    SIMD_CLASSES,
    airport,
    build_detection_set,
    collate,
    hflip,
    random_flip_turn,
    rot90,
    vflip,
)
from skysense.detection.formats import AnnotationError
from tests.data.conftest import data_path

# the PNGs and JPEGs carry no georeferencing: rasterio's notice about it says nothing here
# (dota8's tiles cut ships at their edges: test_shared_set_classes_and_hash_splits checks that warning)
pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:dota8 .* extend past the image edge"),
]

OBB = torch.tensor([[30.0, 12.0, 16.0, 6.0, 0.5], [8.0, 20.0, 4.0, 10.0, -1.2], [40.0, 5.0, 6.0, 6.0, 0.0]])
XYXY = torch.tensor([[2.0, 3.0, 10.0, 7.0], [30.0, 0.0, 50.0, 25.0]])


def point_maps(w: int, h: int) -> dict[str, tuple]:
    """Where each transform sends a point (x, y) of a w x h image: written from the pixel layout of flip
    and rot90 (pixel (r, c) has its centre at (c + 0.5, r + 0.5)), not from the box formulas."""
    return {
        "hflip": (lambda x, y: (w - x, y), lambda im, b: hflip(im, b)),
        "vflip": (lambda x, y: (x, h - y), lambda im, b: vflip(im, b)),
        "rot90": (lambda x, y: (y, w - x), lambda im, b: rot90(im, b, 1)),
    }


def same_corner_set(a: torch.Tensor, b: torch.Tensor) -> bool:
    """(4, 2) corners equal as sets (an oriented box has several equal corner orders)."""
    d = (a[:, None, :] - b[None, :, :]).norm(dim=-1)
    return bool((d.min(dim=1).values < 1e-4).all() and (d.min(dim=0).values < 1e-4).all())


@pytest.mark.parametrize("name", ["hflip", "vflip", "rot90"])
def test_transforms_move_every_corner_like_the_image(name: str) -> None:
    image = torch.zeros(3, 25, 60)
    point, transform = point_maps(60, 25)[name]
    out_image, out = transform(image, OBB)
    assert (out[:, 4] >= -math.pi / 2).all() and (out[:, 4] < math.pi / 2).all()  # canonical
    torch.testing.assert_close(out[:, 2:4], OBB[:, 2:4])  # w stays the side along the angle
    for k in range(len(OBB)):
        moved = torch.tensor([point(float(x), float(y)) for x, y in obb_to_poly(OBB)[k]])
        assert same_corner_set(obb_to_poly(out)[k], moved)
    _, out_h = transform(image, XYXY)
    for k in range(len(XYXY)):
        x1, y1, x2, y2 = XYXY[k].tolist()
        pts = torch.tensor([point(x, y) for x, y in [(x1, y1), (x2, y2)]])
        torch.testing.assert_close(out_h[k], torch.cat([pts.min(0).values, pts.max(0).values]))
    assert out_image.shape[-2:] == ((60, 25) if name == "rot90" else (25, 60))


def test_pixels_follow_the_point_maps() -> None:
    image = torch.zeros(1, 25, 60)
    image[0, 7, 41] = 1.0  # pixel centre (41.5, 7.5)
    for name, (point, transform) in point_maps(60, 25).items():
        out, _ = transform(image, XYXY)
        r, c = (out[0] == 1).nonzero()[0].tolist()
        assert (c + 0.5, r + 0.5) == point(41.5, 7.5), name


def test_four_turns_and_two_flips_give_the_boxes_back() -> None:
    image = torch.rand(3, 25, 60)
    im4, b4 = rot90(image, OBB, 4)
    im2, b2 = hflip(*hflip(image, OBB))
    for im, b in ((im4, b4), (im2, b2)):
        assert torch.equal(im, image)
        for k in range(len(OBB)):
            assert same_corner_set(obb_to_poly(b)[k], obb_to_poly(OBB)[k])


def test_random_augmentation_keeps_boxes_on_their_pixels() -> None:
    h, w = 30, 50
    centres = torch.tensor([[10.5, 5.5], [40.5, 20.5], [25.5, 27.5]])
    boxes = torch.cat([centres, torch.tensor([[6.0, 2.0, 0.3], [3.0, 5.0, -0.7], [4.0, 4.0, 1.0]])], 1)
    image = torch.zeros(3, h, w)
    for k, (x, y) in enumerate(centres.tolist()):
        image[:, int(y), int(x)] = k + 1.0
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out, moved = random_flip_turn(image, boxes)
        seen.add((tuple(out.shape[-2:]), float(out[0].nonzero()[0, 0])))
        for k, (x, y) in enumerate(moved[:, :2].tolist()):
            assert float(out[0, int(y), int(x)]) == k + 1.0
    assert len(seen) > 2  # different draws happened


def test_collate_pads_and_keeps_targets() -> None:
    a = {"hr": torch.ones(3, 20, 30), "boxes": XYXY, "labels": torch.tensor([0, 1])}
    b = {"hr": torch.ones(3, 33, 10), "boxes": XYXY[:0], "labels": torch.tensor([], dtype=torch.int64)}
    for s, name in ((a, "a"), (b, "b")):
        s.update(difficult=torch.zeros(len(s["labels"]), dtype=torch.bool), image_id=name)
    images, targets = collate([a, b], size_divisor=32)
    assert images.shape == (2, 3, 64, 32)
    assert (
        images[0, :, :20, :30].eq(1).all()
        and images[0, :, 20:].eq(0).all()
        and images[0, :, :, 30:].eq(0).all()
    )
    assert [t["size"] for t in targets] == [(20, 30), (33, 10)] and [t["image_id"] for t in targets] == [
        "a",
        "b",
    ]
    assert targets[0]["boxes"] is XYXY and targets[1]["boxes"].shape == (0, 4)


def write_airport(root: Path, labels: dict[str, str], images: tuple[str, ...]) -> Path:
    """A tiny ``aerial_airport`` layout: 40 x 60 images and DOTA label files."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labelTxt").mkdir()
    rng = np.random.default_rng(0)
    for stem in images:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
            root / "train" / "images" / f"{stem}.png"
        )
    for stem, text in labels.items():
        (root / "train" / "labelTxt" / f"{stem}.txt").write_text(text)
    return root


def test_folder_set_negatives_orphans_and_resize(tmp_path: Path) -> None:
    root = write_airport(tmp_path / "a", {"x": "10 4 30 4 30 14 10 14 airplane 0\n"}, ("x", "y"))
    ds = airport("train", root=root)
    assert len(ds) == 2 and ds.counts() == {"airplane": 1}
    x, y = ds[0], ds[1]
    assert x["image_id"] == "x" and x["hr"].shape == (3, 40, 60)
    torch.testing.assert_close(x["boxes"], torch.tensor([[10.0, 4.0, 30.0, 14.0]]))
    assert y["boxes"].shape == (0, 4) and y["labels"].shape == (0,)  # an image without labels: a negative
    raw = torch.from_numpy(np.array(Image.open(root / "train" / "images" / "x.png"))).permute(2, 0, 1)
    torch.testing.assert_close(x["hr"], normalise_hr(raw))
    big = airport("train", root=root, max_size=120, oriented=True)[0]
    assert big["hr"].shape == (3, 80, 120)
    torch.testing.assert_close(big["boxes"], torch.tensor([[40.0, 18.0, 40.0, 20.0, 0.0]]))
    edge = write_airport(tmp_path / "e", {"x": "50 30 70 30 70 45 50 45 airplane 0\n"}, ("x",))
    with pytest.warns(UserWarning, match="airport train: .*line 1 \\(kept whole\\)"):
        past = airport("train", root=edge)  # the polygon is kept; its horizontal box ends at the edge
    torch.testing.assert_close(past[0]["boxes"], torch.tensor([[50.0, 30.0, 60.0, 40.0]]))
    with pytest.raises(AnnotationError, match="without an image: z.txt"):
        airport("train", root=write_airport(tmp_path / "b", {"z": ""}, ("x",)))
    with pytest.raises(AnnotationError, match="unknown class 'jet'"):
        airport("train", root=write_airport(tmp_path / "c", {"x": "10 4 30 4 30 14 10 14 jet 0\n"}, ("x",)))
    with pytest.raises(ValueError, match="unknown detection set 'dior'"):
        build_detection_set("dior", "train")
    with pytest.raises(ValueError, match="no split 'valid'"):
        airport("valid", root=root)


def test_own_dota_folder_reads_with_the_named_classes(tmp_path: Path) -> None:
    lines = {"x": "10 4 30 4 30 14 10 14 ship 0\n40 20 50 20 50 30 40 30 airplane 1\n"}
    root = write_airport(tmp_path / "a", lines, ("x",))  # the airport export is the DOTA layout
    ds = build_detection_set("dota", "train", root=root, classes=["airplane", "ship"])
    x = ds[0]
    assert list(ds.classes) == ["airplane", "ship"] and x["labels"].tolist() == [1, 0]
    assert x["difficult"].tolist() == [False, True]
    torch.testing.assert_close(
        x["boxes"][0], torch.tensor([20.0, 9.0, 20.0, 10.0, 0.0])
    )  # oriented by default
    with pytest.raises(ValueError, match="data.classes"):
        build_detection_set("dota", "train", root=root)
    with pytest.raises(AnnotationError, match="unknown class 'ship'"):
        build_detection_set("dota", "train", root=root, classes=["airplane"])
    with pytest.raises(FileNotFoundError, match="layout"):
        build_detection_set("dota", "test", root=root, classes=["airplane", "ship"])


# ----------------------------------------------------------------------------- the shared sets

COUNTS = {  # (set, split): images, objects, as the folders' README.txt give them
    ("ucas_aod", "trainval"): (33, 248),
    ("ucas_aod", "test"): (16, 127),
    ("dota8", "train"): (4, 125),
    ("dota8", "val"): (4, 8),
    ("airport", "train"): (236, 3408),
    ("airport", "val"): (68, 1018),
    ("airport", "test"): (34, 497),
    ("simd", "trainval"): (103, 657),
    ("simd", "test"): (22, 95),
    ("neon_trees", "test"): (2, 98),
}


@pytest.mark.data
@pytest.mark.parametrize(("name", "split"), list(COUNTS))
def test_shared_sets_parse_with_the_documented_counts(name: str, split: str) -> None:
    data_path("detection")
    ds = build_detection_set(name, split)
    assert (len(ds), sum(ds.counts().values())) == COUNTS[name, split]
    assert not any(a.difficult.any() for _, a in ds.items)  # none of these sets flags difficult objects
    s = ds[len(ds) - 1]
    h, w = s["hr"].shape[-2:]
    assert s["boxes"].shape == (len(s["labels"]), 5 if name in ("ucas_aod", "dota8") else 4)
    centres = s["boxes"][:, :2] if ds.oriented else (s["boxes"][:, :2] + s["boxes"][:, 2:]) / 2
    assert (centres >= 0).all() and (centres[:, 0] <= w).all() and (centres[:, 1] <= h).all()


@pytest.mark.data
def test_shared_set_classes_and_hash_splits() -> None:
    root = data_path("detection")
    ucas = {s: DETECTION_SETS["ucas_aod"](s) for s in ("train", "val", "trainval")}
    assert ucas["trainval"].counts() == {"plane": 150, "car": 98}
    ids = {s: {a.image_id for _, a in d.items} for s, d in ucas.items()}
    assert (
        ids["train"] | ids["val"] == ids["trainval"] and not ids["train"] & ids["val"] and len(ids["val"]) > 2
    )
    assert DETECTION_SETS["ucas_aod"]("test").counts() == {"plane": 69, "car": 58}
    with pytest.warns(UserWarning, match="dota8 train: warnings from 3 label file.*line 53 \\(kept whole\\)"):
        dota_train = DETECTION_SETS["dota8"]("train")
    assert dota_train.counts()["ship"] + DETECTION_SETS["dota8"]("val").counts()["ship"] == 105
    names = yaml.safe_load((root / "dota8" / "dota8.yaml").read_text())["names"]
    assert list(DOTA_CLASSES) == [names[i] for i in range(15)]
    assert list(SIMD_CLASSES) == (root / "simd" / "classes.txt").read_text().split()
    simd = {s: DETECTION_SETS["simd"](s).counts() for s in ("trainval", "test")}
    total = {c: simd["trainval"][c] + simd["test"][c] for c in SIMD_CLASSES}
    assert (total["car"], total["van"], total["airliner"], total["fighter"], total["longvehicle"]) == (
        288,
        86,
        70,
        0,
        5,
    )


@pytest.mark.data
def test_resized_oriented_sample_scales_its_boxes() -> None:
    data_path("detection", "ucas_aod")
    full, small = DETECTION_SETS["ucas_aod"]("test"), DETECTION_SETS["ucas_aod"]("test", max_size=512)
    a, b = full[0], small[0]
    s = 512 / max(a["hr"].shape[-2:])
    assert max(b["hr"].shape[-2:]) == 512
    torch.testing.assert_close(b["boxes"], a["boxes"] * torch.tensor([s, s, s, s, 1.0]))
    assert abs(float(b["hr"].mean()) - float(a["hr"].mean())) < 0.05  # the same picture, smaller
