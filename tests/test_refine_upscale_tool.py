"""Refine + upscale as the Script runs it: the Script's values -> the plan's options and the
tiler's resample options, img2img plans (upscale only; base + refiner from the main
denoise), the host's progress total, and the checks that answer HTTP 422 before any work."""
import base64
import io

import pytest
import torch

from lib_tilesampler.api_check import ApiRequest
from lib_tilesampler.params import SAME
from lib_tilesampler.tiling.passes import TilePlan
from lib_tilesampler.tools.options import tool_defaults
from lib_tilesampler.tools.refine_upscale import (
    NO_REFINER, RefineUpscaleOptions, StageSettings, needs_sigma_control, options_from_values,
    plan_job, progress_jobs, sampler_error, stage_runs, tiler_resample_values, tiler_runs)
from lib_tilesampler.tools.refine_upscale_check import (
    HostLimits, HostNames, image_size, request_tool_error, resolve_tool_names, standin_schedule,
    tool_error)

MAIN = StageSettings(20, 7.0, "Euler a", "Automatic")
SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 3M SDE", "DDIM", "UniPC", "DPM fast"]
SCHEDULERS = ["Automatic", "Karras", "Exponential"]
CHECKPOINTS = ["tiny.safetensors [e20ee841e8]", "tiny-refiner.safetensors [e20ee841e8]"]
UPSCALERS = ["None", "Lanczos", "Nearest", "tiny-esrgan-4x"]


def lookup(names):
    def find(name):
        for n in names:
            if n.lower() == name.lower() or n.lower().startswith(name.lower() + "."):
                return n
        return None
    return find


NAMES = HostNames(lookup(SAMPLERS), lookup(SCHEDULERS), lookup(CHECKPOINTS), lookup(UPSCALERS),
                  SAMPLERS, SCHEDULERS, CHECKPOINTS, UPSCALERS)
LIMITS = HostLimits(max_pixels=200_000_000, unipc_order=3)


def values(**changes):
    out = tool_defaults()
    out.update(changes)
    return out


def plan(v=None, **kwargs):
    v = v or values()
    return plan_job(options_from_values(v), MAIN, 7, kwargs.pop("width", 512), kwargs.pop("height", 512),
                    lambda model, settings: standin_schedule, tiler_resample_values(v), **kwargs)


# ------------------------------------------------------------------ values -> plan
def test_the_scripts_defaults_are_the_seed_nodes_options():
    assert options_from_values(values()) == RefineUpscaleOptions()


def test_the_tiler_values_become_resample_options_with_the_image_seed():
    v = values(tiler_mode="fused", tiler_tile_size=512, tiler_overlap=64, tiler_batch=4,
               tiler_steps=12, tiler_cfg=4.5, tiler_denoise=0.3)
    r = tiler_resample_values(v)
    assert (r["resample_mode"], r["resample_tile_size"], r["resample_overlap"], r["resample_batch"],
            r["resample_steps"], r["resample_cfg"], r["resample_denoise"], r["resample_seed"]) == \
        ("fused", 512, 64, 4, 12, 4.5, 0.3, -1)
    assert TilePlan.from_values(r, 12) == TilePlan("fused", "gaussian", 64, 8, 4, 0.3, 12)


def test_tiler_zero_steps_and_cfg_and_same_as_main_mean_the_jobs_own_settings():
    job = plan(values(tiler_steps=0, tiler_cfg=0, tiler_sampler=SAME, tiler_scheduler=SAME))
    assert job.tiler.settings == MAIN


# ------------------------------------------------------------------ img2img
def test_img2img_upscale_only_plans_no_stage_but_the_tiler():
    job = plan(refine=False, width=300, height=200, v=values(upscale_by=2.0))
    assert job.base is None and job.refiner is None and job.tiler is not None
    assert (job.width, job.height) == (600, 400) and stage_runs(job) == 0


