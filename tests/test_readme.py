"""The READMEs' Python examples run as written, from the repository root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skysense.data.root import data_root
from tests.conftest import REPO


def python_block(readme: Path, heading: str) -> str:
    """The first ```python block of the Markdown section ``heading`` (comments in code are no headings)."""
    section, fence, block = None, None, []
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            if fence is None and section and block:
                return "\n".join(block) + "\n"
        elif fence is None and line.startswith("#"):
            section = line.lstrip("#").strip() == heading
        elif section and fence == "python":
            block.append(line)
    raise AssertionError(f"{readme.name}: no python example in a section {heading!r}")


def run(code: str, where: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(cwd)  # paths in the examples are relative to the repository root
    scope: dict = {}
    exec(compile(code, where, "exec"), scope)
    return scope


def test_readme_encoder_example_runs(monkeypatch):
    scope = run(python_block(REPO / "README.md", "Using the encoder"), "README.md", REPO, monkeypatch)
    assert scope["out"]["fused"].shape == (2, 48, 8, 8)


@pytest.mark.data
@pytest.mark.skipif(not (data_root() / "rasters").is_dir(), reason="real data (../shared/data) not found")
def test_readme_embed_your_own_geotiff_runs(monkeypatch):
    if (REPO.parent / "shared" / "data").resolve() != data_root().resolve():
        pytest.skip("the example reads ../shared/data; SKYSENSE_DATA points elsewhere")
    scope = run(python_block(REPO / "README.md", "Embed your own GeoTIFF"), "README.md", REPO, monkeypatch)
    emb, lat, lon, sample = scope["emb"], scope["lat"], scope["lon"], scope["sample"]
    assert emb.shape == (48, 16, 16) and torch.isfinite(emb).all()
    # RGB.byte.tif (UTM 18N) covers about 76.8-79.4 W, 23.4-25.5 N: the vectors' centres lie inside, north
    # to south down the rows and west to east along the columns, 32 px x 300 m = 9.6 km apart
    assert lat.shape == lon.shape == (16, 16)
    assert 23.4 < lat.min() < lat.max() < 25.5 and -79.4 < lon.min() < lon.max() < -76.8
    assert (np.diff(lat, axis=0) < 0).all() and (np.diff(lon, axis=1) > 0).all()
    assert abs(float(np.diff(lat, axis=0).mean()) + 9.6 / 111.0) < 0.005  # degrees of latitude per block
    assert 23.4 < float(sample["lat"]) < 25.5


@pytest.mark.data
@pytest.mark.skipif(not (data_root() / "bigearthnet_mm").is_dir(), reason="real data not found")
def test_data_readme_example_runs(monkeypatch):
    if (REPO.parent / "shared" / "data").resolve() != data_root().resolve():
        pytest.skip("the example reads ../shared/data; SKYSENSE_DATA points elsewhere")
    readme = REPO / "skysense" / "data" / "README.md"
    scope = run(
        python_block(readme, "`skysense.data`: reading real remote-sensing data"),
        "data/README.md",
        REPO,
        monkeypatch,
    )
    assert scope["batch"]["s2"].shape[-3:] == (10, 120, 120)
