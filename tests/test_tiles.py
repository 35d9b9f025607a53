"""Tile plans, blend weights and the seam metric."""
import math

import pytest
import torch

from lib_tilesampler.tiling.plan import (BLEND_KINDS, Tile, axis_span, batch_tiles, blend_weights,
                                   plan_tiles, plan_work, seam_score, shifted_grid, weight_sum)

SIZES = [(37, 53), (24, 72), (72, 24), (64, 64), (5, 100), (9, 9)]
TILES = [(16, 16, 4), (16, 24, 8), (8, 8, 0), (32, 16, 7), (12, 12, 11)]


def coverage(tiles, height, width):
    count = torch.zeros(height, width, dtype=torch.int64)
    for t in tiles:
        count[t.slices()] += 1
    return count


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("tile_h,tile_w,overlap", TILES)
@pytest.mark.parametrize("align", [1, 8])
def test_plan_covers_every_cell_with_equal_tiles_inside_the_latent(height, width, tile_h, tile_w, overlap, align):
    tiles = plan_tiles(height, width, tile_h, tile_w, overlap, align)
    assert (coverage(tiles, height, width) >= 1).all()
    assert len({t.size for t in tiles}) == 1
    th, tw = tiles[0].size
    assert th == height or (th <= tile_h and (th % align == 0 or th == tile_h <= overlap + align))
    assert tw == width or (tw <= tile_w and (tw % align == 0 or tw == tile_w <= overlap + align))
    assert all(t.y >= 0 and t.x >= 0 and t.y + t.h <= height and t.x + t.w <= width for t in tiles)
    assert len(set(tiles)) == len(tiles)


@pytest.mark.parametrize("size", [5, 16, 17, 37, 53, 72, 100, 256])
@pytest.mark.parametrize("tile,overlap", [(16, 4), (16, 0), (8, 7), (24, 8), (12, 11), (128, 16)])
@pytest.mark.parametrize("align", [1, 8])
def test_origins_start_at_zero_end_flush_and_overlap_at_least_as_asked(size, tile, overlap, align):
    side, origins = axis_span(size, tile, overlap, align)
    assert origins[0] == 0 and origins[-1] + side == size
    assert origins == sorted(set(origins))
    assert all(b - a <= side - overlap for a, b in zip(origins, origins[1:]))   # real overlap >= asked
    if len(origins) > 1:
        n = len(origins)
        cap = tile - tile % align if tile - tile % align > overlap else tile
        assert n == math.ceil((size - overlap) / (cap - overlap))    # as few as tiles <= cap allow
        assert side <= cap and (side % align == 0 or side == tile)
        assert n * (side - align) - (n - 1) * overlap < size         # no wider than needed
        steps = [b - a for a, b in zip(origins, origins[1:])]
        assert max(steps) - min(steps) <= 1                                      # spread evenly
    else:
        assert side == size


def test_tiles_shrink_to_the_least_side_that_keeps_the_overlap():
    # 2048 px from 1024 px tiles with 128 px of overlap, in latent cells: 3 x 3 tiles of 96
    tiles = plan_tiles(256, 256, 128, 128, 16, 8)
    assert {t.size for t in tiles} == {(96, 96)} and len(tiles) == 9
    assert sorted({t.x for t in tiles}) == [0, 80, 160]                # overlaps of 16
    assert plan_work(tiles) == pytest.approx((288 / 256) ** 2)        # 1.27, not 2.25
    assert plan_work(plan_tiles(256, 256, 256, 256, 16, 8)) == 1.0
    # 1024 x 768 px from a 512 px tile with 64 px of overlap: sides rounded up to 8 cells
    assert {t.size for t in plan_tiles(96, 128, 64, 64, 8, 8)} == {(56, 48)}
    # a tile that is not a multiple of the alignment counts as the multiple below it ...
    assert {t.size for t in plan_tiles(40, 40, 12, 12, 2, 8)} == {(8, 8)}
    assert {t.size for t in plan_tiles(256, 256, 125, 125, 16, 8)} == {(96, 96)}   # 1000 px
    # ... unless that is not larger than the overlap
    assert {t.size for t in plan_tiles(40, 40, 12, 12, 9, 8)} == {(12, 12)}


def test_overlap_not_smaller_than_the_tile_is_refused():
    with pytest.raises(ValueError, match="overlap .* smaller than the tile"):
        plan_tiles(64, 64, 16, 32, 16)
    with pytest.raises(ValueError, match="at least 0"):
        plan_tiles(64, 64, 16, 16, -1)


def test_latent_smaller_than_the_tile_is_one_tile_of_its_size():
    assert plan_tiles(37, 53, 64, 64, 8) == [Tile(0, 0, 37, 53)]
    assert {t.size for t in plan_tiles(10, 53, 16, 16, 4)} == {(10, 14)}   # 5 tiles along x


@pytest.mark.parametrize("kind", BLEND_KINDS)
@pytest.mark.parametrize("height,width,tile_h,tile_w,overlap",
                         [(37, 53, 16, 16, 4), (24, 72, 16, 16, 8), (72, 24, 24, 8, 3),
                          (37, 37, 16, 16, 12), (40, 40, 8, 8, 0), (9, 9, 16, 16, 2)])
