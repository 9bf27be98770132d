"""Detection datasets (paper Sec. 4.3): the shared detection sets as sample dicts of the package convention.

:class:`DetectionDataset` holds every image's annotation in memory (parsed and checked once, at build
time) and decodes the image on access: ``hr`` (3, H, W) normalised like the encoder's ``hr`` input
(:func:`skysense.data.scenes.normalise_hr`), optionally resized so that its longer side is ``max_size``
(boxes scaled with it), and in training flipped and turned by multiples of 90 degrees with the boxes and
their angles following (:func:`hflip`, :func:`vflip`, :func:`rot90`).

:data:`DETECTION_SETS` maps a set's name to its builder ``build(split, root=None, max_size=None,
augment=False, oriented=None)``, reading ``$SKYSENSE_DATA/detection/<folder>``:

- ``ucas_aod`` (oriented; plane, car): ``test`` is ``splits_resplit/test.txt`` (16 images); the 33 images
  of ``splits_resplit/train.txt`` are ``trainval``, cut into ``val`` (image ids whose
  :func:`~skysense.data.splits.hash_fraction` with seed 0 is below :data:`VAL_FRACTION`) and ``train``.
- ``dota8`` (oriented; DOTA-v1.0's 15 classes): ``train`` and ``val``, 4 tiles each.
- ``airport`` (horizontal; airplane): ``train``, ``val`` (the export's ``valid``), ``test``.
- ``simd`` (horizontal; 15 classes): ``test`` is the official validation list (22 images, the official
  test images are not public); the official training list is ``trainval``, cut into ``val`` and ``train``
  by the same hash rule as UCAS-AOD.
- ``neon_trees`` (horizontal; tree): ``test``, the two NEON crops, every crown one class ``tree``.
- ``dota``: your own folder in the DOTA layout (``root/<split>/{images,labelTxt}``), classes named by you.

``oriented=True`` on a horizontal set gives (N, 5) boxes at angle 0; ``oriented=False`` on an oriented set
gives the corners' bounding rectangles. A label file without its image is an :class:`AnnotationError`; an
image without a label file is a negative (no boxes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from skysense.data.readers import read_image
from skysense.data.root import data_root
from skysense.data.scenes import normalise_hr
from skysense.data.splits import hash_fraction
from skysense.detection.boxes import canonical_obb, hbb_to_obb
from skysense.detection.formats import Annotation, AnnotationError, read_dota, read_voc, read_yolo

VAL_FRACTION = 0.2  # share of a training list carved out as validation (by hash of the image id)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

DOTA_CLASSES = (
    "plane", "ship", "storage tank", "baseball diamond", "tennis court", "basketball court",
    "ground track field", "harbor", "bridge", "large vehicle", "small vehicle", "helicopter", "roundabout",
    "soccer ball field", "swimming pool",
)  # fmt: skip  # dota8.yaml's order (DOTA-v1.0, names with spaces)
SIMD_CLASSES = (
    "car", "truck", "van", "longvehicle", "bus", "airliner", "propeller", "trainer", "chartered", "fighter",
    "other", "stairtruck", "pushbacktruck", "helicopter", "boat",
)  # fmt: skip  # classes.txt's order


# ----------------------------------------------------------------------------- geometry of augmentation


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror left-right: x -> W - x; an oriented box's angle a -> -a. image (C, H, W), boxes (N, 4|5)."""
    w = image.shape[-1]
    b = boxes.clone()
    if boxes.shape[-1] == 4:
        b[:, 0], b[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    else:
        b[:, 0], b[:, 4] = w - boxes[:, 0], -boxes[:, 4]
        b = canonical_obb(b)
    return image.flip(-1), b


def vflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror top-bottom: y -> H - y; an oriented box's angle a -> -a."""
    h = image.shape[-2]
    b = boxes.clone()
    if boxes.shape[-1] == 4:
        b[:, 1], b[:, 3] = h - boxes[:, 3], h - boxes[:, 1]
    else:
        b[:, 1], b[:, 4] = h - boxes[:, 1], -boxes[:, 4]
        b = canonical_obb(b)
    return image.flip(-2), b


def rot90(image: Tensor, boxes: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """Turn ``k`` quarter turns anticlockwise on screen (``torch.rot90`` over (H, W)).

    One turn maps a point (x, y) of a W-wide image to (y, W - x), and an oriented box's angle a to
    a - pi/2 (directions turn with the image; ``w`` stays the side along the angle).
    """
    for _ in range(k % 4):
        w = image.shape[-1]
        b = boxes.clone()
        if boxes.shape[-1] == 4:
            b[:, 0], b[:, 1], b[:, 2], b[:, 3] = boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]
        else:
            b[:, 0], b[:, 1], b[:, 4] = boxes[:, 1], w - boxes[:, 0], boxes[:, 4] - math.pi / 2
            b = canonical_obb(b)
        image, boxes = torch.rot90(image, 1, dims=(-2, -1)), b
    return image, boxes


def random_flip_turn(image: Tensor, boxes: Tensor, turns: bool = True) -> tuple[Tensor, Tensor]:
    """Training augmentation: each flip with probability 1/2, then 0-3 quarter turns (torch's RNG)."""
    if bool(torch.rand(()) < 0.5):
        image, boxes = hflip(image, boxes)
    if bool(torch.rand(()) < 0.5):
        image, boxes = vflip(image, boxes)
    if turns:
        image, boxes = rot90(image, boxes, int(torch.randint(4, ())))
    return image, boxes


# ----------------------------------------------------------------------------- dataset


class DetectionDataset(Sequence[dict[str, Any]]):
    """Sample dicts ``{"hr", "boxes", "labels", "difficult", "image_id"}`` of (image, annotation) pairs.

    ``oriented`` picks (N, 5) or (N, 4) boxes whatever the annotation's own kind; ``max_size`` resizes
    every image (up or down) so that its longer side has that many pixels; ``augment`` adds random flips
    and quarter turns (``turns=False``: flips only).
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, Annotation]],
        classes: Sequence[str],
        oriented: bool,
        max_size: int | None = None,
        augment: bool = False,
        turns: bool = True,
    ) -> None:
        self.items = list(items)
        self.classes = list(classes)
        self.oriented, self.max_size, self.augment, self.turns = oriented, max_size, augment, turns
        self.labels = [
            ann.labels(self.classes) for _, ann in self.items
        ]  # unknown names fail here, not mid-epoch
        self.boxes = [self._boxes(ann) for _, ann in self.items]

    def _boxes(self, ann: Annotation) -> Tensor:
        if self.oriented:
            return ann.boxes if ann.oriented else hbb_to_obb(ann.boxes)
        xyxy = ann.horizontal()
        if ann.size is not None:  # an oriented label's envelope may pass the edge: horizontal boxes end there
            h, w = ann.size
            xyxy = xyxy.clamp(min=torch.zeros(4), max=torch.tensor([w, h, w, h], dtype=xyxy.dtype))
        return xyxy

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        path, ann = self.items[i]
        x = torch.from_numpy(read_image(path).data[:3])  # (3, H, W) 0-255; an alpha band is dropped
        if float(x.max()) > 255:
            raise ValueError(
                f"{path}: values up to {float(x.max()):g}; detection images must be 8-bit (0-255)"
            )
        boxes = self.boxes[i].clone()
        if self.max_size:
            x, boxes = _resize(x, boxes, self.max_size)
        x = normalise_hr(x)
        if self.augment:
            x, boxes = random_flip_turn(x, boxes, self.turns)
        return {
            "hr": x.contiguous(),
            "boxes": boxes,
            "labels": self.labels[i].clone(),
            "difficult": ann.difficult.clone(),
            "image_id": ann.image_id,
        }

    def counts(self) -> dict[str, int]:
        """Objects per class name (difficult ones included)."""
        n = torch.zeros(len(self.classes), dtype=torch.int64)
        for y in self.labels:
            n += torch.bincount(y, minlength=len(self.classes))
        return dict(zip(self.classes, n.tolist()))


def _resize(x: Tensor, boxes: Tensor, max_size: int) -> tuple[Tensor, Tensor]:
    """Resize (3, H, W) so that max(H, W) = max_size (antialiased bilinear) and scale the boxes with it.

    Horizontal boxes take each axis' exact factor; oriented boxes the one factor ``max_size / max(H, W)``
    (the rounded output size differs from it by under half a pixel).
    """
    h, w = x.shape[-2:]
    s = max_size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    x = F.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    if boxes.shape[-1] == 4:
        boxes = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    else:
        boxes = boxes * torch.tensor([s, s, s, s, 1.0])
    return x, boxes


def collate(batch: Sequence[dict[str, Any]], size_divisor: int = 1) -> tuple[Tensor, list[dict[str, Any]]]:
    """Samples -> (images (B, 3, H, W) zero-padded at the right and bottom to the largest image, rounded up
    to a multiple of ``size_divisor``; targets: per image ``boxes``, ``labels``, ``difficult``,
    ``image_id`` and ``size`` (h, w) before padding). Zero is the normalised mean colour."""
    hs = [s["hr"].shape[-2] for s in batch]
    ws = [s["hr"].shape[-1] for s in batch]
    H = -(-max(hs) // size_divisor) * size_divisor
    W = -(-max(ws) // size_divisor) * size_divisor
    images = batch[0]["hr"].new_zeros(len(batch), batch[0]["hr"].shape[0], H, W)
    targets = []
    for k, s in enumerate(batch):
        images[k, :, : hs[k], : ws[k]] = s["hr"]
        t = {key: s[key] for key in ("boxes", "labels", "difficult", "image_id")}
        targets.append(dict(t, size=(hs[k], ws[k])))
    return images, targets


# ----------------------------------------------------------------------------- the shared sets


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def pair_labels(images: Sequence[Path], label_dir: Path, suffix: str) -> dict[Path, Path | None]:
    """Each image's label file ``label_dir/<stem><suffix>`` or None (a negative); a label file without an
    image is an :class:`AnnotationError`."""
    stems = {p.stem for p in images}
    orphans = sorted(p.name for p in label_dir.glob(f"*{suffix}") if p.stem not in stems)
    if orphans:
        raise AnnotationError(
            f"{label_dir}: label file(s) without an image: {', '.join(orphans[:5])}"
            + (" ..." if len(orphans) > 5 else "")
            + "; put the image beside the others or remove the label"
        )
    return {
        p: (label_dir / f"{p.stem}{suffix}" if (label_dir / f"{p.stem}{suffix}").exists() else None)
        for p in images
    }


def list_images(folder: Path) -> list[Path]:
    """The images of a folder, sorted by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: set SKYSENSE_DATA to the shared data folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_all(
    what: str, pairs: dict[Path, Path | None], read: Callable[[Path, tuple[int, int]], Annotation]
) -> list[tuple[Path, Annotation]]:
    """Annotations of (image, label) pairs, the readers' edge warnings summed up in one warning."""
    items = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for image, label in pairs.items():
            size = image_size(image)
            if label is None:
                empty = Annotation(
                    image.stem, torch.zeros(0, 4), [], torch.zeros(0, dtype=torch.bool), size=size
                )
                items.append((image, empty))
            else:
                items.append((image, read(label, size)))
    if caught:
        first = caught[0].message
        warnings.warn(f"{what}: warnings from {len(caught)} label file(s), the first: {first}", stacklevel=3)
    return items


def _hash_cut(images: list[Path], split: str) -> list[Path]:
    """``train``/``val`` of a training list by the hash of the image ids (:data:`VAL_FRACTION` to ``val``)."""
    if split == "trainval":
        return images
    return [p for p in images if (hash_fraction(p.stem) < VAL_FRACTION) == (split == "val")]


def _listed(folder: Path, list_file: str) -> list[Path]:
    return [folder / line.strip() for line in (folder / list_file).read_text().splitlines() if line.strip()]


def _check_split(name: str, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
        raise ValueError(f"{name} has no split {split!r}: use one of {list(splits)}")


def _folder(root: str | Path | None, name: str) -> Path:
    return Path(root) if root else data_root() / "detection" / name


def ucas_aod(
    split: str, root: str | Path | None = None, oriented: bool | None = None, **kw: Any
) -> DetectionDataset:
    """UCAS-AOD (UCAS50 subset), oriented planes and cars; see the module docstring for the splits."""
    _check_split("ucas_aod", split, ("train", "val", "test", "trainval"))
    folder, classes = _folder(root, "ucas_aod"), ("plane", "car")
    pairs: dict[Path, Path | None] = {}
    for part in ("train", "val"):
        pairs.update(pair_labels(list_images(folder / "images" / part), folder / "labels" / part, ".txt"))
    listed = _listed(folder, "splits_resplit/test.txt" if split == "test" else "splits_resplit/train.txt")
    chosen = listed if split == "test" else _hash_cut(listed, split)
    items = _read_all(
        f"ucas_aod {split}", {p: pairs[p] for p in chosen}, lambda f, s: read_yolo(f, s, classes, True)
    )
    return DetectionDataset(items, classes, True if oriented is None else oriented, **kw)


def dota8(
    split: str, root: str | Path | None = None, oriented: bool | None = None, **kw: Any
) -> DetectionDataset:
    """DOTA8: 8 DOTA-v1.0 tiles with oriented boxes, ``train`` and ``val``."""
    _check_split("dota8", split, ("train", "val"))
    folder = _folder(root, "dota8")
    pairs = pair_labels(list_images(folder / "images" / split), folder / "labels" / split, ".txt")
    items = _read_all(f"dota8 {split}", pairs, lambda f, s: read_yolo(f, s, DOTA_CLASSES, True))
    return DetectionDataset(items, DOTA_CLASSES, True if oriented is None else oriented, **kw)


def airport(
    split: str, root: str | Path | None = None, oriented: bool | None = None, **kw: Any
) -> DetectionDataset:
    """Aerial Airport: airplanes, horizontal boxes written as DOTA polygons; ``train``, ``val``, ``test``."""
    _check_split("airport", split, ("train", "val", "test"))
    folder = _folder(root, "aerial_airport") / ("valid" if split == "val" else split)
    pairs = pair_labels(list_images(folder / "images"), folder / "labelTxt", ".txt")
    items = _read_all(f"airport {split}", pairs, lambda f, s: read_dota(f, s, ("airplane",)))
    return DetectionDataset(items, ("airplane",), bool(oriented), **kw)


def simd(
    split: str, root: str | Path | None = None, oriented: bool | None = None, **kw: Any
) -> DetectionDataset:
    """SIMD subset: 15 vehicle, aircraft and boat classes, horizontal; see the module docstring for splits."""
    _check_split("simd", split, ("train", "val", "test", "trainval"))
    folder = _folder(root, "simd")
    pairs = pair_labels(list_images(folder / "images"), folder / "labels", ".txt")
    listed = _listed(folder, "val.txt" if split == "test" else "train.txt")
    chosen = listed if split == "test" else _hash_cut(listed, split)
    items = _read_all(
        f"simd {split}", {p: pairs[p] for p in chosen}, lambda f, s: read_yolo(f, s, SIMD_CLASSES)
    )
    return DetectionDataset(items, SIMD_CLASSES, bool(oriented), **kw)


def neon_trees(
    split: str, root: str | Path | None = None, oriented: bool | None = None, **kw: Any
) -> DetectionDataset:
    """DeepForest's two NEON crops (tree crowns, horizontal) as one class ``tree``: ``test`` only."""
    _check_split("neon_trees", split, ("test",))
    folder = _folder(root, "neon_trees")
    pairs = pair_labels(list_images(folder), folder, ".xml")

    def read(f: Path, s: tuple[int, int]) -> Annotation:
        ann = read_voc(f, s)
        ann.names = ["tree"] * len(ann.names)  # Tree / Dead / Alive: one crown class
        return ann

    return DetectionDataset(_read_all("neon_trees", pairs, read), ("tree",), bool(oriented), **kw)


def dota(
    split: str,
    root: str | Path | None = None,
    oriented: bool | None = None,
    classes: Sequence[str] = (),
    **kw: Any,
) -> DetectionDataset:
    """Your own data in the DOTA layout: ``root/<split>/images/*`` and ``root/<split>/labelTxt/<stem>.txt``
    (4 corners, class, difficulty) for the splits ``train``, ``val``, ``test``; ``classes`` names all."""
    if root is None or not classes:
        raise ValueError(
            "dataset dota reads your own folder: set data.root=FOLDER and data.classes=[a,b,...]"
        )
    folder = Path(root) / split
    if not (folder / "images").is_dir():
        raise FileNotFoundError(
            f"{folder / 'images'}: no such folder (layout: <root>/<split>/images, labelTxt)"
        )
    pairs = pair_labels(list_images(folder / "images"), folder / "labelTxt", ".txt")
    names = tuple(classes)
    items = _read_all(f"dota {split}", pairs, lambda f, s: read_dota(f, s, names))
    return DetectionDataset(items, names, True if oriented is None else oriented, **kw)


DETECTION_SETS: dict[str, Callable[..., DetectionDataset]] = {
    "dota": dota,
    "ucas_aod": ucas_aod,
    "dota8": dota8,
    "airport": airport,
    "simd": simd,
    "neon_trees": neon_trees,
}


def build_detection_set(name: str, split: str, **kw: Any) -> DetectionDataset:
    """``DETECTION_SETS[name](split, **kw)`` with a clear error for an unknown name."""
    if name not in DETECTION_SETS:
        raise ValueError(f"unknown detection set {name!r}: use one of {sorted(DETECTION_SETS)}")
    return DETECTION_SETS[name](split, **kw)
