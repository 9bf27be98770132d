"""Views: the geometry convention matches torch.flip/rot90, and corresponding cells cover the same ground."""

import itertools

import torch
import torch.nn.functional as F

from skysense.pretrain.views import (
    Geometry,
    ViewConfig,
    apply_view,
    correspondence,
    make_views,
    subsample_dates,
    tile_to_view,
    view_to_tile,
)


def geom(box, hflip=False, vflip=False, rot=0) -> Geometry:
    return Geometry(
        torch.tensor([box], dtype=torch.float64),
        torch.tensor([hflip]),
        torch.tensor([vflip]),
        torch.tensor([rot]),
    )


def coord_tile(px: int) -> torch.Tensor:
    """(1, 2, px, px): channel 0 = y, channel 1 = x of each pixel centre in tile fractions."""
    f = (torch.arange(px, dtype=torch.float64) + 0.5) / px
    yy, xx = torch.meshgrid(f, f, indexing="ij")
    return torch.stack([yy, xx])[None]


def test_full_box_matches_torch_flip_and_rot90():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    for hf, vf, k in itertools.product([False, True], [False, True], range(4)):
        want = x
        if hf:
            want = torch.flip(want, [-1])
        if vf:
            want = torch.flip(want, [-2])
        want = torch.rot90(want, k, (-2, -1))
        got = apply_view({"hr": x}, geom((0, 0, 1, 1), hf, vf, k), ViewConfig())["hr"]
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_crop_box_is_a_pixel_window_in_every_modality():
    hr, s2 = torch.randn(1, 3, 16, 16), torch.randn(1, 2, 4, 8, 8)
    s2_invalid = torch.rand(1, 2, 8, 8) > 0.5
    g = geom((0.5, 0.25, 1.0, 0.75))  # rows 8..16 / 4..8, cols 4..12 / 2..6
    g.dates["s2"] = torch.tensor([[1]])
    sample = {"hr": hr, "s2": s2, "s2_invalid": s2_invalid, "label": 3}
    out = apply_view(sample, g, ViewConfig(size={"hr": 8, "s2": 4}))
    torch.testing.assert_close(out["hr"], hr[..., 8:16, 4:12])
    torch.testing.assert_close(out["s2"], s2[:, 1:2, :, 4:8, 2:6])
    assert torch.equal(out["s2_invalid"], s2_invalid[:, 1:2, 4:8, 2:6])
    assert out["s2_mask"].tolist() == [[False]]
    assert "label" not in out  # only model inputs travel


def test_tile_to_view_inverts_view_to_tile():
    r, c = torch.rand(1, 50, dtype=torch.float64), torch.rand(1, 50, dtype=torch.float64)
    for hf, vf, k in itertools.product([False, True], [False, True], range(4)):
        g = geom((0.1, 0.2, 0.7, 0.9), hf, vf, k)
        r2, c2 = tile_to_view(g, *view_to_tile(g, r, c))
        torch.testing.assert_close(r2, r)
        torch.testing.assert_close(c2, c)


def test_correspondence_hand_case():
    # u: whole tile, 2x2 cells. v: left half, flipped horizontally, 2x2 cells.
    # u cell (0,0) centre (0.25, 0.25) -> v frac (0.25, 1 - 0.5) = (0.25, 0.5) -> v cell (0, 1) = 1.
    # u cell (1,0) centre (0.75, 0.25) -> v cell (1, 1) = 3; u cells in the right half are not in v.
    idx, valid = correspondence(geom((0, 0, 1, 1)), geom((0, 0, 1, 0.5), hflip=True), (2, 2), (2, 2))
    assert valid.tolist() == [[True, False, True, False]]
    assert idx[valid].tolist() == [1, 3]
    # a quarter turn: v = whole tile rotated once; u cell (0, 0) (top-left ground) appears bottom-left.
    idx, valid = correspondence(geom((0, 0, 1, 1)), geom((0, 0, 1, 1), rot=1), (2, 2), (2, 2))
    assert valid.all() and idx.tolist() == [[2, 0, 3, 1]]