def test_weights_are_positive_where_a_tile_covers_and_sum_to_one(kind, height, width, tile_h, tile_w, overlap):
    tiles = plan_tiles(height, width, tile_h, tile_w, overlap)
    weights = blend_weights(tiles, height, width, kind, overlap)
    assert [tuple(w.shape) for w in weights] == [t.size for t in tiles]
    assert all(w.dtype == torch.float32 and (w > 0).all() for w in weights)
    torch.testing.assert_close(weight_sum(tiles, weights, height, width),
                               torch.ones(height, width, dtype=torch.float64), rtol=0, atol=1e-6)


def test_smooth_weights_crossfade_both_ways_over_the_overlap_and_are_flat_elsewhere():
    tiles = plan_tiles(16, 40, 16, 16, 4)            # one row of tiles: x origins 0, 12, 24
    assert [t.x for t in tiles] == [0, 12, 24]
    a, b, c = blend_weights(tiles, 16, 40, "smooth", 4)
    overlap = 16 - 12
    fade_out, fade_in = a[0, -overlap:], b[0, :overlap]
    assert (fade_out.diff() < 0).all() and (fade_in.diff() > 0).all()   # not a one-sided feather
    torch.testing.assert_close(fade_out.flip(0), fade_in)               # mirrored raised cosine
    torch.testing.assert_close(fade_out + fade_in, torch.ones(overlap))
    assert (a[:, :-overlap] == 1).all() and (c[:, overlap:] == 1).all()  # flat at the borders
    assert (b[:, overlap:-overlap] == 1).all()
    assert (a.diff(dim=0) == 0).all()                                   # no ramp along y: no neighbour


def test_gaussian_weights_peak_at_the_tile_centre():
    tiles = [Tile(y, x, 16, 16) for y in (0, 8, 16) for x in (0, 8, 16)]
    raw = blend_weights([tiles[0]], 16, 16, "gaussian")[0]    # one tile alone: normalised to 1
    assert (raw == 1).all()
    weights = blend_weights(tiles, 32, 32, "gaussian", 8)
    centre = weights[4]                                           # the middle tile, at (8, 8)
    assert tiles[4] == Tile(8, 8, 16, 16)
    assert centre[7:9, 7:9].min() > 0.99 and centre[0, 0] < 1e-3


def test_a_plan_with_less_overlap_than_asked_is_refused_for_smooth_weights():
    tiles = plan_tiles(40, 40, 16, 16, 2)
    with pytest.raises(ValueError, match="less than the requested"):
        blend_weights(tiles, 40, 40, "smooth", 8)
    with pytest.raises(ValueError, match="blend kind"):
        blend_weights(tiles, 40, 40, "feather", 2)


def test_shifted_grid_tiles_do_not_overlap_and_cover_every_cell():
    for dy, dx in [(0, 0), (3, 5), (7, 1), (15, 15)]:
        tiles = shifted_grid(37, 53, 16, 16, dy, dx)
        assert (coverage(tiles, 37, 53) == 1).all()
        cuts_y = sorted({t.y for t in tiles})
        assert cuts_y == sorted({0} | set(range(dy or 16, 37, 16)))   # cuts at dy + 16k
        assert all(t.h <= 16 and t.w <= 16 for t in tiles)


def test_batch_tiles_groups_by_size_and_keeps_plan_order():
    tiles = shifted_grid(20, 20, 8, 8, 4, 4)                 # sizes 4 and 8 mixed
    batches = batch_tiles(tiles, 3)
    assert all(len({t.size for t in b}) == 1 and 1 <= len(b) <= 3 for b in batches)
    assert sorted((t for b in batches for t in b), key=lambda t: (t.y, t.x)) == tiles
    for size in {t.size for t in tiles}:
        assert [t for b in batches for t in b if t.size == size] == [t for t in tiles if t.size == size]


def smooth_field(h, w, channels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    phase = torch.rand(channels, 1, 1, generator=g) * 6
    base = torch.sin(yy / 5 + phase) + torch.cos(xx / 7 - phase)
    return (base + 0.05 * torch.randn(channels, h, w, generator=g)).unsqueeze(0)


def test_seam_score_is_about_one_without_seams_and_high_with_a_step_at_each_border():
    tiles = plan_tiles(48, 64, 16, 16, 0)
    field = smooth_field(48, 64)
    assert 0.8 < seam_score(field, tiles) < 1.2
    noise = torch.randn(2, 4, 48, 64, generator=torch.Generator().manual_seed(1))
    assert 0.9 < seam_score(noise, tiles) < 1.1
    stepped = field.clone()
    for i, t in enumerate(tiles):                           # each tile shifted by its own constant
        stepped[(..., *t.slices())] += 0.3 * ((i * 7) % 5 - 2)
    assert seam_score(stepped, tiles) > 2


def test_seam_score_scales_tiles_to_a_decoded_image():
    tiles = plan_tiles(12, 16, 8, 8, 0)
    latent = smooth_field(12, 16)
    latent[..., :, 8:] += 1.0                                # a step at the one vertical border
    image = torch.nn.functional.interpolate(latent, scale_factor=8, mode="nearest")
    assert seam_score(image, tiles) > 3
    with pytest.raises(ValueError, match="whole multiple"):
        seam_score(image[..., :-1], tiles)
    assert seam_score(latent, [Tile(0, 0, 12, 16)]) == 1.0  # no inner border
