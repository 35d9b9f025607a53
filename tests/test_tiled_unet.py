"""Every tiling mode on real U-Nets (ldm SD1 and inpainting shapes, diffusers SDXL shape),
with cond and uncond rows of a batch of two images."""
import pytest
import torch

from denoisers import ROWS, inpaint_denoiser, row_t, sd1_cond, unet_denoiser
from lib_tilesampler.tiling.conditioning import crop_cond
from lib_tilesampler.tiling.independent import resample_independent, start_step
from lib_tilesampler.tiling.denoisers import fused_denoiser, moving_seam_denoiser
from lib_tilesampler.tiling.plan import plan_tiles
from unets import sd1_inpaint_unet, sd1_unet, sdxl_unet

HW = (16, 24)      # 128 x 192 px; tiles of 16 x 16 cells, all sides multiples of 8 cells
MODES = {
    "fused-uniform": lambda d, **kw: fused_denoiser(d, 16, 16, 8, "uniform", **kw),
    "fused-gaussian": lambda d, **kw: fused_denoiser(d, 16, 16, 8, "gaussian", **kw),
    "moving": lambda d, **kw: moving_seam_denoiser(d, 16, 16, seed=3, **kw),
    "moving-wrap": lambda d, **kw: moving_seam_denoiser(d, 16, 16, seed=3, wrap=True, **kw),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These U-Nets are tiny: on a small CPU one thread beats two (the threads' handoffs
    cost more than the work), and far more so when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd1():
    return unet_denoiser(sd1_unet())


@pytest.fixture(scope="module")
def inpaint():
    return inpaint_denoiser(sd1_inpaint_unet())


def latent(channels=4, seed=0):
    return torch.randn(ROWS, channels, *HW, generator=torch.Generator().manual_seed(seed))


def sigma_t(value=500.0):
    return torch.full((ROWS,), value)


@pytest.mark.parametrize("mode", MODES)
def test_sd1_unet_runs_every_mode_with_cond_and_uncond_rows(sd1, mode):
    x, cond = latent(), sd1_cond(hw=HW, inpaint=False)           # (rows, 5, 1, 1) dummy c_concat
    out = MODES[mode](sd1, tile_batch=8)(x, sigma_t(), cond)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert not torch.allclose(out, sd1(x, sigma_t(), cond))      # it really tiled


@pytest.mark.parametrize("mode", MODES)
def test_inpainting_unet_crops_c_concat_with_the_tile_in_every_mode(inpaint, mode):
    x, cond = latent(), sd1_cond(hw=HW, inpaint=True)
    calls = []

    def spy(x, t, cond):
        calls.append((x.shape, cond["c_concat"][0].shape))
        return inpaint(x, t, cond)

    out = MODES[mode](spy, tile_batch=8)(x, sigma_t(), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert all(xs[0] == cs[0] and xs[-2:] == cs[-2:] for xs, cs in calls)


def test_fused_unet_result_does_not_depend_on_the_tile_batch_size(inpaint):
    x, t, cond = latent(), row_t(), sd1_cond(hw=HW, inpaint=True)
    one = fused_denoiser(inpaint, 16, 16, 8, tile_batch=1)(x, t, cond)
    both = fused_denoiser(inpaint, 16, 16, 8, tile_batch=2)(x, t, cond)
    torch.testing.assert_close(one, both, rtol=1e-4, atol=1e-5)


def test_unet_tile_as_large_as_the_latent_is_exactly_untiled(inpaint):
    x, t, cond = latent(), row_t(), sd1_cond(hw=HW, inpaint=True)
    expected = inpaint(x, t, cond)
    for wrapper in (fused_denoiser(inpaint, 16, 24, 8), moving_seam_denoiser(inpaint, 16, 24, seed=1)):
        assert torch.equal(wrapper(x, t, cond), expected)


@pytest.mark.parametrize("wrap", [False, True])
def test_moving_seams_split_cond_uncond_calls_equal_one_joint_call(inpaint, wrap):
    """Forge may run cond and uncond rows in separate calls of one step: both calls must
    get the grid of the joint call (same seed, same t)."""
    x, cond = latent(), sd1_cond(hw=HW, inpaint=True)
    t = sigma_t(321.0)
    moving = moving_seam_denoiser(inpaint, 16, 16, seed=11, wrap=wrap, tile_batch=8)
    joint = moving(x, t, cond)
    half = ROWS // 2
    part = lambda s: {key: [value[0][s]] for key, value in cond.items()}   # noqa: E731
    split = torch.cat([moving(x[:half], t[:half], part(slice(0, half))),
                       moving(x[half:], t[half:], part(slice(half, None)))])
    torch.testing.assert_close(split, joint, rtol=1e-4, atol=1e-5)


def test_independent_tiles_with_a_cfg_sampler_on_the_inpainting_unet(inpaint):
    """The host's sampler over a batch of tiles: per-image conditioning cropped for the
    tiles (images x tiles rows), then cond and uncond halves for classifier-free guidance."""
    images = ROWS // 2
    g = torch.Generator().manual_seed(5)
    lat = torch.randn(images, 4, *HW, generator=g)
    noise = torch.randn(images, 4, *HW, generator=g)
    text, empty = torch.randn(images, 7, 32, generator=g), torch.zeros(images, 7, 32)
    image_cond = torch.randn(images, 5, *HW, generator=g)
    steps, denoise, scale = 4, 0.5, 5.0
    sigmas = torch.tensor([14.6, 4.0, 1.0, 0.3, 0.0])

    def sample_tiles(latents, tile_noise, tiles):
        per_image = crop_cond({"text": text, "uncond": empty, "image": image_cond}, tiles, HW, images)
        cond = {"c_crossattn": [torch.cat([per_image["text"], per_image["uncond"]])],
                "c_concat": [per_image["image"].repeat(2, 1, 1, 1)]}
        start = start_step(steps, denoise)
        x = latents + tile_noise * sigmas[start]
        for i in range(start, steps):
            eps_cond, eps_uncond = inpaint(torch.cat([x, x]), (sigmas[i] * 50).expand(2 * len(x)),
                                           cond).chunk(2)
            eps = eps_uncond + scale * (eps_cond - eps_uncond)
            x = x + eps * (sigmas[i + 1] - sigmas[i])
        return x

    tiles = plan_tiles(*HW, 16, 16, 8)
    out = resample_independent(lat, noise, tiles, None, sample_tiles, tile_batch=2)
    assert out.shape == lat.shape and torch.isfinite(out).all()
    one_by_one = resample_independent(lat, noise, tiles, None, sample_tiles, tile_batch=1)
    torch.testing.assert_close(out, one_by_one, rtol=1e-4, atol=1e-4)


def test_sdxl_shaped_unet_with_an_sdxl_cond_dict_runs_fused_and_moving():
    unet = sdxl_unet()

    def denoise(x, t, cond):
        vector = cond["vector"]
        extra = {"text_embeds": vector[:, :32], "time_ids": vector[:, 32:]}
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=cond["crossattn"], added_cond_kwargs=extra).sample

    g = torch.Generator().manual_seed(2)
    cond = {"crossattn": torch.randn(ROWS, 7, 32, generator=g), "vector": torch.randn(ROWS, 38, generator=g),
            "c_concat": torch.zeros(ROWS, 5, 1, 1)}
    x = torch.randn(ROWS, 4, 8, 24, generator=g)
    for wrapper in (fused_denoiser(denoise, 8, 12, 4, tile_batch=4),
                    moving_seam_denoiser(denoise, 8, 12, seed=0, granularity=4, tile_batch=4)):
        out = wrapper(x, sigma_t(), cond)
        assert out.shape == x.shape and torch.isfinite(out).all()
