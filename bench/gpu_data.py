"""The AID train split as bench/gpu_budget.sh carries it to a lent GPU: held at 128 px as the pre-training
sees it (``load_scenes``), re-encoded as JPEG (quality 85: ~23 MB, with rasterio's wheel inside the
device's 64-MiB transfer) in .gpudata/aid/<class>/<id> (git-ignored; never committed).

    python bench/gpu_data.py  # then: SKYSENSE_DATA=.gpudata load_scenes(..., "train", 128) has the same ids
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` finds `bench`
from bench import common  # noqa: E402
from skysense.data.scenes import load_scenes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    scenes = load_scenes(common.data_folder("aid"), "train", 128)
    out = REPO / ".gpudata/aid"
    for image, name in zip(scenes.images, scenes.ids):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, format="JPEG", quality=85)
    print(f"{len(scenes.ids)} scenes in {out}")


if __name__ == "__main__":
    main()