def test_img2img_refine_starts_the_base_at_the_main_denoise_and_hands_over_at_its_stop():
    full = standin_schedule(30)
    job = plan(denoise=0.75, v=values(refiner=CHECKPOINTS[1]))
    assert (job.base.first, job.base.last, job.base.steps) == (7, 14, 7)
    assert torch.equal(job.base.sigmas, full[7:15]) and job.base.add_noise
    assert needs_sigma_control(job.base)
    assert job.refiner.sigmas[0] == full[14] and not job.refiner.add_noise


def test_img2img_refine_starting_after_the_base_stop_leaves_the_base_out():
    full = standin_schedule(30)
    job = plan(denoise=0.4, v=values(refiner=CHECKPOINTS[1]))
    assert job.base is None and job.refiner.add_noise and job.refiner.sigmas[0] == full[18]
    job = plan(denoise=0.4)                    # no refiner: the base continues from step 18
    assert job.base is None and job.refiner.model == "base" and job.refiner.add_noise
    assert torch.equal(job.refiner.sigmas, full[18:])
    assert stage_runs(job) == 1


def test_img2img_refine_at_denoise_0_runs_no_stage():
    job = plan(denoise=0.0)
    assert job.base is None and job.refiner is None


def test_a_timestep_sampler_cannot_start_an_img2img_base_mid_schedule():
    job = plan(denoise=0.5, v=values(base_sampler="DDIM", base_stop=30))
    assert "starts at step 15 of 30 (img2img)" in sampler_error(job)


# ------------------------------------------------------------------ progress
def test_progress_jobs_count_stage_runs_per_batch_then_upscale_and_tiler_runs_per_image():
    v = values(upscale_by=4.0, tiler_tile_size=512, tiler_overlap=64, tiler_mode="independent")
    job = plan(v, width=512, height=512)
    assert job.tile_count() == 25 and tiler_runs(job) == 25
    assert progress_jobs(job, batches=2, images=4) == 2 * 2 + 4 * 26
    assert progress_jobs(plan(v, refine=False), batches=1, images=1) == 26
    no_tiler = plan(values(tiler_denoise=0.0))
    assert progress_jobs(no_tiler, batches=1, images=1) == 2 + 1


# ------------------------------------------------------------------ names
def test_names_are_resolved_to_the_hosts_spelling():
    out = resolve_tool_names(values(base_sampler="dpm++ 2m", refiner="tiny-refiner",
                                    upscaler="TINY-ESRGAN-4X", tiler_scheduler="karras"), NAMES)
    assert (out["base_sampler"], out["refiner"], out["upscaler"], out["tiler_scheduler"]) == \
        ("DPM++ 2M", CHECKPOINTS[1], "tiny-esrgan-4x", "Karras")
    assert out["tiler_sampler"] == SAME and resolve_tool_names(values(), NAMES)["refiner"] == NO_REFINER


@pytest.mark.parametrize("key,value,words", [
    ("refiner", "sdxl_refiner", "is not a checkpoint of this WebUI"),
    ("upscaler", "4x-UltraSharp", "upscaler '4x-UltraSharp' is not one of: None, Lanczos"),
    ("base_sampler", "Euler b", "base_sampler 'Euler b' is not one of"),
    ("refiner_scheduler", "Cosine", "refiner_scheduler 'Cosine'")])
def test_an_unknown_name_is_a_sentence_naming_the_key_and_the_choices(key, value, words):
    assert words in tool_error(values(**{key: value}), NAMES, LIMITS, MAIN, (512, 512), True)


# ------------------------------------------------------------------ checks
def test_the_defaults_pass_the_checks():
    assert tool_error(values(), NAMES, LIMITS, MAIN, (512, 512), True) is None
    assert tool_error(values(tool="mask_grid", refiner="nope"), NAMES, LIMITS, MAIN, (8, 8), True) is None


