import math

import torch

from skysense.config import GeoContextConfig
from skysense.models.geo_context import GeoContext, region_bounds, region_index


def test_region_index_hand_cases():
    lat = torch.tensor([0.0, 89.999, -90.0, 0.0, 0.0, 30.0])
    lon = torch.tensor([0.0, 0.0, 0.0, 180.0, -180.0, -90.0])
    # sin(30 deg) = 0.5 -> row floor(0.75 * 64) = 48; lon -90 -> col floor(90 / 360 * 64) = 16.
    expected = [32 * 64 + 32, 63 * 64 + 32, 0 * 64 + 32, 32 * 64 + 0, 32 * 64 + 0, 48 * 64 + 16]
    assert region_index(lat, lon, 64, 64).tolist() == expected


def test_regions_have_equal_area_and_contain_their_centre():
    lat_bands, lon_bands = 8, 6
    areas = []
    for r in range(lat_bands * lon_bands):
        s, n, w, e = region_bounds(r, lat_bands, lon_bands)
        areas.append((math.sin(math.radians(n)) - math.sin(math.radians(s))) * math.radians(e - w))
        centre = region_index(torch.tensor([(s + n) / 2]), torch.tensor([(w + e) / 2]), lat_bands, lon_bands)
        assert centre.item() == r
    assert max(areas) - min(areas) < 1e-12
    assert abs(sum(areas) - 4 * math.pi) < 1e-9  # the whole unit sphere


def test_prototype_attention_against_hand_computation():
    cfg = GeoContextConfig(lat_bands=1, lon_bands=2, num_prototypes=2, dim=2)
    geo = GeoContext(cfg, in_dim=2).double()
    with torch.no_grad():
        geo.prototypes.copy_(torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 3.0], [1.0, -1.0]]]))
    fused = torch.tensor([0.5, -1.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    out = geo(fused, torch.tensor([0]))
    # scores = q.K^T / sqrt(2) = [0.5, -2] / sqrt(2); softmax; weighted prototypes.
    s = torch.tensor([0.5, -2.0], dtype=torch.float64) / math.sqrt(2)
    w = torch.exp(s) / torch.exp(s).sum()
    ctx = w[0] * torch.tensor([1.0, 0.0]) + w[1] * torch.tensor([0.0, 2.0])
    assert torch.allclose(out[0, :, 0, 0], torch.cat([fused.flatten(), ctx.double()]), atol=1e-12)
    # The other region gives another answer; no location gives zeros.
    assert not torch.allclose(geo(fused, torch.tensor([1])), out)
    assert torch.equal(geo(fused, None)[:, 2:], torch.zeros(1, 2, 1, 1, dtype=torch.float64))
    assert torch.equal(geo(fused, torch.tensor([-1]))[:, 2:], torch.zeros(1, 2, 1, 1, dtype=torch.float64))


def test_query_projection_when_widths_differ():
    geo = GeoContext(GeoContextConfig(lat_bands=2, lon_bands=2, num_prototypes=3, dim=4), in_dim=6)
    out = geo(torch.randn(2, 6, 3, 5), torch.tensor([0, 3]))
    assert out.shape == (2, 10, 3, 5)
    assert geo.out_dim == 10
