"""In-memory AID scenes: the hash split, resizing, normalisation, the pre-training sample view."""

import pytest
import torch

from skysense.bands import NORM_STATS
from skysense.data.scenes import PROBE_FRACTIONS, SceneSamples, load_scenes, normalise_hr
from skysense.data.splits import split_of
from tests.data.conftest import data_path, write_tif


def test_split_resize_and_samples(tmp_path):
    """A synthetic AID-style folder: every id lands in its hash split, images are resized exactly."""
    import numpy as np

    for cls, value in (("Beach", 10), ("Forest", 200)):
        (tmp_path / cls).mkdir()
        for i in range(12):
            write_tif(
                tmp_path / cls / f"{cls.lower()}_{i}.tif", np.full((3, 20, 20), value, np.uint8), crs=None
            )
    parts = {s: load_scenes(tmp_path, s, 8, progress=False) for s in ("train", "val", "test")}
    ids = [i for p in parts.values() for i in p.ids]
    assert sorted(ids) == sorted(f"{c}/{c.lower()}_{i}.tif" for c in ("Beach", "Forest") for i in range(12))
    for split, p in parts.items():
        assert all(split_of(i, PROBE_FRACTIONS) == split for i in p.ids)
        assert p.images.dtype == torch.uint8 and p.images.shape[1:] == (3, 8, 8)
        assert p.classes == ["Beach", "Forest"]
        want = torch.tensor([10 if c == 0 else 200 for c in p.labels.tolist()], dtype=torch.uint8)
        assert torch.equal(p.images[:, 0, 0, 0], want)  # constant images stay constant when resized
    sample = SceneSamples(parts["train"])[0]
    assert set(sample) == {"hr"} and sample["hr"].shape == (3, 8, 8)


def test_normalise_hr_uses_the_spec_statistics():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    st = NORM_STATS["hr"]
    want = torch.tensor([(v - m) / s for v, m, s in zip((0, 128, 255), st.mean, st.std)])
    torch.testing.assert_close(normalise_hr(x)[:, 1, 1], want)


@pytest.mark.data
def test_real_aid_split_sizes_are_fixed():
    root = data_path("aid")
    val = load_scenes(root, "val", 16, progress=False)
    assert len(val.ids) == 676 and len(val.classes) == 30  # the split quoted in BENCHMARKS.md
    assert val.images.shape == (676, 3, 16, 16)


def test_16bit_scenes_are_refused_not_clamped(tmp_path):
    import numpy as np
    import pytest

    for cls in ("Beach", "Forest"):
        (tmp_path / cls).mkdir()
        write_tif(tmp_path / cls / "a.tif", np.full((3, 8, 8), 100, np.uint16), crs=None)  # fits 8 bits
    write_tif(tmp_path / "Forest" / "b.tif", np.full((3, 8, 8), 3000, np.uint16), crs=None)
    with pytest.raises(ValueError, match=r"Forest/b.tif: uint16 values up to 3000; scenes are 8-bit"):
        load_scenes(tmp_path, None, 4, progress=False)


def test_empty_class_folder_keeps_its_index(tmp_path):
    import numpy as np
    import pytest

    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        if cls != "b":
            write_tif(tmp_path / cls / "x.tif", np.full((3, 8, 8), 9, np.uint8), crs=None)
    with pytest.warns(UserWarning, match="without images kept as classes.*: b"):
        scenes = load_scenes(tmp_path, None, 4, progress=False)
    assert scenes.classes == ["a", "b", "c"]
    assert dict(zip(scenes.ids, scenes.labels.tolist())) == {"a/x.tif": 0, "c/x.tif": 2}
