"""What A1111 1.10 and Forge 2 share (Forge is a fork of A1111 1.10): sampler and
scheduler names, progress and interrupt state, the end of a generation, other
extensions in the job, and the latent-tile resample pass run with the host's own
samplers. The two adapters differ in how a denoiser is wrapped, how HyperTile is
installed and how they follow a model switched to in the middle of a job.
"""
from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from ..job import Job, JobStack
from ..module_patch import PatchSet
from ..params import SAME, ParamError, group_enabled, moving_sampler_error
from ..tiling.conditioning import crop_cond, stack_tiles
from ..tiling.denoisers import Denoiser, TileInterrupted
from ..tiling.independent import steps_to_run
from ..tiling.passes import (TilePlan, Wrap, derive_seed, img2img_steps, place_within,
                             run_resample, sampler_runs, tile_seeds)
from ..tiling.plan import Tile
from .api_routes import RequestChecks, add_api_route, request_checks
from .base import After
from .job_scripts import scripts_titled
from .webui_tools import ToolsHost

STATE_TEXT = "Tile Sampler"
NOTE_KEY = "Tile Sampler note"
RESAMPLE_STAGE = "resample"
NOISE_PURPOSE, SDE_PURPOSE, TILE_NOISE_PURPOSE = 1, 2, 3

# Tilings of other extensions that stack with ours: (script title, what to call it).
OTHER_LATENT_TILERS = (("Tiled Diffusion", "Tiled Diffusion"),
                       ("MultiDiffusion Integrated", "Forge's MultiDiffusion"))


class RowSeedsRNG:
    """Stands in for ``p.rng`` while the resample samples: ``next()`` gives unit noise of
    the batch's shape, one CPU generator per row seeded from ``seeds``, so a row's noise
    does not depend on the other rows of the batch."""

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.shape = tuple(shape)
        self.device, self.dtype = device, dtype
        self.generators = [torch.Generator().manual_seed(int(s) & 0xFFFF_FFFF_FFFF_FFFF) for s in seeds]

    def next(self) -> torch.Tensor:
        rows = [torch.randn(self.shape, generator=g) for g in self.generators]
        return torch.stack(rows).to(self.device, self.dtype)


@contextlib.contextmanager
def overridden(obj: Any, **values: Any) -> Iterator[None]:
    """Set attributes for the duration of the block, then put the old values back."""
    old = {k: getattr(obj, k) for k in values if hasattr(obj, k)}
    missing = [k for k in values if not hasattr(obj, k)]
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)
        for k in missing:
            with contextlib.suppress(AttributeError):
                delattr(obj, k)


def _full_mask(mask: Optional[torch.Tensor], rows: int) -> Optional[torch.Tensor]:
    if mask is None or not isinstance(mask, torch.Tensor):
        return mask
    return mask.expand(rows, *mask.shape[-3:]) if mask.dim() == 3 else mask


def _script_args(p: Any, titles: Sequence[str]) -> Iterator[tuple[str, list]]:
    """``(title, args)`` of the always-on scripts of the job whose title is one of
    ``titles`` (case-insensitive)."""
    args = list(getattr(p, "script_args", None) or [])
    for script in scripts_titled(p, titles):
        yield script.title(), args[script.args_from:script.args_to]


class JobHostState:
    """What an adapter keeps for one job (in ``job.host``)."""

    def __init__(self) -> None:
        self.watched: "weakref.WeakSet[Any]" = weakref.WeakSet()


