"""Independent-tile resampling (the seed node's pass) and its step arithmetic."""
import pytest
import torch

from denoisers import ConvDenoiser
from lib_tilesampler.tiling.independent import is_identity, resample_independent, start_step, steps_to_run
from lib_tilesampler.tiling.denoisers import TileInterrupted
from lib_tilesampler.tiling.plan import Tile, blend_weights, plan_tiles, seam_score
from test_tiles import smooth_field


def latent_and_noise(height, width, batch=2, channels=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, height, width, generator=g).to(dtype),
            torch.randn(batch, channels, height, width, generator=g).to(dtype))


def pixel_sampler(latents, noise, tiles):
    """A per-pixel stand-in for a sampler run: each cell from its own latent and noise."""
    return 0.8 * latents + 0.3 * noise + 0.1 * latents ** 2


def euler_sampler(model, steps, denoise, sigma_max=10.0):
    """k-diffusion's Euler over ``sigmas[start_step:]`` for an x0-predicting ``model``."""
    sigmas = torch.cat([torch.linspace(sigma_max, 0.1, steps), torch.zeros(1)])

    def sample(latents, noise, tiles):
        start = start_step(steps, denoise)
        x = latents + noise * sigmas[start]
        for i in range(start, steps):
            denoised = model(x, sigmas[i].expand(x.shape[0]))
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x
    return sample


@pytest.mark.parametrize("steps,denoise,start", [(30, 0.25, 22), (30, 0.1, 27), (30, 0.0, 30),
                                                 (30, 1.0, 0), (20, 0.5, 10), (7, 0.33, 4),
                                                 (1, 0.01, 0), (0, 0.5, 0)])
def test_start_step_is_the_seed_nodes_truncation_without_float_noise(steps, denoise, start):
    assert start_step(steps, denoise) == start
    assert steps_to_run(steps, denoise) == steps - start


def test_only_denoise_zero_is_the_identity():
    assert is_identity(30, 0.0) and is_identity(0, 0.7)
    assert not any(is_identity(30, d) for d in (0.001, 0.01, 0.25, 1.0))
    with pytest.raises(ValueError, match="denoise"):
        start_step(30, 1.5)


def test_denoise_zero_leaves_the_latent_bit_for_bit_unchanged():
    latent, noise = latent_and_noise(37, 53)
    sample = euler_sampler(lambda x, s: 0.5 * x, steps=30, denoise=0.0)
    tiles = plan_tiles(37, 53, 16, 16, 4)
    out = resample_independent(latent, noise, tiles, None, sample, tile_batch=3)
    assert torch.equal(out, latent)


@pytest.mark.parametrize("height,width,tile,overlap", [(37, 53, 16, 4), (24, 72, 16, 8),
                                                       (72, 24, 24, 6), (40, 40, 8, 0)])
def test_per_pixel_sampler_gives_the_untiled_result_for_every_tile_batch(height, width, tile, overlap):
    latent, noise = latent_and_noise(height, width)
    expected = pixel_sampler(latent, noise, None)
    tiles = plan_tiles(height, width, tile, tile, overlap)
    weights = blend_weights(tiles, height, width, "smooth", overlap)
    results = [resample_independent(latent, noise, tiles, weights, pixel_sampler, tile_batch=b)
               for b in (1, 2, len(tiles))]
    for out in results:
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(out, results[0])


def test_each_tile_gets_its_crop_of_the_full_noise():
    latent, noise = latent_and_noise(37, 53)
    tiles = plan_tiles(37, 53, 16, 16, 4)
    seen = []

    def check(latents, tile_noise, batch):
        n = len(batch)
        for i, tile in enumerate(batch):
            assert torch.equal(tile_noise[i * 2:(i + 1) * 2], tile.crop(noise))   # tile-major rows
            assert torch.equal(latents[i * 2:(i + 1) * 2], tile.crop(latent))
        seen.extend(batch)
        assert latents.shape[0] == 2 * n
        return latents
    resample_independent(latent, noise, tiles, None, check, tile_batch=4)
    assert seen == tiles


def test_one_tile_as_large_as_the_latent_returns_the_samplers_output():
    latent, noise = latent_and_noise(37, 53)
    conv = ConvDenoiser(size=5)
    sample = lambda lat, nz, tiles: conv(lat + nz, None)          # noqa: E731
    tiles = plan_tiles(37, 53, 64, 64, 8)
    assert tiles == [Tile(0, 0, 37, 53)]
    out = resample_independent(latent, noise, tiles, None, sample)
    assert torch.equal(out, sample(latent, noise, tiles))


def test_independent_tiles_without_overlap_show_a_seam_the_metric_detects():
    """A zero-padded blur re-run on each tile alone darkens the cells along every tile
    border; the untiled blur does not. ``seam_score`` must tell the two apart, and the
    smooth blend over an overlap (wider than the blur) must hide it."""
    field = (smooth_field(48, 64) + 1.0).expand(2, 4, 48, 64).contiguous().double()
    blur = ConvDenoiser(size=3, blur=True)
    sample = lambda lat, nz, tiles: blur(lat, None)                # noqa: E731
    hard = plan_tiles(48, 64, 16, 16, 0)
    untiled = blur(field, None)
    seamed = resample_independent(field, torch.zeros_like(field), hard, None, sample, tile_batch=4)
    assert seam_score(untiled, hard) < 1.2
    assert seam_score(seamed, hard) > 2 * seam_score(untiled, hard)
    soft = plan_tiles(48, 64, 16, 16, 8)
    blended = resample_independent(field, torch.zeros_like(field), soft, None, sample, tile_batch=4)
    assert seam_score(blended, soft) < 1.05 * seam_score(untiled, soft)


def test_progress_and_interrupt_between_tile_batches():
    latent, noise = latent_and_noise(37, 53)
    tiles = plan_tiles(37, 53, 16, 16, 4)
    assert len(tiles) == 3 * 5                              # 4 batches of 4: the last one short
    reports, calls = [], []

    def sample(lat, nz, batch):
        calls.append(len(batch))
        return lat
    resample_independent(latent, noise, tiles, None, sample, tile_batch=4,
                         on_tile=lambda d, n: reports.append((d, n)))
    assert reports == [(4, 15), (8, 15), (12, 15), (15, 15)]
    calls.clear()
    with pytest.raises(TileInterrupted, match="4 of 15"):   # pressed while batch 2 ran
        resample_independent(latent, noise, tiles, None, sample, tile_batch=4,
                             should_stop=lambda: len(calls) == 2)
    assert calls == [4, 4]
    calls.clear()
    with pytest.raises(TileInterrupted, match="12 of 15"):  # pressed during the last batch:
        resample_independent(latent, noise, tiles, None, sample, tile_batch=4,
                             should_stop=lambda: len(calls) == 4)   # its result is not used
    assert calls == [4, 4, 4, 3]


def test_half_precision_latent_keeps_its_dtype():
    latent, noise = latent_and_noise(37, 53, dtype=torch.float16)
    tiles = plan_tiles(37, 53, 16, 16, 4)
    out = resample_independent(latent, noise, tiles, None, pixel_sampler, tile_batch=2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, pixel_sampler(latent, noise, tiles), rtol=2e-3, atol=2e-3)