def test_corresponding_cells_cover_the_same_ground():
    """Carry ground coordinates through the real augmentation; the u cell centre must lie inside v's cell."""
    gen = torch.Generator().manual_seed(3)
    px, out, grid_u, grid_v = 64, {"hr": 16}, (4, 4), (8, 8)
    cfg = ViewConfig(scale=(0.3, 0.9), size=out)
    b = 64
    tile = coord_tile(px).expand(b, -1, -1, -1)
    u, v = make_views({"hr": tile}, cfg, gen)
    assert u.geom.rot.unique().numel() == 4 and u.geom.hflip.any() and u.geom.vflip.any()
    idx, valid = correspondence(u.geom, v.geom, grid_u, grid_v)
    assert valid.any() and (~valid).any()
    # ground centre of each u cell: average the coordinate image over the cell (it is linear).
    cu = F.adaptive_avg_pool2d(u.sample["hr"], grid_u).flatten(2)  # (B, 2, 16)
    # ground footprint of each v cell: min/max of its pixel centres, widened by half an output pixel.
    cells_v = F.unfold(v.sample["hr"], 2, stride=2).reshape(b, 2, 4, 64)
    half = 0.5 * (v.geom.box[:, 2:] - v.geom.box[:, :2]).max(1).values / 16  # (B,)
    lo = cells_v.amin(2) - half[:, None, None] - 1e-9
    hi = cells_v.amax(2) + half[:, None, None] + 1e-9
    for bi in range(b):
        for i in valid[bi].nonzero().flatten().tolist():
            j = int(idx[bi, i])
            p = cu[bi, :, i]
            assert (lo[bi, :, j] <= p).all() and (p <= hi[bi, :, j]).all(), (bi, i, j)
        # invalid cells: their ground centre lies outside v's crop box.
        y0, x0, y1, x1 = v.geom.box[bi].tolist()
        for i in (~valid[bi]).nonzero().flatten().tolist():
            y, x = cu[bi, :, i].tolist()
            assert not (y0 <= y < y1 and x0 <= x < x1), (bi, i)


def test_subsample_dates_skips_padding_and_keeps_order():
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[False] * 6 + [True] * 2, [False, True, False, True, False, True, True, True]])
    idx = subsample_dates(mask, 3, gen)
    assert idx.shape == (2, 3)
    assert not mask.gather(1, idx).any()
    assert (idx.diff(dim=1) > 0).all()
    idx = subsample_dates(mask, 20, gen)  # fewer valid than asked: T' = most valid (6), sample 1 padded
    assert idx.shape == (2, 6) and mask.gather(1, idx).sum(1).tolist() == [0, 3]


def test_views_share_dates_and_jitter_is_bounded():
    gen = torch.Generator().manual_seed(1)
    s2 = torch.randn(2, 5, 10, 8, 8)
    days = torch.arange(10).reshape(2, 5) * 30 + 18000
    cfg = ViewConfig(num_dates={"s2": 3}, date_jitter=4)
    u, v = make_views({"s2": s2, "s2_dates": days}, cfg, gen)
    assert torch.equal(u.geom.dates["s2"], v.geom.dates["s2"])
    base = days.gather(1, u.geom.dates["s2"])
    for w in (u, v):
        assert w.sample["s2"].shape == (2, 3, 10, 8, 8)
        assert (w.sample["s2_dates"] - base).abs().max() <= 4
    u, v = make_views({"s2": s2, "s2_dates": days}, ViewConfig(num_dates={"s2": 3}, shared_dates=False), gen)
    assert u.sample["s2"].shape == v.sample["s2"].shape


def test_photometric_grayscale_and_blur_by_hand():
    from skysense.pretrain.views import ViewConfig, photometric

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 12, 12, generator=g, dtype=torch.float64)
    assert photometric(x, ViewConfig(), g) is x  # off: untouched
    gray = photometric(x, ViewConfig(hr_grayscale=1.0), g)
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(gray[:, c], lum)
    const = torch.full((2, 3, 12, 12), 1.5, dtype=torch.float64)
    torch.testing.assert_close(
        photometric(const, ViewConfig(hr_blur=1.0), g), const
    )  # reflect pad: flat stays flat
    blurred = photometric(x, ViewConfig(hr_blur=1.0), g)
    assert (blurred.std((-2, -1)) < x.std((-2, -1))).all()  # a low-pass filter
    torch.testing.assert_close(blurred.mean(), x.mean(), atol=0.05, rtol=0)