class WebUIFamilyHost(ToolsHost):
    """Shared glue; subclasses install HyperTile, wrap denoisers and follow model switches."""

    name = "webui"
    state_class: type = JobHostState

    def __init__(self) -> None:
        self.jobs: Optional[JobStack] = None

    def state(self, job: Job) -> Any:
        """The adapter's state of ``job``, made on first use."""
        if not isinstance(job.host, self.state_class):
            job.host = self.state_class()
        return job.host

    # ------------------------------------------------------------------ Script tools
    def run_refine_upscale(self, p: Any, values: Mapping[str, Any]) -> Any:
        """The Script tab's Refine & upscale on ``p`` (see ``refine_upscale_run``)."""
        from .refine_upscale_run import run_refine_upscale
        return run_refine_upscale(self, p, values)

    # ------------------------------------------------------------------------ jobs
    @staticmethod
    def job_key() -> Any:
        from modules import shared
        return getattr(shared.state, "time_start", None)

    def watch_jobs(self, jobs: JobStack) -> None:
        from modules import script_callbacks
        self.jobs = jobs
        script_callbacks.on_cfg_denoiser(self._on_cfg_denoiser, name="tilesampler_cfg_denoiser")
        script_callbacks.on_model_loaded(self._on_model_loaded, name="tilesampler_model_loaded")

    def current_job(self) -> Optional[Job]:
        job = self.jobs.current() if self.jobs is not None else None
        return job if job is not None and not job.closed else None

    def _on_cfg_denoiser(self, params: Any) -> None:
        job = self.current_job()
        if job is None:
            return
        job.count()
        for outer in self.jobs or ():
            if outer is not job and outer.counts_nested and not outer.closed:
                outer.count()
        if job.tiles is not None:
            self.show_progress(job)
        self.follow_model(job, params)

    def _on_model_loaded(self, sd_model: Any) -> None:
        job = self.current_job()
        if job is not None:
            self.model_loaded(job, sd_model)

    def follow_model(self, job: Job, params: Any) -> None:
        """Called at every denoiser call: re-apply what a model switch dropped."""

    def model_loaded(self, job: Job, sd_model: Any) -> None:
        """Called when the host loads a model in the middle of ``job``."""

    def end_with_generation(self, job: Job) -> None:
        """Close every open job when the host ends the top-level generation
        (``shared.state.end``, which both WebUIs call after every UI and API job; an
        exception in sampling closes the job earlier, see ``watch_sampler``)."""
        from modules import shared
        jobs = self.jobs
        if jobs is None or getattr(shared.state.end, "__tilesampler_patch__", False):
            return
        patches = PatchSet()

        def end(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            try:
                jobs.close_all()
            finally:
                return inner(*args, **kwargs)

        patches.wrap_method(shared.state, "end", end)

        def undo() -> None:              # removed as soon as no job is open any more
            patches.restore()
            with contextlib.suppress(ValueError):
                jobs.on_empty.remove(undo)
        jobs.on_empty.append(undo)

    # ------------------------------------------------------------------ samplers
    def watch_sampler(self, p: Any, job: Job, sampler: Any,
                      after: Callable[[], Optional[After]]) -> None:
        """``sampler.sample`` / ``sample_img2img`` close ``job`` when they raise (the
        WebUI's own interrupt is caught inside them) and hand their latent to
        ``after()``, before the WebUI blends the inpainting mask and decodes."""
        state = self.state(job)
        if sampler in state.watched:
            return
        state.watched.add(sampler)
        jobs = self.jobs
        patches = PatchSet()

        def call(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            job.new_run()
            try:
                samples = inner(*args, **kwargs)
                then = after()
                return samples if then is None else then(samples, sampler)
            except Exception:
                if jobs is not None:
                    jobs.close(job)
                else:
                    job.close()
                raise

        patches.wrap_method(sampler, "sample_img2img", call)
        patches.wrap_method(sampler, "sample", call)
        job.track(patches)

    # -------------------------------------------------------------- names, checks
    def sampler_names(self) -> list[str]:
        from modules import sd_samplers
        return [s.name for s in sd_samplers.visible_samplers()]

    def scheduler_names(self) -> list[str]:
        from modules import sd_schedulers
        return [s.label for s in sd_schedulers.schedulers]

    def checkpoint_names(self) -> list[str]:
        """The checkpoints of the host's list, by title (as its checkpoint dropdown)."""
        from modules import sd_models
        return list(sd_models.checkpoint_tiles())

    def upscaler_names(self) -> list[str]:
        """The host's upscalers ("None", "Lanczos", "Nearest", ESRGAN models, ...)."""
        from modules import shared
        return [u.name for u in shared.sd_upscalers]

    @staticmethod
    def sampler_of(name: str) -> Optional[str]:
        """A sampler's name as the host spells it, by name or alias in any case; None."""
        from modules import sd_samplers
        return sd_samplers.samplers_map.get(name.lower()) if isinstance(name, str) and name else None

    @staticmethod
    def scheduler_of(name: str) -> Optional[str]:
        """A schedule type's label, by label, name or alias in any case; None."""
        from modules import sd_schedulers
        if not isinstance(name, str):
            return None
        for s in sd_schedulers.schedulers:
            options = [s.label, s.name, *(getattr(s, "aliases", None) or [])]
            if name.lower() in (o.lower() for o in options):
                return s.label
        return None

    def resolve_names(self, values: Mapping[str, Any]) -> dict:
        """The host's own look-ups: a sampler by name or alias in any case, a schedule
        type by label, name or alias, and the old "<sampler> <schedule type>" names."""
        from modules import sd_schedulers
        out = dict(values)
        if not group_enabled(values, "resample"):
            return out
        schedulers = list(sd_schedulers.schedulers)
        scheduler_of, sampler_of = self.scheduler_of, self.sampler_of

        sampler, scheduler = out["resample_sampler"], out["resample_scheduler"]
        if sampler != SAME and sampler_of(sampler) is None:
            for s in schedulers:          # "DPM++ 2M Karras": a sampler and a schedule type
                for option in [s.label, s.name, *(getattr(s, "aliases", None) or [])]:
                    head = sampler[:-len(option) - 1]
                    if sampler.lower().endswith(" " + option.lower()) and sampler_of(head):
                        sampler = head
                        if scheduler == SAME:
                            scheduler = s.label
                        break
                if sampler_of(sampler):
                    break
        if sampler != SAME:
            if sampler_of(sampler) is None:
                raise ParamError(f"resample_sampler {values['resample_sampler']!r} is not one of: "
                                 f"{', '.join([SAME] + self.sampler_names())}")
            out["resample_sampler"] = sampler_of(sampler)
        if scheduler != SAME:
            if scheduler_of(scheduler) is None:
                raise ParamError(f"resample_scheduler {values['resample_scheduler']!r} is not one "
                                 f"of: {', '.join([SAME] + self.scheduler_names())}")
            out["resample_scheduler"] = scheduler_of(scheduler)
        return out

    def name_error(self, values: Mapping[str, Any]) -> Optional[str]:
        """``resolve_names`` as a message (for the API check), or None."""
        try:
            self.resolve_names(values)
        except ParamError as e:
            return str(e)
        return None

    def settings_error(self, values: Mapping[str, Any], main_steps: Optional[int],
                       main_sampler: Optional[str] = None) -> Optional[str]:
        """UniPC runs at least its order in steps (Settings: "UniPC order"): a resample
        with fewer steps cannot run; an adaptive sampler cannot run the moving mode
        (``moving_sampler_error``). Both are said before any work starts."""
        if not group_enabled(values, "resample"):
            return None
        try:
            values = self.resolve_names(values)
        except ParamError as e:
            return str(e)
        moving = moving_sampler_error(values, main_sampler)
        if moving or main_steps is None:
            return moving
        from modules import shared
        sampler = values["resample_sampler"]
        if sampler == SAME or "unipc" not in sampler.lower():
            return None
        steps = int(values["resample_steps"] or main_steps)
        n = steps_to_run(steps, float(values["resample_denoise"]))
        order = int(getattr(shared.opts, "uni_pc_order", 3))
        if 0 < n < order:
            return (f"resample_sampler UniPC needs at least {order} steps (its order, set in "
                    f"Settings), but the resample runs {n} ({steps} steps at denoise "
                    f"{values['resample_denoise']}): raise the steps or the denoise, or choose "
                    "another sampler")
        return None

    # ------------------------------------------------------------ other extensions
    def other_tilers(self, p: Any, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = []
        if group_enabled(values, "resample"):
            for title, label in OTHER_LATENT_TILERS:
                for _, args in _script_args(p, [title]):
                    if args and args[0] is True:
                        found.append((label, "resample"))
        return found

    def units_not_tiled(self, p: Any) -> list[tuple[str, bool]]:
        """``(why, needs the whole image)`` for each ControlNet unit of the job that cannot
        follow the tiles; the ones that need the whole image turn the resample off."""
        return []

    def needs_place(self, p: Any, job: Job) -> bool:
        """True when the job's tile calls need to know their tiles (ControlNet units,
        SDXL's per-tile size conditioning)."""
        return False

    def sampler_takes_sigmas(self, sampler_name: str) -> bool:
        """True unless ``sampler_name`` is one of the host's timestep samplers (DDIM, PLMS,
        UniPC), which cannot run a given sigma schedule."""
        from modules import sd_samplers, sd_samplers_timesteps
        name = sd_samplers.samplers_map.get(str(sampler_name).lower(), sampler_name)
        return name not in {s.name for s in sd_samplers_timesteps.samplers_data_timesteps}

    # ------------------------------------------------------------------ Script tools
    def run_mask_grid(self, p: Any, values: Mapping[str, Any]) -> Any:
        """The Script's mask-grid tool (``mask_grid_run``); a mistake of the user's is a
        sentence in the UI and an HTTP 422 from the API."""
        from ..tools.mask_grid import MaskGridError
        from .mask_grid_run import run_mask_grid
        try:
            return run_mask_grid(self, p, values)
        except MaskGridError as e:
            if getattr(p, "is_api", False):
                from fastapi import HTTPException
                raise HTTPException(status_code=422, detail=str(e)) from None
            raise

    # ---------------------------------------------------------------------- HTTP API
    @staticmethod
    def parse_infotext(text: str) -> dict:
        """``text`` parsed by the host's own infotext parser (as its API's ``infotext``
        field and *Read generation parameters* are)."""
        from modules import infotext_utils
        return infotext_utils.parse_generation_parameters(text)

    def api_request_checks(self, app: Any) -> RequestChecks:
        """The checks run on this app's txt2img/img2img API requests (see
        ``api_routes``); add one with ``.add(name, check)`` from ``on_app_started``."""
        return request_checks(app, self.parse_infotext)

    @staticmethod
    def add_api_route(app: Any, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        """Add an API route of ours behind the host's ``--api-auth``."""
        add_api_route(app, path, endpoint, **kwargs)

    # ------------------------------------------------------------ progress and interrupt
    @staticmethod
    def should_stop() -> bool:
        from modules import shared
        return bool(shared.state.interrupted or shared.state.skipped)

    def show_tiles(self, done: int, total: int, label: Optional[str] = None) -> None:
        """``done`` of the stage's ``total`` tiles are done (``done < total``: the next
        ones are being sampled): the progress text says so until the stage ends. ``label``
        names the stage in the text (default: ours and the stage's name)."""
        job = self.current_job()
        if job is not None:
            job.tiles = (done, total)
            job.tiles_label = label
            self.show_progress(job)

    @staticmethod
    def show_progress(job: Job) -> None:
        """The progress text of a tiled stage: the stage, the tile being sampled and the
        step (refreshed at every evaluation; the host's bar and ETA count the sampler
        runs and the steps). Outside a tiled stage a text of ours is cleared."""
        from modules import shared
        state = shared.state
        if job.tiles is None:
            if str(getattr(state, "textinfo", "") or "").startswith(STATE_TEXT):
                state.textinfo = None
            return
        done, total = job.tiles
        step = ""
        if getattr(state, "sampling_steps", 0):
            step = f", step {min(state.sampling_step + 1, state.sampling_steps)}/{state.sampling_steps}"
        label = getattr(job, "tiles_label", None) or f"{STATE_TEXT} {job.stage}"
        state.textinfo = f"{label}: tile {min(done + 1, total)}/{total}{step}"

    @staticmethod
    def model_key() -> Optional[str]:
        """What the speed of sampling is measured for: the loaded checkpoint's short hash
        (its title when the hash is not known yet)."""
        from modules import shared
        info = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
        if info is None:
            return getattr(shared.opts, "sd_model_checkpoint", None) or None
        return getattr(info, "shorthash", None) or getattr(info, "title", None) or None

    @staticmethod
    def show_stage(text: str) -> None:
        from modules import shared
        shared.state.textinfo = text

    @staticmethod
    def stop_requested() -> bool:
        """Interrupt, or "stop after the current image" (the host's Skip is not)."""
        from modules import shared
        return bool(shared.state.interrupted or getattr(shared.state, "stopping_generation", False))

    @staticmethod
    def set_progress_total(n: int) -> None:
        """The host's progress total for the whole job (its own default counts batches)."""
        from modules import shared
        shared.state.job_count = n

    @staticmethod
    def add_progress_jobs(n: int) -> None:
        from modules import shared
        if n > 0 and shared.state.job_count > 0:
            shared.state.job_count += n

    @staticmethod
    def next_progress_job() -> None:
        from modules import shared
        shared.state.nextjob()

    def sampler_runs(self, plan: TilePlan, latent_hw: Sequence[int]) -> int:
        return sampler_runs(plan, int(latent_hw[0]), int(latent_hw[1]))

    @staticmethod
    def interrupted_exception() -> type:
        from modules.sd_samplers_common import InterruptedException
        return InterruptedException

    def host_denoiser(self, wrap: Wrap) -> Wrap:
        """``wrap`` with a tile interrupt turned into the host's own interrupt, which its
        samplers catch (they return the last latent, as after any Interrupt)."""
        interrupted = self.interrupted_exception()

        def wrapped(denoiser: Denoiser) -> Denoiser:
            tiled = wrap(denoiser)

            def call(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
                try:
                    return tiled(x, t, cond)
                except TileInterrupted as e:
                    raise interrupted() from e
            return call
        return wrapped

    # ------------------------------------------------------------- denoiser wrapping
    def wrap_sampling(self, p: Any, job: Job, sampler: Any,
                      wrap: Callable[[], Optional[Wrap]]) -> PatchSet:
        raise NotImplementedError

    # ---------------------------------------------------------------- the after pass
    def resample_after(self, p: Any, job: Job, samples: torch.Tensor, sampler: Any,
                       plan: TilePlan, values: Mapping[str, Any],
                       seeds: Sequence[int], label: Optional[str] = None) -> torch.Tensor:
        """Run the resample pass over ``samples``, the latent ``sampler`` returned, with
        the conditioning the sampler holds now (after a refiner switch, the refiner's) and
        the model loaded now. An interrupt leaves ``samples`` as they were. Exactly the
        seed node's steps run, whatever the WebUI's img2img step settings."""
        from modules import sd_samplers

        sampler_name, scheduler, cfg = self._pass_settings(p, values)
        places = self.needs_place(p, job)
        if places and plan.mode == "independent" and plan.batch > 1:
            # a tile's hint and sizes go with all the rows of a sampler run: one tile per run
            more_runs = sampler_runs(dataclasses.replace(plan, batch=1), *samples.shape[-2:]) \
                - sampler_runs(plan, *samples.shape[-2:])
            plan = dataclasses.replace(plan, batch=1)
            self.add_progress_jobs(more_runs)
        extra = getattr(sampler, "sampler_extra_args", None) or {}
        c, uc, image_cond = extra.get("cond"), extra.get("uncond"), extra.get("image_cond")
        rows = samples.shape[0]
        latent_hw = tuple(samples.shape[-2:])
        saved_infotext = dict(p.extra_generation_params)
        planned_runs = self.sampler_runs(plan, latent_hw)
        runs = [0]
        settings = dict(cfg_scale=cfg, sampler_name=sampler_name, scheduler=scheduler,
                        hr_scheduler=scheduler, hr_cfg=cfg, steps=plan.steps)

        def run_sampler(latent: torch.Tensor, noise: torch.Tensor, row_seeds: Sequence[int],
                        cond: Any, uncond: Any, image: Any, wrap: Optional[Wrap],
                        **more: Any) -> torch.Tensor:
            new = sd_samplers.create_sampler(sampler_name, p.sd_model)
            timesteps = hasattr(new, "get_timesteps")
            steps_arg, strength = img2img_steps(plan.steps, plan.denoise, timesteps)
            wrapped = self.wrap_sampling(p, job, new, lambda: wrap) if wrap is not None else None
            rng = RowSeedsRNG(latent.shape[1:], [derive_seed(s, NOISE_PURPOSE) for s in row_seeds],
                              latent.device)
            sde_seeds = [derive_seed(s, SDE_PURPOSE) for s in row_seeds]
            runs[0] += 1
            job.count_run()
            self.next_progress_job()
            try:
                with overridden(p, rng=rng, denoising_strength=strength, all_seeds=sde_seeds,
                                iteration=0, batch_size=len(sde_seeds), **settings, **more):
                    return new.sample_img2img(p, latent, noise, cond, uncond, steps=steps_arg,
                                              image_conditioning=image)
            finally:
                if wrapped is not None:
                    wrapped.restore()

        def sample_whole(latent: torch.Tensor, noise: torch.Tensor, wrap: Wrap) -> torch.Tensor:
            return run_sampler(latent, noise, seeds[:rows], c, uc, image_cond, wrap)

        def sample_tiles(latents: torch.Tensor, noises: torch.Tensor, tiles: Sequence[Tile]) -> torch.Tensor:
            masks = {}
            for attr in ("mask", "nmask"):
                full = _full_mask(getattr(p, attr, None), rows)
                if isinstance(full, torch.Tensor) and tuple(full.shape[-2:]) == latent_hw:
                    masks[attr] = stack_tiles(full, tiles)
            tile_cond = crop_cond(image_cond, tiles, latent_hw, rows) if image_cond is not None else None
            k = len(tiles)
            wrap = place_within(tiles[0], latent_hw) if places and k == 1 else None
            return run_sampler(latents, noises, tile_seeds(seeds[:rows], tiles, latent_hw, TILE_NOISE_PURPOSE),
                               _repeat_conds(c, k), _repeat_conds(uc, k), tile_cond, wrap, **masks)

        previous_stage, job.stage = job.stage, RESAMPLE_STAGE
        if plan.mode != "moving":
            self.show_tiles(0, len(plan.tiles(*latent_hw)), label)
        try:
            out = run_resample(samples, plan, seeds, sample_whole, sample_tiles,
                               on_tile=lambda done, total: self.show_tiles(done, total, label),
                               should_stop=self.should_stop)
        except TileInterrupted as e:
            print(f"[{STATE_TEXT}] resample interrupted after {e.done} of {e.total} tiles; "
                  "keeping the latent as it was before the resample")
            out = samples
        finally:
            job.stage = previous_stage
            job.tiles = None
            self.show_progress(job)
            note = p.extra_generation_params.get(NOTE_KEY)
            p.extra_generation_params.clear()
            p.extra_generation_params.update(saved_infotext)
            if note:                                   # what the pass had to say stays
                p.extra_generation_params[NOTE_KEY] = note
            for _ in range(planned_runs - runs[0]):   # runs skipped: keep the bar's total true
                self.next_progress_job()
        return out

    @staticmethod
    def _pass_settings(p: Any, values: Mapping[str, Any]) -> tuple[str, str, float]:
        """The resample's sampler, schedule type and CFG, "same as main" resolved against
        the pass it follows (the hires pass's own settings after a hires pass)."""
        hr = bool(getattr(p, "is_hr_pass", False))
        sampler_name = values["resample_sampler"]
        if sampler_name == SAME:
            sampler_name = (getattr(p, "hr_sampler_name", None) if hr else None) or p.sampler_name
        scheduler = values["resample_scheduler"]
        if scheduler == SAME:
            scheduler = (getattr(p, "hr_scheduler", None) if hr else None) \
                or getattr(p, "scheduler", None) or "Automatic"
        cfg = values["resample_cfg"] or (getattr(p, "hr_cfg", None) if hr else None) or p.cfg_scale
        return sampler_name, scheduler, float(cfg)


def _repeat_conds(cond: Any, k: int) -> Any:
    """The WebUI's prompt conditioning for ``k`` tiles stacked tile-major: the per-image
    entries repeated ``k`` times (``MulticondLearnedConditioning`` or a list of schedules)."""
    if k == 1 or cond is None:
        return cond
    if hasattr(cond, "batch") and hasattr(cond, "shape"):
        return type(cond)(shape=(len(cond.batch) * k,), batch=list(cond.batch) * k)
    if isinstance(cond, list):
        return cond * k
    return cond
