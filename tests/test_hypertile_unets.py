"""HyperTile on whole real U-Nets: depth found from token counts, no layer tables."""
import pytest
import torch

from lib_tilesampler.hypertile.geometry import HyperTileConfig, HyperTilePlanner, find_depth, level_grid
from lib_tilesampler.hypertile.install import install_on_modules, self_attention_modules
from unets import run_ldm, run_sdxl, sd1_unet, sd2_unet, sdxl_unet


def true_levels(unet, run, x):
    """For every attn1 call, the real spatial size of the feature map it attends over,
    read from the 4-D input of the block that holds it (independent of the planner)."""
    seen, hooks = [], []
    for name, module in unet.named_modules():
        kind = type(module).__name__
        if kind in ("SpatialTransformer", "Transformer2DModel"):
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, kw: seen.append(tuple((args[0] if args else kw["hidden_states"]).shape[-2:])),
                with_kwargs=True))
    try:
        run(unet, x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def planned_depths(unet, run, x, max_depth):
    planner = HyperTilePlanner(HyperTileConfig(tile_size=64, swap_size=1, max_depth=max_depth), 0)
    calls = []
    original_plan = planner.plan

    def plan(tokens, latent_hw=None):
        calls.append((tokens, find_depth(tokens, planner.latent_hw)))
        return original_plan(tokens, latent_hw)

    planner.plan = plan
    patches = install_on_modules(unet, planner)
    try:
        run(unet, x)
    finally:
        patches.restore()
    return calls, planner


CASES = [
    ("sd1", sd1_unet, run_ldm, (2, 4, 40, 24)),
    ("sd2", sd2_unet, lambda u, x: run_ldm(u, x, context_dim=48), (2, 4, 24, 56)),
    ("sdxl", sdxl_unet, run_sdxl, (2, 4, 24, 40)),
    ("sdxl-refiner", lambda: sdxl_unet(refiner=True), run_sdxl, (2, 4, 48, 32)),
]


@pytest.mark.parametrize("name,build,run,shape", CASES, ids=[c[0] for c in CASES])
def test_depth_is_detected_from_token_counts(name, build, run, shape):
    unet = build()
    x = torch.randn(*shape)
    levels = true_levels(unet, run, x)
    calls, planner = planned_depths(unet, run, x, max_depth=3)
    blocks_per_level = len(calls) // len(levels)
    expected = [next(d for d in range(6) if level_grid(shape[-2:], d) == hw) for hw in levels]
    got = [depth for _, depth in calls]
    # each transformer holds one or more blocks, each calling attn1 once, in order
    assert sorted(set(got)) == sorted(set(expected))
    assert len(calls) == len(self_attention_modules(unet))
    assert None not in got
    if name.startswith("sdxl"):
        assert 0 not in got   # no attention at full latent resolution in SDXL
    assert blocks_per_level >= 1


@pytest.mark.parametrize("name,build,run,shape", CASES, ids=[c[0] for c in CASES])
def test_only_layers_up_to_max_depth_are_tiled(name, build, run, shape):
    unet = build()
    x = torch.randn(*shape)
    calls, planner = planned_depths(unet, run, x, max_depth=1)
    shallow = [t for t, d in calls if d is not None and d <= 1]
    stats = planner.stats
    assert stats.tiled + stats.untiled_no_divisor + stats.whole_by_draw == len(shallow)
    assert planner.stats.skipped_depth == len(calls) - len(shallow)
    assert planner.stats.tiled > 0


@pytest.mark.parametrize("name,build,run,shape", CASES, ids=[c[0] for c in CASES])
def test_whole_unet_with_one_window_equals_untiled(name, build, run, shape):
    unet = build()
    x = torch.randn(*shape)
    expected = run(unet, x)
    planner = HyperTilePlanner(HyperTileConfig(tile_size=2048, max_depth=3), 0)
    patches = install_on_modules(unet, planner)
    try:
        out = run(unet, x)
    finally:
        patches.restore()
    assert planner.stats.tiled == 0
    assert torch.equal(out, expected)


def test_tiled_unet_output_is_finite_and_differs_slightly():
    unet = sd1_unet()
    x = torch.randn(2, 4, 32, 48)
    expected = run_ldm(unet, x)
    patches = install_on_modules(unet, HyperTilePlanner(HyperTileConfig(tile_size=64, max_depth=1), 3))
    try:
        out = run_ldm(unet, x)
    finally:
        patches.restore()
    assert torch.isfinite(out).all()
    assert not torch.equal(out, expected)
    assert torch.equal(run_ldm(unet, x), expected)   # restored: untiled again