def test_an_upscaled_image_above_the_hosts_maximum_size_is_refused():
    error = tool_error(values(upscale_by=10.0), NAMES, HostLimits(max_pixels=20_000_000), MAIN,
                       (512, 512), True)
    assert "makes 512x512 into 5120x5120 (26.2 MP), above this WebUI's maximum image size of 20 MP" in error
    assert tool_error(values(upscale_by=10.0), NAMES, HostLimits(max_pixels=20_000_000), MAIN,
                      None, True) is None          # the size is pasted later: the job says it


def test_a_side_below_64_px_a_base_stop_after_its_steps_and_a_bad_tile_are_refused():
    assert "at least 64 px" in tool_error(values(upscale_by=0.1), NAMES, LIMITS, MAIN, (512, 512), True)
    assert "base must stop" in tool_error(values(base_stop=40), NAMES, LIMITS, MAIN, (512, 512), True)
    assert "refiner must start" in tool_error(values(refiner=CHECKPOINTS[1], refiner_start=40),
                                              NAMES, LIMITS, MAIN, (512, 512), True)
    assert "must be smaller than" in tool_error(values(tiler_tile_size=256, tiler_overlap=256),
                                                NAMES, LIMITS, MAIN, (512, 512), True)


def test_samplers_that_cannot_run_a_stage_and_unipc_below_its_order_are_refused():
    assert "'DDIM' does not" in tool_error(values(base_sampler="DDIM"), NAMES, LIMITS, MAIN, (512, 512), True)
    assert "'DPM fast' does not" in tool_error(values(refiner_sampler="DPM fast", refiner=CHECKPOINTS[1]),
                                               NAMES, LIMITS, MAIN, (512, 512), True)
    error = tool_error(values(tiler_sampler="UniPC", tiler_steps=20, tiler_denoise=0.1), NAMES, LIMITS,
                       MAIN, (512, 512), True)
    assert "tiler stage's sampler UniPC needs at least 3 steps" in error and "runs 2" in error
    assert tool_error(values(tiler_sampler="UniPC", tiler_steps=20, tiler_denoise=0.2), NAMES, LIMITS,
                      MAIN, (512, 512), True) is None


def png_base64(width, height):
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_size_reads_a_base64_header_with_or_without_a_data_url():
    data = png_base64(33, 17)
    assert image_size(data) == (33, 17) == image_size("data:image/png;base64," + data)
    assert image_size("not base64!") is None and image_size("aGVsbG8=") is None and image_size(3) is None


def request(tab, args, **fields):
    fields.setdefault("script_name", "tile sampler tools")
    fields.setdefault("script_args", [args])
    return ApiRequest(tab, fields, frozenset(fields))


def test_an_img2img_upscale_only_request_is_judged_on_the_input_images_size():
    req = request("img2img", {}, init_images=[png_base64(600, 600)], width=64, height=64,
                  denoising_strength=0.75)
    limits = HostLimits(max_pixels=10_000_000)
    assert "600x600 into 6000x6000" in request_tool_error(values(upscale_by=10.0), req, NAMES, limits)
    assert request_tool_error(values(upscale_by=4.0), req, NAMES, limits) is None
    refine = values(upscale_by=10.0, img2img_refine=True)
    assert request_tool_error(refine, req, NAMES, limits) is None     # 64x64 -> 640x640


def test_a_txt2img_request_whose_infotext_sets_the_size_waits_for_the_job():
    req = ApiRequest("txt2img", {"width": 512, "height": 512}, frozenset(), {"Size-1": "4096"})
    assert request_tool_error(values(upscale_by=10.0), req, NAMES, HostLimits(max_pixels=1_000_000)) is None
    req = ApiRequest("txt2img", {"width": 512, "height": 512}, frozenset({"width", "height"}), {})
    assert "above this WebUI's maximum" in request_tool_error(values(upscale_by=10.0), req, NAMES,
                                                              HostLimits(max_pixels=1_000_000))
