"""Fused (MultiDiffusion / Mixture of Diffusers) and moving-seam (SpotDiffusion) denoisers
against the untiled denoiser, on maps whose tiled result is known exactly."""
import random

import pytest
import torch

from denoisers import ROWS, ConvDenoiser, pixel_denoiser, row_t, sd1_cond
from lib_tilesampler.tiling.denoisers import (TileInterrupted, fuse_tiles, fused_denoiser,
                                           moving_seam_denoiser, seam_offset, step_key)
from lib_tilesampler.tiling.plan import plan_tiles, shifted_grid

WRAPPERS = {
    "fused-uniform": lambda d, th, tw, **kw: fused_denoiser(d, th, tw, 4, "uniform", **kw),
    "fused-gaussian": lambda d, th, tw, **kw: fused_denoiser(d, th, tw, 4, "gaussian", **kw),
    "fused-smooth": lambda d, th, tw, **kw: fused_denoiser(d, th, tw, 4, "smooth", **kw),
    "moving": lambda d, th, tw, **kw: moving_seam_denoiser(d, th, tw, seed=7, granularity=1, **kw),
    "moving-wrap": lambda d, th, tw, **kw: moving_seam_denoiser(d, th, tw, seed=7, wrap=True,
                                                                granularity=1, **kw),
}


def inputs(height, width, channels=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, channels, height, width, generator=g).to(dtype)
    return x, row_t(), sd1_cond(hw=(height, width), seed=seed)


@pytest.mark.parametrize("mode", WRAPPERS)
@pytest.mark.parametrize("tile", [(37, 53), (40, 64)])
def test_one_tile_as_large_as_the_latent_is_one_untouched_call(mode, tile):
    x, t, cond = inputs(37, 53)
    conv = ConvDenoiser(size=5)
    out = WRAPPERS[mode](conv, *tile)(x, t, cond)
    assert len(conv.calls) == 1
    cx, ct, ccond = conv.calls[0]
    assert cx is x and ct is t and ccond is cond
    assert torch.equal(out, ConvDenoiser(size=5)(x, t, cond))


@pytest.mark.parametrize("mode", WRAPPERS)
@pytest.mark.parametrize("height,width,tile_h,tile_w", [(37, 53, 16, 16), (24, 72, 16, 24),
                                                        (72, 24, 24, 16), (17, 16, 8, 16)])
def test_per_pixel_denoiser_gives_the_untiled_result(mode, height, width, tile_h, tile_w):
    """Cond/uncond rows with different t, text and inpainting image per row: a mix-up of
    rows or a misplaced crop would change the value of a cell."""
    x, t, cond = inputs(height, width)
    expected = pixel_denoiser(x, t, cond)
    for tile_batch in (1, 3):
        out = WRAPPERS[mode](pixel_denoiser, tile_h, tile_w, tile_batch=tile_batch)(x, t, cond)
        if mode.startswith("moving"):       # every cell computed once, by the same formula
            assert torch.equal(out, expected)
        else:                               # a weighted average of equal values
            torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", WRAPPERS)
def test_result_does_not_depend_on_the_tile_batch_size(mode):
    x, t, cond = inputs(37, 53, dtype=torch.float64)
    conv = ConvDenoiser(size=3)
    n_tiles = 12    # at least as many as any mode makes here: "all tiles in one batch"
    results = [WRAPPERS[mode](conv, 16, 16, tile_batch=b)(x, t, cond) for b in (1, 2, n_tiles)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=0, atol=1e-12)


def interior_weights(tiles, height, width, radius):
    """1 on the cells of a tile farther than ``radius`` from its inner edges, else 0."""
    weights = []
    for t in tiles:
        w = torch.ones(t.h, t.w)
        if t.y > 0:
            w[:radius] = 0
        if t.y + t.h < height:
            w[t.h - radius:] = 0
        if t.x > 0:
            w[:, :radius] = 0
        if t.x + t.w < width:
            w[:, t.w - radius:] = 0
        weights.append(w)
    return weights


