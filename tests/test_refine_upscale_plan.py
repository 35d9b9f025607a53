"""Refine + upscale: the stage plan, the refiner's sigmas, sizes, seeds, the host's img2img
step arguments and progress totals, on real schedules and a real Euler run."""
import math

import pytest
import torch

from denoisers import ConvDenoiser, euler
from lib_tilesampler.params import SAME, defaults
from lib_tilesampler.tools.refine_upscale import (
    NO_REFINER, RefineUpscaleOptions, StageSettings, needs_sigma_control, plan_job,
    progress_total, sampler_error, tiler_runs, upscaled_size, upscaler_passes)
from lib_tilesampler.tools.sigmas import (
    base_sigmas, continue_sigmas, img2img_call_for_sigmas,
    refiner_sigmas, sigma_override)

SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146   # SDXL's (scaled-linear betas 0.00085..0.012)


# The schedule types, as k-diffusion writes them at the commit A1111 1.10.1 pins
# (crowsonkb/k-diffusion ab527a9, k_diffusion/sampling.py: get_sigmas_exponential,
# get_sigmas_karras), float32 like theirs.
def exponential(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0):
    """Karras et al. (2022), eq. 5."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def discarding(schedule):
    """The host's schedule for a sampler that discards the penultimate sigma (DPM++ 3M SDE in
    A1111 1.10.1 / Forge 2: KDiffusionSampler.get_sigmas makes steps + 1, then drops one)."""
    def sigmas(n):
        s = schedule(n + 1)
        return torch.cat([s[:-2], s[-1:]])
    return sigmas


SCHEDULES = {"exponential": exponential, "karras": karras,
             "exponential, penultimate discarded": discarding(exponential)}
MAIN = StageSettings(20, 7.0, "Euler a", "Automatic")
SEED = 1234


def host_setup_img2img_steps(requested, denoising_strength):
    """THE HOST'S FORMULA, copied from A1111 1.10.1 modules/sd_samplers_common.py
    setup_img2img_steps (identical in Forge 2), for a call with ``steps`` given:
        requested_steps = (steps or p.steps)
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    KDiffusionSampler.sample_img2img then samples get_sigmas(p, steps)[steps - t_enc - 1:]."""
    steps = int(requested / min(denoising_strength, 0.999)) if denoising_strength > 0 else 0
    return steps, requested - 1


def host_discard_penultimate(override, steps, discard):
    """THE HOST'S get_sigmas around the override (A1111 1.10.1 / Forge 2):
    steps += 1 if discard; sigmas = override(steps); if discard: cat(sigmas[:-2], sigmas[-1:])."""
    sigmas = override(steps + 1 if discard else steps)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def plan(refiner="sdxl_refiner", schedule=exponential, values=None, width=1024, height=1024,
         **options):
    return plan_job(RefineUpscaleOptions(refiner=refiner, **options), MAIN, SEED, width, height,
                    lambda model, settings: schedule, values or defaults())


# ------------------------------------------------------------------ refiner continuity
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("base_steps,stop,refiner_steps,start",
                         [(30, 14, 32, 15), (30, 1, 32, 15), (30, 29, 32, 15), (20, 10, 40, 0),
                          (25, 18, 30, 21), (30, 14, 32, 30)])
def test_refiner_starts_at_exactly_the_sigma_where_the_base_stopped(name, base_steps, stop,
                                                                     refiner_steps, start):
    schedule = SCHEDULES[name]
    base = base_sigmas(schedule(base_steps), stop)
    refiner = refiner_sigmas(schedule(refiner_steps), start, base[-1])
    assert torch.equal(refiner[:1], base[-1:])
    assert torch.equal(base[-1:], schedule(base_steps)[stop:stop + 1])


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("stop,start", [(14, 15), (5, 0), (25, 30), (14, 2), (28, 20)])
def test_refiner_sigmas_decrease_strictly_end_at_zero_and_keep_the_smallest_sigma(name, stop, start):
    schedule = SCHEDULES[name]
    refiner_full = schedule(32)
    refiner = refiner_sigmas(refiner_full, start, schedule(30)[stop])
    assert len(refiner) == 32 - start + 1
    assert bool((refiner[1:] < refiner[:-1]).all())
    assert refiner[-1] == 0 and refiner[-2] == refiner_full[-2]


@pytest.mark.parametrize("name", SCHEDULES)
def test_refiner_keeps_the_log_sigma_spacing_of_its_schedules_tail(name):
    tail = SCHEDULES[name](32)[15:-1].double()
    refiner = refiner_sigmas(SCHEDULES[name](32), 15, 1.7)[:-1].double()
    ratios = (refiner[:-1].log() - refiner[1:].log()) / (tail[:-1].log() - tail[1:].log())
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)
    assert float(ratios[0]) == pytest.approx((math.log(1.7) - math.log(tail[-1]))
                                             / (math.log(tail[0]) - math.log(tail[-1])), rel=1e-5)


def test_refiner_from_step_0_squeezes_its_whole_schedule_below_the_base_sigma():
    refiner = refiner_sigmas(karras(32), 0, 2.5)
    assert len(refiner) == 33 and refiner[0] == 2.5 and refiner[-2] == karras(32)[-2]


@pytest.mark.parametrize("start", [32, 40, -1])
def test_a_refiner_start_without_a_step_after_it_is_an_error(start):
    with pytest.raises(ValueError, match="refiner must start"):
        refiner_sigmas(exponential(32), start, 1.0)


def test_a_base_stop_at_or_below_the_refiners_smallest_sigma_leaves_one_step_to_zero():
    full = exponential(32)
    for stop_sigma in (float(full[-2]), float(full[-2]) / 2):
        assert refiner_sigmas(full, 15, stop_sigma).tolist() == [pytest.approx(stop_sigma), 0.0]
    assert refiner_sigmas(full, 31, 3.0).tolist() == [3.0, 0.0]   # a tail with one sigma
    with pytest.raises(ValueError, match="positive sigma"):
        refiner_sigmas(full, 15, 0.0)


def test_a_schedule_that_is_not_one_is_an_error():
    with pytest.raises(ValueError, match="must not increase"):
        refiner_sigmas(torch.tensor([1.0, 2.0, 0.0]), 0, 1.0)
    with pytest.raises(ValueError, match="ending in one 0"):
        base_sigmas(torch.tensor([3.0, 2.0, 1.0]), 1)
    with pytest.raises(ValueError, match="flat"):
        refiner_sigmas(torch.tensor([2.0, 1.0, 1.0, 0.0]), 1, 3.0)
    with pytest.raises(ValueError, match="31 sigmas"):
        plan(schedule=lambda n: exponential(n - 1))


# ------------------------------------------------------------------ the seed's stages
def test_seed_defaults_run_14_base_steps_then_17_refiner_steps():
    job = plan()
    assert (job.base.steps, len(job.base.sigmas), job.base.first, job.base.last) == (14, 15, 0, 14)
    assert torch.equal(job.base.sigmas, exponential(30)[:15])
    refiner = job.refiner
    assert (refiner.steps, len(refiner.sigmas), refiner.first, refiner.last) == (17, 18, 15, 32)
    assert refiner.model == "refiner"
    assert refiner.settings == StageSettings(32, 3.5, "DPM++ 3M SDE", "Exponential")
    assert job.base.add_noise and not job.refiner.add_noise
    assert torch.equal(job.refiner.sigmas[:1], job.base.sigmas[-1:])


def test_without_a_refiner_the_base_continues_its_own_schedule_for_16_steps():
    job = plan(refiner=NO_REFINER)
    assert (job.refiner.steps, job.refiner.first, job.refiner.last) == (16, 14, 30)
    assert torch.equal(job.refiner.sigmas, exponential(30)[14:])
    assert job.refiner.model == "base" and job.refiner.settings == job.base.settings
    assert torch.equal(continue_sigmas(exponential(30), 14), exponential(30)[14:])


def test_base_then_its_continuation_is_one_uninterrupted_euler_run_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 12, 16, generator=g)
    empty = torch.zeros_like(noise)
    job = plan(refiner=NO_REFINER)
    denoiser = ConvDenoiser(seed=3)
    halfway = euler(denoiser, empty, noise, job.base.sigmas, None)
    split = euler(denoiser, halfway, torch.zeros_like(noise), job.refiner.sigmas, None)
    assert torch.equal(split, euler(denoiser, empty, noise, exponential(30), None))


def test_the_refiners_first_denoiser_call_is_at_the_base_stop_sigma_on_the_base_latent():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    job = plan()
    base, refiner = ConvDenoiser(seed=1), ConvDenoiser(seed=2)
    latent = euler(base, torch.zeros_like(noise), noise, job.base.sigmas, None)
    euler(refiner, latent, torch.zeros_like(noise), job.refiner.sigmas, None)
    first_x, first_t, _ = refiner.calls[0]
    assert torch.equal(first_x, latent) and float(first_t[0]) == float(job.base.sigmas[-1])
    assert [float(t[0]) for _, t, _ in base.calls] == job.base.sigmas[:-1].tolist()
    assert len(refiner.calls) == 17


def test_a_base_stop_at_the_schedule_end_leaves_no_refiner_stage():
    job = plan(base_stop=30)
    assert job.refiner is None and job.base.steps == 30 and job.base.sigmas[-1] == 0
    assert not needs_sigma_control(job.base)
    for stop in (0, 31):
        with pytest.raises(ValueError, match="base must stop"):
            plan(base_stop=stop)


def test_same_as_main_takes_the_main_steps_cfg_sampler_and_schedule_type():
    job = plan(base=StageSettings(0, 0, SAME, SAME), base_stop=10)
    assert job.base.settings == MAIN and len(job.base.sigmas) == 11


# ------------------------------------------------------------------ host calls
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("discard", [False, True])
def test_the_override_makes_the_host_sample_exactly_the_planned_sigmas(name, discard):
    job = plan(schedule=SCHEDULES[name])
    for stage in (job.base, job.refiner):
        n = stage.steps
        assert torch.equal(host_discard_penultimate(sigma_override(stage.sigmas), n, discard), stage.sigmas)
    with pytest.raises(ValueError, match="asked for 16"):
        sigma_override(job.base.sigmas)(16)


def test_img2img_call_for_sigmas_makes_the_host_slice_start_at_the_first_sigma():
    for n in range(1, 999):
        steps_arg, strength = img2img_call_for_sigmas(n)
        steps, t_enc = host_setup_img2img_steps(steps_arg, strength)
        assert (steps, steps - t_enc - 1) == (n, 0)
    with pytest.raises(ValueError):
        img2img_call_for_sigmas(999)


def test_stages_that_stop_early_or_continue_need_a_sampler_that_takes_sigmas():
    job = plan(base=StageSettings(30, 6.5, "DDIM", "Automatic"))
    assert needs_sigma_control(job.base) and needs_sigma_control(job.refiner)
    assert not needs_sigma_control(job.tiler)
    assert "base stage stops after step 14 of 30" in sampler_error(job) and "'DDIM'" in sampler_error(job)
    job = plan(refiner_stage=StageSettings(32, 3.5, "DPM fast", "Automatic"))
    assert "refiner stage continues from sigma" in sampler_error(job)
    assert sampler_error(plan()) is None
    assert sampler_error(plan(base=StageSettings(30, 6.5, "DDIM", "Automatic"), base_stop=30)) is None


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("upscale_by,size", [(0.1, (80, 120)), (1, (832, 1216)), (1.5, (1248, 1824)),
                                             (2.37, (1968, 2880)), (10, (8328, 12168))])
def test_upscaled_size_floors_each_side_times_upscale_by_to_a_multiple_of_8(upscale_by, size):
    for upscaler_scale in (1, 2, 4):
        assert upscaled_size(833, 1217, upscaler_scale, upscale_by) == size
    job = plan(width=833, height=1217, upscale_by=upscale_by)
    assert (job.width, job.height) == size


def test_an_upscaled_side_below_64_px_or_upscale_by_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="at least 64 px"):
        upscaled_size(511, 700, 4, 0.1)
    for upscale_by in (0.05, 10.5):
        with pytest.raises(ValueError, match="upscale_by must be"):
            upscaled_size(1024, 1024, 4, upscale_by)


@pytest.mark.parametrize("upscaler_scale,upscale_by,passes", [(4, 1.0, 1), (4, 2.0, 1), (4, 10, 2),
                                                              (2, 10, 3), (4, 0.5, 0), (1, 2.0, 1)])
def test_the_upscaler_model_runs_as_a1111s_upscaler_loop_runs_it(upscaler_scale, upscale_by, passes):
    assert upscaler_passes(833, 1217, upscaler_scale, upscale_by) == passes


# ------------------------------------------------------------------ tiler, seeds, progress
@pytest.mark.parametrize("refiner,tiler_model,model", [("sdxl_refiner", "base", "base"),
                                                       ("sdxl_refiner", "refiner", "refiner"),
                                                       (NO_REFINER, "refiner", "base")])
def test_the_tiler_runs_on_the_chosen_model_the_refiner_slot_being_the_base_without_one(
        refiner, tiler_model, model):
    assert plan(refiner=refiner, tiler_model=tiler_model).tiler.model == model


def test_an_unknown_tiler_model_is_an_error():
    with pytest.raises(ValueError, match="tiler_model"):
        plan(tiler_model="vae")


def test_every_stage_and_the_tiles_use_the_image_seed():
    job = plan(values=dict(defaults(), resample_seed=77))
    assert {job.base.seed, job.refiner.seed, job.tiler.seed, job.seed} == {SEED}


def test_the_tiler_runs_the_seed_nodes_steps_at_tiler_denoise():
    job = plan(tiler_denoise=0.25)
    assert (job.tiler.first, job.tiler.last, job.tiler.steps) == (22, 30, 8)
    assert job.tile_plan.denoise == 0.25 and job.tiler.sigmas is None and job.tiler.add_noise
    job = plan(values=dict(defaults(), resample_steps=0, resample_cfg=0), tiler_denoise=0.5)
    assert job.tiler.settings == MAIN and job.tiler.steps == 10
    job = plan(tiler_denoise=0.0)
    assert job.tiler is None and job.tile_plan is None and progress_total(job) == 14 + 17


@pytest.mark.parametrize("mode,batch,runs", [("independent", 1, 9), ("independent", 4, 3),
                                             ("fused", 4, 1), ("moving", 1, 1)])
def test_progress_totals_count_base_refiner_and_one_run_per_tile_batch(mode, batch, runs):
    values = dict(defaults(), resample_mode=mode, resample_batch=batch)
    job = plan(values=values, upscale_by=2.0)
    assert (job.width, job.height) == (2048, 2048) and job.tile_count() == 9
    assert tiler_runs(job) == runs
    assert progress_total(job) == 14 + 17 + runs * 8
    assert progress_total(plan(refiner=NO_REFINER, values=values, upscale_by=2.0)) == 14 + 16 + runs * 8
    if mode == "independent":
        assert progress_total(job, n_tiles=5) == 14 + 17 + math.ceil(5 / batch) * 8
