"""Refine + upscale tiled pass, the plan (the ComfyUI node "Mikey Sampler Tiled").

1. The base samples the first ``base_stop`` steps of its schedule and stops with its noise
   left in (txt2img with ``sigmas.sigma_override(plan.base.sigmas)`` and ``p.steps = stop``).
2. The refiner (another checkpoint; "None": the base itself) continues without new noise from
   exactly the sigma where the base stopped (img2img from that latent with zero noise,
   ``sigma_override(plan.refiner.sigmas)`` and ``sigmas.img2img_call_for_sigmas``).
3. VAE decode; the upscaler model enlarges; the image is resized to ``(plan.width,
   plan.height)`` (``upscaled_size``).
4. A latent-tile resample at ``tiler_denoise`` on the tiler's model (``tiling.passes
   .run_resample`` with ``plan.tile_plan``; ``tiling.passes.img2img_steps`` gives the host's
   step arguments), with the image's seed.

In img2img the stages are optional: by default the input image is the base result (steps
3 and 4 only); with ``img2img_refine`` the base and refiner stages run as img2img from the
input at the main denoise (``plan_job(..., denoise=...)``).

Nothing here knows the host: it gets the host's main settings and a ``schedule_for(model,
settings)`` that makes the host's sigma schedules, and returns plain dataclasses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Optional

import torch

from ..params import SAME, defaults as resample_defaults
from ..tiling.independent import start_step, steps_to_run
from ..tiling.passes import LATENT_FACTOR, TilePlan
from .sigmas import Schedule, base_sigmas, checked_schedule, continue_sigmas, refiner_sigmas

NO_REFINER = "None"
TILER_MODELS = ("base", "refiner")
UPSCALE_BY_MIN, UPSCALE_BY_MAX = 0.1, 10.0
MIN_SIDE = 64            # px, the least side of the upscaled image
# Samplers of A1111 1.10.1 and Forge 2 that do not walk a given sigma schedule: the timestep
# samplers (modules/sd_samplers_timesteps.py) and the two k-diffusion samplers that take
# only sigma_min and sigma_max (sample_dpm_fast, sample_dpm_adaptive).
NO_SIGMA_CONTROL = ("DDIM", "DDIM CFG++", "PLMS", "UniPC", "DPM fast", "DPM adaptive")
TIMESTEP_SAMPLERS = ("DDIM", "DDIM CFG++", "PLMS", "UniPC")


@dataclass(frozen=True)
class StageSettings:
    """One stage's sampler settings; steps 0, CFG 0 and ``"same as main"`` mean the main's."""

    steps: int
    cfg: float
    sampler: str
    scheduler: str

    def resolved(self, main: "StageSettings") -> "StageSettings":
        if self.steps < 0 or self.cfg < 0:
            raise ValueError(f"steps and CFG must not be negative, not {self.steps}, {self.cfg}")
        return StageSettings(self.steps or main.steps, self.cfg or main.cfg,
                             main.sampler if self.sampler == SAME else self.sampler,
                             main.scheduler if self.scheduler == SAME else self.scheduler)


@dataclass(frozen=True)
class RefineUpscaleOptions:
    """The tool's options, with the seed node's defaults."""

    base: StageSettings = StageSettings(30, 6.5, "DPM++ 3M SDE", "Exponential")
    base_stop: int = 14             # runs steps 0..13, returns the latent at sigma[14]
    refiner: str = NO_REFINER       # a checkpoint, or "None": the base continues
    refiner_stage: StageSettings = StageSettings(32, 3.5, "DPM++ 3M SDE", "Exponential")
    refiner_start: int = 15         # the refiner's steps 15..31, from the base's sigma
    upscale_by: float = 1.0
    tiler_denoise: float = 0.25
    tiler_model: str = "base"


@dataclass(frozen=True)
class StagePlan:
    """One sampler stage: its model, its settings (``settings.steps`` is the length of the
    stage's own schedule) and what it runs of that schedule, indices ``first..last``."""

    name: str                   # "base", "refiner" (the base itself when no refiner), "tiler"
    model: str                  # "base" or "refiner": which checkpoint samples
    settings: StageSettings
    first: int
    last: int
    steps: int                  # sampler steps of one run (each one U-Net call with CFG)
    sigmas: Optional[torch.Tensor] = field(repr=False, compare=False)  # None: the host's own slice
    add_noise: bool             # False: continue the latent as it is (zero noise)
    seed: int


@dataclass(frozen=True)
class JobPlan:
    base: Optional[StagePlan]           # None: no base step (img2img upscale only, or an
                                        # img2img denoise that starts after the base's stop)
    refiner: Optional[StagePlan]        # None: the base finished its schedule
    tiler: Optional[StagePlan]          # None: tiler_denoise 0 leaves the image as it is
    tile_plan: Optional[TilePlan]
    width: int                          # the upscaled image
    height: int
    upscaler_passes: int                # upscaler model runs (see ``upscaler_passes``)
    seed: int

    def tile_count(self) -> int:
        """Tiles of the tiler over the upscaled latent (0 without a tiler)."""
        if self.tile_plan is None:
            return 0
        return len(self.tile_plan.tiles(self.height // LATENT_FACTOR, self.width // LATENT_FACTOR))


def upscaled_size(width: int, height: int, upscaler_scale: float,
                  upscale_by: float) -> tuple[int, int]:
    """The final ``(width, height)``: ``int(side * upscale_by // 8 * 8)`` per side, the
    product floored to a multiple of 8.

    That is A1111's own ``Upscaler.upscale(img, scale)`` (modules/upscaler.py, 1.10.1 and
    Forge 2: ``dest_w = int((img.width * scale) // 8 * 8)``), which runs the model at its
    native ``upscaler_scale`` (see ``upscaler_passes``) and then resizes to that size with
    Lanczos, and the seed node's ``int(org_width * upscale_by // 8 * 8)``. So the size depends
    only on the original and ``upscale_by``; ``upscaler_scale`` only has to be positive.
    Errors: ``upscale_by`` outside 0.1..10, a side below 64 px.
    """
    if not UPSCALE_BY_MIN <= upscale_by <= UPSCALE_BY_MAX:
        raise ValueError(f"upscale_by must be between {UPSCALE_BY_MIN} and {UPSCALE_BY_MAX}, "
                         f"not {upscale_by}")
    if not upscaler_scale > 0:
        raise ValueError(f"the upscaler's scale must be positive, not {upscaler_scale}")
    if width < 1 or height < 1:
        raise ValueError(f"the image must have a size, not {width}x{height}")
    out = int(width * upscale_by // 8 * 8), int(height * upscale_by // 8 * 8)
    if min(out) < MIN_SIDE:
        raise ValueError(f"upscale_by {upscale_by} makes {width}x{height} into {out[0]}x{out[1]}; "
                         f"each side must be at least {MIN_SIDE} px")
    return out


def upscaler_passes(width: int, height: int, upscaler_scale: float, upscale_by: float) -> int:
    """How often ``Upscaler.upscale`` runs the model (of native ``upscaler_scale``): until the
    image covers the final size, at most 3 times, at least once when ``upscale_by == 1``
    (its loop's ``i > 0 or scale != 1``: the image is enlarged, then resized back), never
    when ``upscale_by < 1`` (only the resize). The seed node runs the model once always."""
    dest_w, dest_h = upscaled_size(width, height, upscaler_scale, upscale_by)
    passes = 0
    for i in range(3):
        if width >= dest_w and height >= dest_h and (i > 0 or upscale_by != 1):
            break
        width, height, passes = int(width * upscaler_scale), int(height * upscaler_scale), passes + 1
        if upscaler_scale == 1:
            break
    return passes


def plan_job(options: RefineUpscaleOptions, main: StageSettings, seed: int, width: int,
             height: int, schedule_for: Callable[[str, StageSettings], Schedule],
             resample_values: Mapping[str, Any], upscaler_scale: float = 1.0,
             denoise: Optional[float] = None, refine: bool = True) -> JobPlan:
    """The whole job for an image of ``width x height`` px before the upscale.

    ``main`` holds the job's own settings ("same as main"); ``schedule_for(model, settings)``
    returns the host's ``schedule(steps)`` for a model ("base"/"refiner") and settings;
    ``resample_values`` are the resample options (tile size, overlap, mode, weights, batch,
    steps, CFG, sampler, schedule type) of the tiler, whose denoise is ``tiler_denoise`` and
    whose seed is ``seed`` (``resample_seed`` is not used). With no refiner the second stage
    is the base continuing its own schedule with the base's settings (refiner steps, start
    and settings unused), and ``tiler_model`` "refiner" means the base.

    img2img: ``refine=False`` plans no base or refiner stage (the input is upscaled as it
    is). ``denoise`` (the main denoising strength) starts the base schedule at
    ``start_step(base steps, denoise)`` as the seed node does, with the noise of that step
    added to the input's latent; a start at or after the base's stop leaves the base out
    and the second stage starts from that step's sigma (with the noise added); denoise 0
    runs no stage.
    """
    size = upscaled_size(width, height, upscaler_scale, options.upscale_by)
    tiler, tile_plan = plan_tiler(options, main, seed, resample_values)
    passes = upscaler_passes(width, height, upscaler_scale, options.upscale_by)
    if not refine:
        return JobPlan(None, None, tiler, tile_plan, size[0], size[1], passes, seed)
    base = options.base.resolved(main)
    full = checked_schedule(schedule_for("base", base)(base.steps), base.steps, "base schedule")
    stop = options.base_stop
    sigmas_to_stop = base_sigmas(full, stop)
    first = 0 if denoise is None else start_step(base.steps, denoise)
    if first >= base.steps:
        return JobPlan(None, None, tiler, tile_plan, size[0], size[1], passes, seed)
    base_plan = None
    if first < stop:
        base_plan = StagePlan("base", "base", base, first, stop, stop - first,
                              sigmas_to_stop[first:].clone(), True, seed)
    handover = max(first, stop)          # the step the second stage starts from
    second = None
    if handover < base.steps and options.refiner == NO_REFINER:
        second = StagePlan("refiner", "base", base, handover, base.steps, base.steps - handover,
                           continue_sigmas(full, handover), base_plan is None, seed)
    elif handover < base.steps:
        ref = options.refiner_stage.resolved(main)
        ref_full = checked_schedule(schedule_for("refiner", ref)(ref.steps), ref.steps,
                                    "refiner schedule")
        sigmas = refiner_sigmas(ref_full, options.refiner_start, full[handover])
        second = StagePlan("refiner", "refiner", ref, options.refiner_start, ref.steps,
                           len(sigmas) - 1, sigmas, base_plan is None, seed)
    return JobPlan(base_plan, second, tiler, tile_plan, size[0], size[1], passes, seed)


def plan_tiler(options: RefineUpscaleOptions, main: StageSettings, seed: int,
               resample_values: Mapping[str, Any]) -> tuple[Optional[StagePlan], Optional[TilePlan]]:
    """The tiler stage and its ``TilePlan`` (``(None, None)`` when no step would run)."""
    if options.tiler_model not in TILER_MODELS:
        raise ValueError(f"tiler_model must be one of {', '.join(TILER_MODELS)}, "
                         f"not {options.tiler_model!r}")
    model = "refiner" if options.tiler_model == "refiner" and options.refiner != NO_REFINER else "base"
    values = dict(resample_values, resample_denoise=options.tiler_denoise)
    settings = StageSettings(int(values["resample_steps"]), float(values["resample_cfg"]),
                             values["resample_sampler"], values["resample_scheduler"]).resolved(main)
    first = start_step(settings.steps, options.tiler_denoise)
    if steps_to_run(settings.steps, options.tiler_denoise) == 0:
        return None, None
    tile_plan = TilePlan.from_values(values, settings.steps)
    return (StagePlan("tiler", model, settings, first, settings.steps, settings.steps - first,
                      None, True, seed), tile_plan)


def needs_sigma_control(stage: StagePlan) -> bool:
    """True when the host must run the stage's own sigmas (``sigma_override``): a base that
    stops mid-schedule or starts after step 0 (img2img), or a stage that continues a latent
    from a given sigma."""
    return stage.sigmas is not None and (not stage.add_noise or stage.first > 0
                                         or stage.last < stage.settings.steps)


def sigma_control_error(stage: StagePlan) -> str:
    """The sentence for a stage that needs sigma control but has a sampler without it."""
    if stage.add_noise and stage.last < stage.settings.steps:
        what = (f"stops after step {stage.last} of {stage.settings.steps} with its noise left in")
    elif stage.add_noise:
        what = f"starts at step {stage.first} of {stage.settings.steps} (img2img)"
    else:
        what = f"continues from sigma {float(stage.sigmas[0]):.4g}, where the base stopped"
    return (f"Refine + upscale: the {stage.name} stage {what}, which needs a sampler that runs "
            f"a given sigma schedule (a k-diffusion sampler such as Euler or DPM++ 2M); "
            f"{stage.settings.sampler!r} does not (DDIM, DDIM CFG++, PLMS and UniPC step on "
            f"timesteps, DPM fast and DPM adaptive choose their own sigmas).")


def sampler_error(plan: JobPlan, no_sigma_control: Collection[str] = NO_SIGMA_CONTROL) -> Optional[str]:
    """The first stage's error (for an HTTP 422) whose sampler cannot run its sigmas, or None."""
    for stage in (plan.base, plan.refiner):
        if stage is not None and needs_sigma_control(stage) and stage.settings.sampler in no_sigma_control:
            return sigma_control_error(stage)
    return None


def tiler_runs(plan: JobPlan, n_tiles: Optional[int] = None) -> int:
    """Sampler runs of the tiler per image: one per batch of tiles in independent mode, one
    run over the whole latent (its denoiser tiles each step) in fused and moving modes."""
    if plan.tiler is None or plan.tile_plan is None:
        return 0
    if plan.tile_plan.mode != "independent":
        return 1
    tiles = plan.tile_count() if n_tiles is None else n_tiles
    return math.ceil(tiles / plan.tile_plan.batch)


def progress_total(plan: JobPlan, n_tiles: Optional[int] = None) -> int:
    """Sampler steps per image, the host's progress unit: base steps + refiner steps + tiler
    runs × tiler steps (a batch of tiles is one run; ``n_tiles`` defaults to the plan's)."""
    base = plan.base.steps if plan.base is not None else 0
    refiner = plan.refiner.steps if plan.refiner is not None else 0
    tiler = plan.tiler.steps * tiler_runs(plan, n_tiles) if plan.tiler is not None else 0
    return base + refiner + tiler


def stage_runs(plan: JobPlan) -> int:
    """Sampler runs of the base and refiner stages for one batch of images (0, 1 or 2)."""
    return (plan.base is not None) + (plan.refiner is not None)


def progress_jobs(plan: JobPlan, batches: int, images: int) -> int:
    """The host's progress total (``shared.state.job_count``: one job per sampler run or
    step of the work) for ``batches`` batches making ``images`` images: each batch's base
    and refiner runs, then per image the upscale and the tiler's runs."""
    return batches * stage_runs(plan) + images * (1 + tiler_runs(plan))


# ------------------------------------------------------------------ tool values
def options_from_values(values: Mapping[str, Any]) -> RefineUpscaleOptions:
    """The plan's options from the Script's values (``tools.options`` keys; names already
    resolved to the host's spelling)."""
    return RefineUpscaleOptions(
        base=StageSettings(int(values["base_steps"]), float(values["base_cfg"]),
                           values["base_sampler"], values["base_scheduler"]),
        base_stop=int(values["base_stop"]), refiner=values["refiner"],
        refiner_stage=StageSettings(int(values["refiner_steps"]), float(values["refiner_cfg"]),
                                    values["refiner_sampler"], values["refiner_scheduler"]),
        refiner_start=int(values["refiner_start"]), upscale_by=float(values["upscale_by"]),
        tiler_denoise=float(values["tiler_denoise"]), tiler_model=values["tiler_model"])


def tiler_resample_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The latent-tile resample options (``params`` keys) of the tiler stage, from the
    Script's ``tiler_*`` values; the resample seed is the image's (-1)."""
    out = resample_defaults()
    out.update(enabled=True, resample=True, resample_mode=values["tiler_mode"],
               resample_tile_size=int(values["tiler_tile_size"]),
               resample_overlap=int(values["tiler_overlap"]), resample_batch=int(values["tiler_batch"]),
               resample_denoise=float(values["tiler_denoise"]), resample_steps=int(values["tiler_steps"]),
               resample_cfg=float(values["tiler_cfg"]), resample_sampler=values["tiler_sampler"],
               resample_scheduler=values["tiler_scheduler"], resample_seed=-1)
    return out