@pytest.mark.parametrize("size,overlap", [(3, 2), (5, 4), (5, 7)])
def test_fused_convolution_is_exact_when_weights_vanish_within_its_support_of_inner_edges(size, overlap):
    """MultiDiffusion's fusion (eq. 5) of a zero-padded ``size x size`` convolution.

    A tile's output equals the untiled convolution at every cell farther than the support
    radius r from the tile's inner edges (at the latent's borders both pad with zeros).
    With ``overlap >= 2r`` every cell is that far inside some tile, so weights that are 0
    within r of inner edges (and 1 elsewhere) have a positive sum everywhere, and the fused
    result is the untiled convolution at every cell."""
    conv = ConvDenoiser(size=size)
    assert overlap >= 2 * conv.radius
    x, t, cond = inputs(37, 53, dtype=torch.float64)
    tiles = plan_tiles(37, 53, 16, 16, overlap)
    weights = interior_weights(tiles, 37, 53, conv.radius)
    out = fuse_tiles(conv, x, t, cond, tiles, weights, tile_batch=4)
    torch.testing.assert_close(out, conv(x, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("height,width", [(37, 53), (24, 72), (72, 24)])
def test_fused_uniform_convolution_is_exact_where_no_covering_tile_is_near_its_edge(height, width):
    """With uniform weights every covering tile takes part in the average, so the result
    is exact on the cells that are farther than the radius r from the inner edges of
    *every* tile covering them; the bands within r of an inner edge are averaged with a
    tile whose zero padding cut the kernel, and differ there."""
    conv = ConvDenoiser(size=5)
    r, overlap = conv.radius, 6
    x, t, cond = inputs(height, width, dtype=torch.float64)
    out = fused_denoiser(conv, 16, 16, overlap, "uniform", tile_batch=8)(x, t, cond)
    tiles = plan_tiles(height, width, 16, 16, overlap)
    exact = torch.ones(height, width, dtype=torch.bool)
    for tile, w in zip(tiles, interior_weights(tiles, height, width, r)):
        exact[tile.slices()] &= w.bool()
    error = (out - conv(x, t)).abs().amax(dim=(0, 1))
    assert exact.float().mean() > 0.4
    assert error[exact].max() < 1e-12
    assert error[~exact].max() > 1e-3


def test_fused_output_keeps_the_latent_dtype():
    x, t, cond = inputs(37, 53, dtype=torch.bfloat16)
    out = fused_denoiser(pixel_denoiser, 16, 16, 4)(x, t, cond)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), pixel_denoiser(x, t, cond).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("mode", WRAPPERS)
def test_on_tile_reports_progress_and_should_stop_interrupts_between_batches(mode):
    x, t, cond = inputs(32, 48)
    conv = ConvDenoiser()
    reports = []
    WRAPPERS[mode](conv, 16, 16, tile_batch=2, on_tile=lambda d, n: reports.append((d, n)))(x, t, cond)
    total = reports[-1][1]
    assert total > 2 and reports[-1] == (total, total)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports) and len(conv.calls) == len(reports)
    conv.calls.clear()
    asked = []

    def should_stop():
        asked.append(len(conv.calls))
        return len(conv.calls) == 1

    with pytest.raises(TileInterrupted) as stop:
        WRAPPERS[mode](conv, 16, 16, tile_batch=2, should_stop=should_stop)(x, t, cond)
    assert len(conv.calls) == 1 and asked == [0, 1]
    assert stop.value.done == conv.calls[0][0].shape[0] // ROWS and stop.value.total == total


def test_seam_offset_is_the_same_for_every_call_of_a_step_and_moves_between_steps():
    t_step = torch.full((ROWS,), 3.1415926)
    offsets = {seam_offset(5, t_step[:k], 64, 96, 32, 32) for k in (1, 2, ROWS)}
    assert len(offsets) == 1                                   # split or joint calls agree
    assert seam_offset(5, torch.tensor([3.14159261, 3.14159259]), 64, 96, 32, 32) == offsets.pop()
    sigmas = torch.linspace(14.6, 0.03, 30)
    steps = [seam_offset(5, s.expand(ROWS), 64, 96, 32, 32) for s in sigmas]
    assert len(set(steps)) > 10
    assert all(dy % 8 == 0 and dx % 8 == 0 and 0 <= dy < 32 and 0 <= dx < 32 for dy, dx in steps)
    assert steps != [seam_offset(6, s.expand(ROWS), 64, 96, 32, 32) for s in sigmas]
    assert seam_offset(5, t_step, 32, 96, 32, 32)[0] == 0      # an axis the tile covers whole
    assert step_key(torch.tensor(2.5)) == step_key(torch.tensor([2.5 * (1 + 1e-6), 1.0]))
    assert step_key(torch.tensor(0.0)) == step_key(torch.tensor(1e-9))          # the last step


