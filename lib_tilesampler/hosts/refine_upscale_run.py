"""The Script tab's Refine & upscale in A1111 1.10 and Forge 2: one job of the host.

1. Stage 1 (txt2img; img2img with ``img2img_refine``): the host's own ``process_images(p)``
   runs the job (seeds, prompts, extra networks, batches, face restore, infotext), with
   ``p.sample`` replaced for this ``p`` by ``sample_stages``: the base samples its part of
   the plan's sigmas (``sigma_override``), the refiner checkpoint is loaded the host's way
   and continues the latent without new noise from exactly the base's last sigma; the host
   decodes. img2img without it: the input images are the stage-1 images.
2. Per image: a nested img2img job of the host (the image's prompt, seed and subseed; the
   upscaled size; the tiler's checkpoint through ``override_settings``) whose ``init``
   upscales the image (so the job's setting overrides apply to the upscaler too) and whose
   ``sample`` runs the latent-tile resample over the encoded upscale.
3. Outputs: the tiled image, then the upscaled image (unless ``tiled_only``), each with the
   job's infotext (every option of the tool), saved as the host saves and returned as its
   ``Processed``.

The user's checkpoint is put back after the job, an error or an interrupt. Skip ends the
image being worked on (the next one follows); Interrupt returns the images finished.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ..job import JOBS, TOOL_ATTR, Job
from ..params import ParamError
from ..preview import stage_work_per_evaluation, tiling_of
from ..speed import SPEED
from ..tools.options import TITLE, tool_infotext
from ..tools.refine_upscale import (JobPlan, StagePlan, StageSettings, options_from_values, plan_job,
                                    progress_jobs, tiler_resample_values)
from ..tools.refine_upscale_check import plan_for_check, resolve_tool_names, tool_error
from ..tools.sigmas import img2img_call_for_sigmas, sigma_override
from .webui_common import RESAMPLE_STAGE, overridden

TOOL = "refine_upscale"
LABEL = "Refine & upscale"


class ToolError(RuntimeError):
    """The tool cannot run with these options (said before any work)."""


class _StopImage(Exception):
    """Skip or Interrupt while an image is upscaled or tiled: drop the rest of its work."""


@dataclass
class Source:
    """One image to upscale, with what the tiler and the outputs need of it."""

    image: Any
    seed: int
    subseed: int
    prompt: str
    negative_prompt: str
    infotext: Optional[str]          # the job's infotext of that image (stage 1); else None


def run_refine_upscale(host: Any, p: Any, values: Mapping[str, Any]) -> Any:
    img2img = hasattr(p, "init_images")
    refine = not img2img or bool(values.get("img2img_refine"))
    host.fix_sampler(p)
    try:
        values = resolve_tool_names(values, host.tool_names())
    except ParamError as e:
        raise ToolError(f"{TITLE}: {e}") from None
    main = StageSettings(int(p.steps), float(p.cfg_scale), p.sampler_name, p.scheduler or "Automatic")
    denoise = float(p.denoising_strength) if img2img and refine else None
    inputs = [host.flatten(im) for im in (p.init_images or [])] if img2img and not refine else []
    sizes = [im.size for im in inputs] or [(int(p.width), int(p.height))]
    for size in dict.fromkeys(sizes):
        error = tool_error(values, host.tool_names(), host.tool_limits(), main, size, refine, denoise)
        if error:
            raise ToolError(f"{TITLE}: {error}")
    options = options_from_values(values)
    tiler_values = tiler_resample_values(values)
    # The stages' structure now (for the progress total); their sigmas come from the host's
    # schedules once the job's model is loaded (Forge loads it inside process_images).
    plan = plan_for_check(values, main, sizes[0][0], sizes[0][1], refine, denoise)
    refiner = host.checkpoint_info(values["refiner"]) if options.refiner != "None" else None
    images = int(p.n_iter) * int(p.batch_size)
    host.set_progress_total(progress_jobs(plan, int(p.n_iter) if refine else 0, images))

    job = JOBS.open(Job(dict(values), key=host.job_key(), label=LABEL))
    job.counts_nested = job.times_nested = True    # every stage's work is its own (tiles)
    job.model = host.model_key()
    host.end_with_generation(job)
    infotext = dict(tool_infotext(values), Script=TITLE)
    p.extra_generation_params.update(infotext)
    setattr(p, TOOL_ATTR, TOOL)
    saved = host.saved_checkpoint()
    run = _Run(host, p, job, values, plan, tiler_values, main, refiner, infotext, denoise)
    try:
        sources = run.stage1() if refine else run.inputs(inputs)
        return run.outputs(sources)
    finally:
        try:
            host.restore_checkpoint(saved)
            loaded = host.loaded_checkpoint()
            job.facts["checkpoint_after"] = getattr(loaded, "title", None)
        finally:
            JOBS.close(job)
            SPEED.record_job(job)


class _Run:
    def __init__(self, host: Any, p: Any, job: Job, values: Mapping[str, Any], plan: JobPlan,
                 tiler_values: dict, main: StageSettings, refiner: Any, infotext: dict,
                 denoise: Optional[float]) -> None:
        self.host, self.p, self.job, self.values, self.plan = host, p, job, values, plan
        self.tiler_values, self.main, self.refiner, self.infotext = tiler_values, main, refiner, infotext
        self.denoise = denoise
        self.stage_plan: Optional[JobPlan] = None      # with the host's sigmas (stage 1)
        self.base_checkpoint = host.job_checkpoint(p)
        self.stages: dict[str, str] = {}
        job.facts["refine_upscale"] = self.facts = {"images": 0, "tiles": 0, "stopped": None}

    # ---------------------------------------------------------------- stage 1
    def stage1(self) -> list[Source]:
        """Base and refiner through the host's ``process_images(p)``."""
        p, host = self.p, self.host
        notes = []
        if getattr(p, "enable_hr", False):
            notes.append("hires fix is off: the tool upscales")
        if getattr(p, "refiner_checkpoint", None) not in (None, "", "None", "none"):
            notes.append("the WebUI's refiner is off: the tool's refiner option switches")
        for note in notes:
            p.comment(f"{LABEL}: {note}")
        completed: set[int] = set()

        def sample(conditioning: Any, unconditional_conditioning: Any, seeds: Any, subseeds: Any,
                   subseed_strength: Any, prompts: Any) -> torch.Tensor:
            return self.sample_stages(completed)

        depth = len(JOBS)
        changes = {"do_not_save_samples": True, "do_not_save_grid": True, "refiner_checkpoint": None}
        if hasattr(p, "enable_hr"):
            changes["enable_hr"] = False
        p.sample = sample
        try:
            with overridden(p, **changes):
                processed = host.process(p)
        finally:
            del p.sample
            _close_nested(depth)
        texts = list(processed.infotexts or [])
        pictures = processed.images[processed.index_of_first_image:]
        step = max(1, len(pictures) // max(1, len(texts)))   # returned masks follow their image
        sources = []
        for i, text in enumerate(texts):
            if i // int(p.batch_size) not in completed or i * step >= len(pictures):
                continue
            sources.append(Source(pictures[i * step], int(p.all_seeds[i]), int(p.all_subseeds[i]),
                                  p.all_prompts[i], p.all_negative_prompts[i], text))
        return sources

    def sample_stages(self, completed: set) -> torch.Tensor:
        """``p.sample`` of stage 1: the base, then the refiner (or the base going on)."""
        p, host = self.p, self.host
        if self.stage_plan is None:        # the job's model is loaded now: the host's sigmas
            self.stage_plan = plan_job(options_from_values(self.values), self.main, 0, int(p.width),
                                       int(p.height), host.schedule_for(p), self.tiler_values,
                                       denoise=self.denoise)
        plan = self.stage_plan
        latent = getattr(p, "init_latent", None)
        ran = 0
        for stage in (plan.base, plan.refiner):
            if stage is None:
                continue
            if ran:
                host.next_progress_job()
            if host.should_stop():
                return latent
            if stage.model == "refiner" and self.refiner is not None \
                    and host.loaded_checkpoint() != self.refiner:
                host.show_stage(f"{LABEL}: loading the refiner")
                host.switch_checkpoint(p, self.refiner)
            self.stages[stage.name] = getattr(host.loaded_checkpoint(), "title", None)
            self.job.stage = stage.name
            self.job.count_run()           # its first evaluation is not timed from the last stage's
            self.job.set_work(stage_work_per_evaluation(int(p.width), int(p.height), int(p.batch_size)),
                              model=host.model_key())
            host.show_stage(f"{LABEL}: {stage.name}")
            latent = self.run_stage(stage, latent, fresh=latent is None)
            ran += 1
        if latent is None:                                 # nothing to run (txt2img cannot)
            raise ToolError(f"{TITLE}: no base or refiner step to run")
        if getattr(p, "mask", None) is not None and getattr(p, "init_latent", None) is not None:
            latent = latent * p.nmask + p.init_latent * p.mask
        if not host.should_stop():
            completed.add(int(p.iteration))
        self.job.facts["stage_checkpoints"] = dict(self.stages)
        return latent

    def run_stage(self, stage: StagePlan, latent: Optional[torch.Tensor], fresh: bool) -> torch.Tensor:
        """One sampler run of the host over the stage's sigmas: from noise (txt2img base),
        from the input with the noise of its first sigma (img2img), or continuing
        ``latent`` without new noise."""
        from modules import sd_samplers
        p, host, s = self.p, self.host, stage.settings
        sampler = sd_samplers.create_sampler(s.sampler, p.sd_model)
        override = sigma_override(stage.sigmas) if hasattr(sampler, "get_sigmas") \
            and stage.sigmas is not None else None
        steps_arg, strength = img2img_call_for_sigmas(stage.steps)
        with overridden(p, steps=s.steps, cfg_scale=s.cfg, sampler_name=s.sampler, scheduler=s.scheduler,
                        sampler_noise_scheduler_override=override, sampler=sampler,
                        denoising_strength=strength):
            p.setup_conds()
            c, uc = p.c, p.uc
            host.prepare_sampling(p)
            if fresh:
                x = p.rng.next()
                host.before_sampling(p, x, x, c, uc)
                x = host.take_noise(p, x)
                return sampler.sample(p, x, c, uc, steps=stage.steps,
                                      image_conditioning=p.txt2img_image_conditioning(x))
            if stage.add_noise:
                noise = p.rng.next()
                multiplier = getattr(p, "initial_noise_multiplier", 1.0)
                if multiplier not in (None, 1.0):
                    noise = noise * multiplier
            else:
                noise = torch.zeros_like(latent)
            host.before_sampling(p, latent, noise, c, uc)
            noise = host.take_noise(p, noise)
            image_cond = getattr(p, "image_conditioning", None)
            if image_cond is None:
                image_cond = p.txt2img_image_conditioning(latent)
            return sampler.sample_img2img(p, latent, noise.to(latent), c, uc, steps=steps_arg,
                                          image_conditioning=image_cond)

    # ---------------------------------------------------------------- img2img inputs
    def inputs(self, images: list) -> list[Source]:
        """img2img upscale only: each image of the job (batch count x batch size, the input
        images in turn) with its seed and prompt, as the host numbers them."""
        p, host = self.p, self.host
        host.fix_seed(p)
        p.setup_prompts()
        count = len(p.all_prompts)
        seed, subseed = int(p.seed), int(p.subseed)
        p.all_seeds = [seed + (i if p.subseed_strength == 0 else 0) for i in range(count)]
        p.all_subseeds = [subseed + i for i in range(count)]
        return [Source(images[i % len(images)], p.all_seeds[i], p.all_subseeds[i], p.all_prompts[i],
                       p.all_negative_prompts[i], None) for i in range(count)] if images else []

    # ---------------------------------------------------------------- per image
    def outputs(self, sources: list[Source]) -> Any:
        host, p, values = self.host, self.p, self.values
        images, texts, seeds, subseeds, prompts, negatives = [], [], [], [], [], []
        for source in sources:
            if host.stop_requested():
                self.facts["stopped"] = "interrupted"
                break
            host.clear_skip()
            tiled, upscaled, text = self.one_image(source)
            for image, suffix in ((tiled, ""), (None if values["tiled_only"] else upscaled, "-upscaled")):
                if image is None or (suffix and image is tiled):
                    continue
                host.with_infotext(image, text)
                host.save_output(p, image, source.seed, source.prompt, text, suffix)
                images.append(image)
                texts.append(text)
                seeds.append(source.seed)
                subseeds.append(source.subseed)
                prompts.append(source.prompt)
                negatives.append(source.negative_prompt)
            self.facts["images"] += tiled is not None
        return host.processed(p, images, texts, seeds, subseeds, prompts, negatives)

    def one_image(self, source: Source) -> tuple[Any, Any, str]:
        """(tiled image or None, upscaled image or None, infotext) of one source image."""
        host, values, job = self.host, self.values, self.job
        w, h = source.image.size
        plan = plan_job(options_from_values(values), self.main, source.seed, w, h,
                        host.schedule_for(self.p), self.tiler_values, refine=False)
        text = source.infotext or ""
        if plan.tiler is None:                        # tiler denoise 0: the upscale is the result
            job.stage = "upscale"
            host.show_stage(f"{LABEL}: upscale")
            upscaled = host.upscale(source.image, values["upscaler"], float(values["upscale_by"]))
            host.next_progress_job()
            if not text:
                text = _plain_infotext(self.p, self.infotext)
            return upscaled, upscaled, text
        kept: dict[str, Any] = {}
        p2 = self.tiler_job(source, plan, kept)
        depth = len(JOBS)
        try:
            processed = host.process(p2)
        except _StopImage:
            self.facts["stopped"] = "skipped" if not host.stop_requested() else "interrupted"
            return None, kept.get("upscaled"), text or _plain_infotext(self.p, self.infotext)
        finally:
            _close_nested(depth)
            p2.close()
        self.facts["tiles"] += plan.tile_count()
        tiled = processed.images[processed.index_of_first_image] if processed.images else None
        if not text and processed.infotexts:
            text = processed.infotexts[processed.index_of_first_image]
        return tiled, kept.get("upscaled"), text

    def tiler_job(self, source: Source, plan: JobPlan, kept: dict) -> Any:
        """The nested img2img job that upscales ``source`` (in its ``init``) and tiles it."""
        host, values, p, job = self.host, self.values, self.p, self.job
        tiler = plan.tiler
        overrides = dict(getattr(p, "override_settings", None) or {})
        if tiler.model == "refiner" and self.refiner is not None and self.refiner != self.base_checkpoint:
            overrides["sd_model_checkpoint"] = self.refiner.name
        p2 = host.make_img2img(
            p, prompt=source.prompt, negative_prompt=source.negative_prompt, styles=[],
            seed=source.seed, subseed=source.subseed, sampler_name=tiler.settings.sampler,
            scheduler=tiler.settings.scheduler, batch_size=1, n_iter=1, steps=tiler.settings.steps,
            cfg_scale=tiler.settings.cfg, width=plan.width, height=plan.height,
            restore_faces=False if source.infotext is not None else p.restore_faces,
            init_images=[source.image], resize_mode=0, denoising_strength=plan.tile_plan.denoise,
            override_settings=overrides, override_settings_restore_afterwards=True,
            do_not_save_samples=True, do_not_save_grid=True, extra_generation_params=dict(self.infotext))
        setattr(p2, TOOL_ATTR, TOOL)
        cls = type(p2)

        def init(all_prompts: Any, all_seeds: Any, all_subseeds: Any) -> None:
            job.stage = "upscale"
            host.show_stage(f"{LABEL}: upscale")
            upscaled = host.upscale(source.image, values["upscaler"], float(values["upscale_by"]))
            if upscaled.size != (plan.width, plan.height):
                raise RuntimeError(f"{TITLE}: the upscaler made {upscaled.size}, not "
                                   f"{(plan.width, plan.height)}")
            kept["upscaled"] = upscaled
            if host.should_stop():
                raise _StopImage()
            p2.init_images = [upscaled]
            cls.init(p2, all_prompts, all_seeds, all_subseeds)

        def sample(conditioning: Any, unconditional_conditioning: Any, seeds: Any, subseeds: Any,
                   subseed_strength: Any, prompts: Any) -> torch.Tensor:
            kept["tiler_checkpoint"] = getattr(host.loaded_checkpoint(), "title", None)
            self.job.facts["tiler_checkpoint"] = kept["tiler_checkpoint"]
            host.prepare_sampling(p2)
            noise = p2.rng.next()
            host.before_sampling(p2, p2.init_latent, noise, conditioning, unconditional_conditioning)
            holder = _SamplerArgs({"cond": conditioning, "uncond": unconditional_conditioning,
                                   "image_cond": p2.image_conditioning})
            tiling = tiling_of(plan.tile_plan, plan.width, plan.height, after=True)
            job.set_work(stage_work_per_evaluation(plan.width, plan.height, 1, tiling),
                         stage=RESAMPLE_STAGE, model=host.model_key())
            out = host.resample_after(p2, job, p2.init_latent, holder, plan.tile_plan,
                                      self.tiler_values_for(tiler), [source.seed], label=LABEL)
            if host.should_stop():
                raise _StopImage()
            return out

        p2.init = init
        p2.sample = sample
        return p2

    def tiler_values_for(self, tiler: StagePlan) -> dict:
        return dict(self.tiler_values, resample_sampler=tiler.settings.sampler,
                    resample_scheduler=tiler.settings.scheduler, resample_cfg=tiler.settings.cfg,
                    resample_steps=tiler.settings.steps)


class _SamplerArgs:
    """What ``resample_after`` reads of a sampler: the conditioning it samples with."""

    def __init__(self, extra: dict) -> None:
        self.sampler_extra_args = extra


def _close_nested(depth: int) -> None:
    """Close the jobs a nested run opened and left open (after a skip or an error)."""
    jobs = list(JOBS)
    if len(jobs) > depth:
        JOBS.close(jobs[depth])


def _plain_infotext(p: Any, infotext: Mapping[str, Any]) -> str:
    """An infotext for an image that no host pass described (upscale only, tiler off)."""
    from modules import infotext_utils
    params = ", ".join(f"{k}: {infotext_utils.quote(v)}" for k, v in infotext.items())
    return f"{p.prompt}\nNegative prompt: {p.negative_prompt}\nSeed: {p.seed}, {params}"
