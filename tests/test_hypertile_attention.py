"""HyperTile on real ldm attention modules: exact agreement with window-by-window attention."""
import pytest
import torch

from lib_tilesampler.hypertile.geometry import HyperTileConfig, HyperTilePlanner
from lib_tilesampler.hypertile.install import install_on_modules, make_attn1_patches


def cross_attention(dim=32, heads=2, seed=0):
    from ldm.modules.attention import CrossAttention
    torch.manual_seed(seed)
    return CrossAttention(query_dim=dim, heads=heads, dim_head=dim // heads).eval()


class Block(torch.nn.Module):
    """A container whose child is called ``attn1``, as in every transformer block."""

    def __init__(self, attn):
        super().__init__()
        self.attn1 = attn

    def forward(self, latent, timesteps, tokens):
        return self.attn1(tokens)


def by_hand(attn, x, h, w, nh, nw):
    """Attention computed for each window separately, by gathering token indices."""
    out = torch.empty_like(x)
    th, tw = h // nh, w // nw
    for i in range(nh):
        for j in range(nw):
            idx = torch.tensor([r * w + c for r in range(i * th, (i + 1) * th)
                                for c in range(j * tw, (j + 1) * tw)])
            with torch.no_grad():
                out[:, idx] = attn(x[:, idx])
    return out


def run_tiled(attn, x, latent_hw, config, seed=0):
    planner = HyperTilePlanner(config, seed)
    block = Block(attn)
    patches = install_on_modules(block, planner)
    try:
        with torch.no_grad():
            out = block(torch.zeros(1, 4, *latent_hw), torch.tensor([500.0]), x)
    finally:
        patches.restore()
    return out, planner


@pytest.mark.parametrize("h,w", [(16, 16), (16, 40), (40, 16), (21, 27)])
def test_one_window_equals_untiled(h, w):
    attn = cross_attention()
    x = torch.randn(2, h * w, 32)
    with torch.no_grad():
        expected = attn(x)
    out, planner = run_tiled(attn, x, (h, w), HyperTileConfig(tile_size=8 * max(h, w) + 8))
    assert planner.stats.tiled == 0
    assert torch.equal(out, expected)


@pytest.mark.parametrize("h,w,tile", [(16, 16, 64), (16, 40, 64), (24, 8, 64), (27, 21, 56), (12, 30, 48)])
def test_tiled_attn1_equals_attention_window_by_window(h, w, tile):
    attn = cross_attention()
    x = torch.randn(3, h * w, 32)
    config = HyperTileConfig(tile_size=tile, swap_size=1)
    out, planner = run_tiled(attn, x, (h, w), config)
    assert planner.stats.tiled == 1
    win = HyperTilePlanner(config, 0).plan(h * w, (h, w))
    assert win.count > 1
    torch.testing.assert_close(out, by_hand(attn, x, h, w, win.nh, win.nw), rtol=1e-5, atol=1e-6)


def test_batch_rows_are_independent_for_cond_and_uncond_rows():
    attn = cross_attention(dim=64, heads=4)
    h, w = 16, 24
    cond = torch.randn(2, h * w, 64)
    uncond = torch.randn(2, h * w, 64)
    batch = torch.cat([cond, uncond])                      # A1111 order: cond rows, then uncond
    config = HyperTileConfig(tile_size=64, swap_size=1)
    together, _ = run_tiled(attn, batch, (h, w), config)
    alone = torch.cat([run_tiled(attn, batch[i:i + 1], (h, w), config)[0] for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_sdxl_sized_channels():
    attn = cross_attention(dim=640, heads=10)
    h, w = 16, 24
    x = torch.randn(2, h * w, 640)
    config = HyperTileConfig(tile_size=64, swap_size=1)
    out, _ = run_tiled(attn, x, (h, w), config)
    win = HyperTilePlanner(config, 0).plan(h * w, (h, w))
    torch.testing.assert_close(out, by_hand(attn, x, h, w, win.nh, win.nw), rtol=1e-4, atol=1e-5)


def test_patcher_style_patches_equal_the_module_wrapper():
    """The (attn1_patch, attn1_output_patch) pair used with Forge's UnetPatcher gives the
    same result as the module wrapper, on the same windows."""
    attn = cross_attention()
    h, w = 32, 48                                   # every option splits: 4 or 2 x 6 or 4
    x = torch.randn(2, h * w, 32)
    config = HyperTileConfig(tile_size=64, swap_size=2)
    expected, _ = run_tiled(attn, x, (h, w), config, seed=11)
    patch_in, patch_out = make_attn1_patches(HyperTilePlanner(config, 11))
    extra = {"original_shape": [2, 4, h, w], "sigmas": torch.tensor([500.0, 500.0])}
    n, ctx, value = patch_in(x, x, x, extra)       # Forge passes n as key and value source too
    assert n.shape == ctx.shape == value.shape and n.shape[0] > 2
    with torch.no_grad():
        out = patch_out(attn(n), extra)
    torch.testing.assert_close(out, expected)


def test_patcher_style_patch_leaves_cross_context_alone():
    patch_in, patch_out = make_attn1_patches(HyperTilePlanner(HyperTileConfig(tile_size=64), 0))
    x = torch.randn(1, 16 * 16, 32)
    context = torch.randn(1, 7, 32)                # disable_self_attn models: a text context
    n, ctx, value = patch_in(x, context, context, {"original_shape": [1, 4, 16, 16]})
    assert n is x and ctx is context
    assert patch_out(x, {}) is x


def test_vae_mid_attention_is_tiled_window_by_window():
    from ldm.modules.diffusionmodules.model import AttnBlock
    torch.manual_seed(0)

    class Mid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_1 = AttnBlock(32)

    class Vae(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mid = Mid()

    vae = Vae().eval()
    x = torch.randn(2, 32, 32, 48)
    with torch.no_grad():
        untiled = vae.mid.attn_1(x)
    patches = install_on_modules(None, HyperTilePlanner(HyperTileConfig(tile_size=256, swap_size=1)), vae)
    with torch.no_grad():
        tiled = vae.mid.attn_1(x)
    patches.restore()
    with torch.no_grad():
        windows = [[vae.mid.attn_1(x[:, :, i * 16:(i + 1) * 16, j * 16:(j + 1) * 16]) for j in range(3)]
                   for i in range(2)]
    expected = torch.cat([torch.cat(row, dim=-1) for row in windows], dim=-2)
    torch.testing.assert_close(tiled, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tiled, untiled)