def test_moving_seams_leave_global_rngs_alone():
    random.seed(3)
    torch.manual_seed(3)
    expected = (random.random(), torch.rand(1))
    random.seed(3)
    torch.manual_seed(3)
    x, t, cond = inputs(32, 48)
    moving_seam_denoiser(pixel_denoiser, 16, 16, seed=1)(x, t, cond)
    assert (random.random(), torch.rand(1)) == expected


def local_columns(x, t, cond):
    """Each cell's column inside the tile it was computed in."""
    return torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x).clone()


@pytest.mark.parametrize("wrap", [False, True])
def test_moving_grid_is_cut_at_the_latent_borders_unless_wrapping(wrap):
    x, t, cond = inputs(16, 64)
    moving = moving_seam_denoiser(local_columns, 16, 16, seed=2, wrap=wrap)
    shifted = 0
    for sigma in torch.linspace(10, 1, 8):
        ts = sigma.expand(ROWS)
        dx = seam_offset(2, ts, 16, 64, 16, 16)[1]
        cols = moving(x, ts, cond)[0, 0, 0]
        starts = set((cols == 0).nonzero().flatten().tolist())
        if not wrap:
            assert starts == {0} | set(range(dx or 16, 64, 16))
            assert cols[-1] == (63 - dx) % 16 if dx else cols[-1] == 15
        else:                     # full tiles, one of them across the right/left border
            assert starts == {(dx + 16 * k) % 64 for k in range(4)}
            assert torch.equal(torch.roll(cols, -dx), torch.arange(64.0) % 16)
        shifted += dx != 0
    assert shifted > 0


def test_moving_tiles_of_partial_size_are_batched_by_size():
    x, t, cond = inputs(40, 40)
    shapes = []

    def record(x, t, cond):
        shapes.append(tuple(x.shape))
        return pixel_denoiser(x, t, cond)

    ts = torch.full((ROWS,), 4.0)
    dy, dx = seam_offset(9, ts, 40, 40, 16, 16)
    moving_seam_denoiser(record, 16, 16, seed=9, tile_batch=100)(x, ts, cond)
    sizes = {t.size for t in shifted_grid(40, 40, 16, 16, dy, dx)}
    assert len(shapes) == len(sizes) and {s[-2:] for s in shapes} == sizes


def test_moving_split_cond_uncond_calls_equal_one_joint_call():
    x, _, cond = inputs(32, 48)
    t = torch.full((ROWS,), 2.5)
    moving = moving_seam_denoiser(local_columns, 16, 16, seed=4)
    joint = moving(x, t, cond)
    half = ROWS // 2
    rows = lambda part: {key: [value[0][part]] for key, value in cond.items()}  # noqa: E731
    split = torch.cat([moving(x[:half], t[:half], rows(slice(0, half))),
                       moving(x[half:], t[half:], rows(slice(half, None)))])
    assert torch.equal(split, joint)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        fused_denoiser(pixel_denoiser, 16, 16, 16)
    with pytest.raises(ValueError, match="weighting"):
        fused_denoiser(pixel_denoiser, 16, 16, 4, "box")
    with pytest.raises(ValueError, match="tile batch"):
        moving_seam_denoiser(pixel_denoiser, 16, 16, seed=0, tile_batch=0)


def karras_sigmas(n: int, sigma_min: float = 0.0292, sigma_max: float = 14.6146, rho: float = 7.0):
    """Karras et al. 2022, eq. (5): the schedule the WebUIs' "Karras" schedule type uses."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@pytest.mark.parametrize("steps", [20, 150])
def test_every_step_of_a_schedule_has_its_own_key_and_float_noise_keeps_it(steps):
    """Moving seams stay reproducible when an adaptive sampler's sigmas carry float noise
    (DPM adaptive with tiles batched or not), and the steps of a schedule stay apart."""
    sigmas = karras_sigmas(steps)
    keys = [step_key(s) for s in sigmas]
    assert len(set(keys)) == steps
    noisy = [step_key(s * (1 + 3e-7 * (-1) ** i)) for i, s in enumerate(sigmas)]
    assert sum(a != b for a, b in zip(keys, noisy)) <= 1
    timesteps = torch.linspace(999, 1, steps).round()                          # DDIM/PLMS/UniPC's t
    shared = steps - len({step_key(t) for t in timesteps})
    assert shared == 0 if steps <= 50 else shared <= steps // 10               # pairs near t = 999

