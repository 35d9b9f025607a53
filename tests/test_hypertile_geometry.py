import random

import pytest
import torch

from lib_tilesampler.hypertile.geometry import (HyperTileConfig, HyperTilePlanner, Windows, choose_windows,
                                       find_depth, level_grid, merge_tokens, split_tokens, step_key,
                                       window_count_options)


@pytest.mark.parametrize("h,w,nh,nw", [(4, 8, 2, 2), (6, 10, 3, 2), (13, 21, 1, 3), (96, 64, 4, 2),
                                       (9, 15, 3, 5), (8, 128, 2, 8)])
def test_every_window_is_a_contiguous_rectangle_of_the_latent(h, w, nh, nw):
    win = Windows(h, w, nh, nw)
    ids = torch.arange(h * w).reshape(1, h * w, 1)  # token id = row * w + col (row-major)
    windows = split_tokens(ids, win)
    th, tw = h // nh, w // nw
    assert windows.shape == (nh * nw, th * tw, 1)
    for k in range(nh * nw):
        rows = (windows[k, :, 0] // w).reshape(th, tw)
        cols = (windows[k, :, 0] % w).reshape(th, tw)
        i, j = divmod(k, nw)
        assert torch.equal(rows, torch.arange(i * th, (i + 1) * th).view(th, 1).expand(th, tw))
        assert torch.equal(cols, torch.arange(j * tw, (j + 1) * tw).view(1, tw).expand(th, tw))
    assert torch.equal(merge_tokens(windows, win), ids)


def test_level_grid_rounds_up_like_a_stride_two_convolution():
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    for hw in [(13, 21), (96, 64), (75, 57), (1, 9)]:
        x = torch.zeros(1, 1, *hw)
        for depth in range(4):
            assert level_grid(hw, depth) == tuple(x.shape[-2:])
            x = conv(x)


@pytest.mark.parametrize("hw", [(64, 64), (96, 64), (13, 21), (75, 57), (128, 72)])
def test_find_depth_matches_token_counts(hw):
    for depth in range(4):
        gh, gw = level_grid(hw, depth)
        assert find_depth(gh * gw, hw) == depth
    assert find_depth(7, (64, 64)) is None


def test_window_count_options_are_the_largest_admissible_counts():
    assert window_count_options(64, 32, 2) == [2, 1]
    assert window_count_options(96, 16, 3) == [6, 4, 3]
    assert window_count_options(37, 8, 2) == [1]            # prime side: stays whole
    assert window_count_options(12, 32, 2) == [1]           # smaller than a window
    for side, min_window in [(96, 16), (100, 7), (63, 9)]:
        for n in window_count_options(side, min_window, 10):
            assert side % n == 0 and side // n >= min(min_window, side)


def draws(planner, steps, calls_per_step=1):
    out = []
    for step in steps:
        for _ in range(calls_per_step):        # the host may split a step into several calls
            planner.observe_latent((1, 4, 96, 128), torch.tensor([step, step]))
            out.append((planner.plan(96 * 128), planner.plan(48 * 64)))
    return out[::calls_per_step]


def test_windows_depend_on_the_step_and_depth_not_on_how_many_calls_ran():
    config = HyperTileConfig(tile_size=128, swap_size=3, max_depth=1)
    steps = [14.6146, 9.7, 6.1, 3.3, 1.2, 0.4]
    one_call = draws(HyperTilePlanner(config), steps)
    two_calls = draws(HyperTilePlanner(config), steps, calls_per_step=2)   # cond, uncond apart
    assert one_call == two_calls
    backwards = draws(HyperTilePlanner(config), steps[::-1])[::-1]        # in another order
    assert backwards == one_call
    assert len(set(one_call)) > 1, "the windows never move between steps"


def test_passes_are_told_apart_by_the_salt():
    config = HyperTileConfig(tile_size=128, swap_size=3, max_depth=1)
    steps = [float(s) for s in range(20)]
    assert draws(HyperTilePlanner(config, 0), steps) == draws(HyperTilePlanner(config, 0), steps)
    assert draws(HyperTilePlanner(config, 1), steps) != draws(HyperTilePlanner(config, 0), steps)


def test_step_key_takes_the_largest_value_of_the_rows():
    assert step_key(torch.tensor([1.0, 3.0, 2.0])) == step_key(3.0) != step_key(2.0)
    assert step_key(torch.tensor(7.123456)) == step_key(7.123457) and step_key(None) is None
    assert step_key(torch.tensor([])) is None


def test_private_rng_leaves_global_random_alone():
    random.seed(5)
    expected = random.random()
    random.seed(5)
    planner = HyperTilePlanner(HyperTileConfig(swap_size=4), 99)
    for step in range(10):
        planner.observe_latent((96, 96), float(step))
        planner.plan(96 * 96)
    assert random.random() == expected


def test_odd_and_prime_sizes_stay_untiled_and_are_counted():
    planner = HyperTilePlanner(HyperTileConfig(tile_size=64, swap_size=2, max_depth=3), 0)
    planner.observe_latent((37, 41))          # prime sides: no divisor
    assert planner.plan(37 * 41) is None
    assert planner.stats.untiled_no_divisor == 1
    planner.observe_latent((75, 57))          # odd but composite
    win = planner.plan(75 * 57)
    assert win is not None and 75 % win.nh == 0 and 57 % win.nw == 0
    assert find_depth(38 * 29, (75, 57)) == 1  # level 1 of 75x57 is 38x29
    for _ in range(10):
        win = planner.plan(38 * 29)
        assert win is None or (win.h, win.w, win.nw) == (38, 29, 1) and win.nh == 2


def test_max_depth_limits_tiling():
    planner = HyperTilePlanner(HyperTileConfig(tile_size=64, max_depth=0), 0)
    planner.observe_latent((128, 128))
    assert planner.plan(128 * 128) is not None
    assert planner.plan(64 * 64) is None
    assert planner.stats.skipped_depth == 1


def test_scale_depth_doubles_the_window_per_level():
    cfg = HyperTileConfig(tile_size=256, scale_depth=True)
    assert [cfg.min_window(d) for d in range(3)] == [32, 64, 128]
    assert HyperTileConfig(tile_size=256).min_window(2) == 32


def test_choose_windows_uses_the_given_rng():
    a = [choose_windows(96, 96, 8, 4, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_a_drawn_single_window_is_not_counted_as_no_divisor():
    planner = HyperTilePlanner(HyperTileConfig(tile_size=256, swap_size=2), 0)
    for step in range(40):                      # options per axis: 2 or 1 windows
        planner.observe_latent((64, 64), float(step))
        planner.plan(64 * 64)
    stats = planner.stats
    assert stats.untiled_no_divisor == 0 and stats.whole_by_draw > 0 and stats.tiled > 0
    assert stats.tiled + stats.whole_by_draw == 40
