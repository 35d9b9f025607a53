"""The resample job as the hosts run it: plan from the options, noise, wrappers, and the
Forge function-wrapper chain, with a simple Euler sampler standing where the host's is."""
import torch

from denoisers import ROWS, euler, pixel_denoiser, row_t, sd1_cond, unet_denoiser
from lib_tilesampler import params as P
from lib_tilesampler.hosts.forge import chained_function_wrapper
from lib_tilesampler.hosts.webui_common import RowSeedsRNG, _repeat_conds, overridden
from lib_tilesampler.tiling.passes import TilePlan, make_wrap, run_resample, seeded_noise
from lib_tilesampler.tiling.denoisers import fused_denoiser
from unets import sd1_unet


def values(**kw):
    return {**P.defaults(), "enabled": True, "resample": True, "resample_tile_size": 128,
            "resample_overlap": 32, **{f"resample_{k}": v for k, v in kw.items()}}


def host_callables(denoiser, cond, latent_hw):
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0])
    from lib_tilesampler.tiling.conditioning import crop_cond

    def sample_whole(latent, noise, wrap):
        return euler(wrap(denoiser), latent, noise, sigmas, cond)

    def sample_tiles(latents, noises, tiles):
        return euler(denoiser, latents, noises, sigmas, crop_cond(cond, tiles, latent_hw, ROWS))
    return sample_whole, sample_tiles


def test_plan_converts_pixels_to_latent_cells_and_checks_overlap():
    plan = TilePlan.from_values(values(mode="fused"), steps=30, salt=5)
    assert (plan.tile, plan.overlap, plan.steps, plan.salt) == (16, 4, 30, 5)
    assert plan.exceeds((17, 8)) and not plan.exceeds((16, 16))
    try:
        TilePlan.from_values(values(overlap=128), steps=30, salt=5)
        raise AssertionError("overlap >= tile accepted")
    except ValueError as e:
        assert "smaller than resample_tile_size" in str(e)


def test_denoise_zero_is_the_identity():
    latent = torch.randn(ROWS, 4, 24, 40)
    plan = TilePlan.from_values(values(denoise=0.0), steps=30)
    fail = lambda *a: (_ for _ in ()).throw(AssertionError("sampled at denoise 0"))
    assert run_resample(latent, plan, [1, 2], fail, fail) is latent


def test_every_mode_equals_untiled_for_a_per_pixel_denoiser():
    latent = torch.randn(ROWS, 4, 37, 53)
    cond = sd1_cond(hw=(37, 53))
    whole, tiles = host_callables(pixel_denoiser, cond, (37, 53))
    noise = seeded_noise(latent.shape, [7, 8, 7, 8], latent.dtype, latent.device)
    expected = euler(pixel_denoiser, latent, noise, torch.tensor([2.0, 1.0, 0.5, 0.0]), cond)
    for mode in ("independent", "fused", "moving"):
        plan = TilePlan.from_values(values(mode=mode, denoise=0.5), steps=8, salt=3)
        out = run_resample(latent, plan, [7, 8], whole, tiles)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, msg=mode)


def test_seeded_noise_is_per_row_and_repeatable():
    a = seeded_noise((4, 4, 8, 8), [1, 2], torch.float32, torch.device("cpu"))
    assert torch.equal(a, seeded_noise((4, 4, 8, 8), [1, 2], torch.float32, torch.device("cpu")))
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])


def test_tile_rows_rng_gives_noise_of_the_tile_batch_shape():
    rng = RowSeedsRNG((4, 8, 8), [1, 2, 3], torch.device("cpu"))
    first, second = rng.next(), rng.next()
    assert first.shape == (3, 4, 8, 8) and not torch.equal(first, second)
    again = RowSeedsRNG((4, 8, 8), [1], torch.device("cpu")).next()
    assert torch.equal(again[0], first[0])          # a row's noise does not depend on the batch


def test_prompt_conditioning_is_repeated_tile_major():
    class Multicond:                                   # shape of A1111's MulticondLearnedConditioning
        def __init__(self, shape, batch):
            self.shape, self.batch = shape, batch
    c = Multicond((2,), ["a", "b"])
    assert _repeat_conds(c, 3).batch == ["a", "b"] * 3 and _repeat_conds(c, 3).shape == (6,)
    assert _repeat_conds([["u1"], ["u2"]], 2) == [["u1"], ["u2"], ["u1"], ["u2"]]
    assert _repeat_conds(c, 1) is c


def test_overridden_puts_attributes_back_even_on_error():
    class Job:
        steps = 20
    job = Job()
    try:
        with overridden(job, steps=5, rng="tile rng"):
            assert (job.steps, job.rng) == (5, "tile rng")
            raise RuntimeError
    except RuntimeError:
        pass
    assert job.steps == 20 and not hasattr(job, "rng")


def forge_call(wrapper, unet, x, t, cond):
    """How Forge's sampling function calls a model_function_wrapper."""
    def apply_model(x_, t_, **c):
        return unet_denoiser(unet)(x_, t_, {"c_crossattn": [c["c_crossattn"]]})
    return wrapper(apply_model, {"input": x, "timestep": t, "c": cond, "cond_or_uncond": [0, 0, 1, 1]})


def test_forge_wrapper_tiles_and_chains_to_another_extensions_wrapper():
    unet = sd1_unet()
    x = torch.randn(ROWS, 4, 32, 48)
    t = row_t() * 100
    cond = {"c_crossattn": sd1_cond(hw=(32, 48))["c_crossattn"][0]}
    seen = []

    def theirs(apply_model, args):                      # e.g. another extension's wrapper
        seen.append(tuple(args["input"].shape))
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrap = make_wrap(TilePlan.from_values(values(mode="fused"), 30, 0))
    ours = chained_function_wrapper(theirs, lambda: wrap)
    out = forge_call(ours, unet, x, t, cond)
    expected = fused_denoiser(lambda a, b, c: unet_denoiser(unet)(a, b, {"c_crossattn": [c["c_crossattn"]]}),
                              16, 16, 4, "gaussian", align=8)(x, t, cond)
    torch.testing.assert_close(out, expected)
    assert len(seen) == 3 * 4 and all(s[-2:] == (16, 16) for s in seen)   # theirs ran on each tile
    again = chained_function_wrapper(ours, lambda: wrap)       # Forge calls the hook twice
    assert again.__tilesampler_previous__ is theirs
    seen.clear()                                               # no tiling: theirs sees the whole
    untiled = forge_call(chained_function_wrapper(theirs, lambda: None), unet, x, t, cond)
    assert seen == [tuple(x.shape)]
    torch.testing.assert_close(untiled, unet_denoiser(unet)(x, t, {"c_crossattn": [cond["c_crossattn"]]}))
