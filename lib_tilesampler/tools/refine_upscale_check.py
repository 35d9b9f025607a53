"""What the refine + upscale tool checks before any work: names the host must know, the
plan (steps, starts, tiles), the size of the upscaled image, and samplers that cannot run
a stage. The same sentences answer an API request with HTTP 422 and stop a UI job before
it starts.

The host is seen through ``HostNames`` (look-ups that return the host's own spelling, or
None) and a few numbers; nothing here imports a WebUI.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..api_check import ApiRequest
from ..params import SAME, ParamError
from ..tiling.independent import steps_to_run
from .refine_upscale import (NO_REFINER, JobPlan, StageSettings, options_from_values, plan_job,
                             sampler_error, tiler_resample_values)

Lookup = Callable[[str], Optional[str]]
_DATA_URL = re.compile(r"^data:[^,]*?;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class HostNames:
    """The host's look-ups (a name in any accepted spelling -> the host's own, or None) and
    its lists (for the messages)."""

    sampler: Lookup
    scheduler: Lookup
    checkpoint: Lookup
    upscaler: Lookup
    samplers: Sequence[str] = ()
    schedulers: Sequence[str] = ()
    checkpoints: Sequence[str] = ()
    upscalers: Sequence[str] = ()


@dataclass(frozen=True)
class HostLimits:
    max_pixels: Optional[int] = None    # the host's largest image (its "Maximum image size")
    unipc_order: int = 3                # UniPC runs at least this many steps


STAGE_NAME_KEYS = (("base_sampler", "base_scheduler"), ("refiner_sampler", "refiner_scheduler"),
                   ("tiler_sampler", "tiler_scheduler"))


def _choices(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def resolve_tool_names(values: Mapping[str, Any], names: HostNames) -> dict[str, Any]:
    """``values`` with every sampler, schedule type, the refiner checkpoint and the upscaler
    in the host's own spelling ("same as main" and "None" stay); ``ParamError`` naming the
    key and the choices when the host does not know one."""
    out = dict(values)
    for sampler_key, scheduler_key in STAGE_NAME_KEYS:
        for key, lookup, choices in ((sampler_key, names.sampler, names.samplers),
                                     (scheduler_key, names.scheduler, names.schedulers)):
            if out[key] == SAME:
                continue
            found = lookup(out[key])
            if found is None:
                raise ParamError(f"{key} {out[key]!r} is not one of: {_choices([SAME, *choices])}")
            out[key] = found
    if out["refiner"] != NO_REFINER:
        found = names.checkpoint(out["refiner"])
        if found is None:
            raise ParamError(f"refiner {out['refiner']!r} is not a checkpoint of this WebUI; one of: "
                             f"{_choices([NO_REFINER, *names.checkpoints])}")
        out["refiner"] = found
    found = names.upscaler(out["upscaler"])
    if found is None:
        raise ParamError(f"upscaler {out['upscaler']!r} is not one of: {_choices(list(names.upscalers))}")
    out["upscaler"] = found
    return out


def standin_schedule(steps: int) -> torch.Tensor:
    """A k-diffusion exponential schedule (SD's sigma range) for checks that need the
    stages' structure, not the host's exact sigmas."""
    sigmas = torch.linspace(math.log(14.6146), math.log(0.0292), steps).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def plan_for_check(values: Mapping[str, Any], main: StageSettings, width: int, height: int,
                   refine: bool, denoise: Optional[float]) -> JobPlan:
    """The job's plan with stand-in schedules (``ValueError`` for a plan that cannot be)."""
    return plan_job(options_from_values(values), main, 0, width, height,
                    lambda model, settings: standin_schedule, tiler_resample_values(values),
                    denoise=denoise, refine=refine)


def unipc_error(plan: JobPlan, order: int) -> Optional[str]:
    """UniPC runs at least ``order`` steps (Settings: "UniPC order")."""
    stages = [s for s in (plan.base, plan.refiner) if s is not None]
    runs = [(s.name, s.settings.sampler, s.steps) for s in stages]
    if plan.tiler is not None and plan.tile_plan is not None:
        runs.append(("tiler", plan.tiler.settings.sampler,
                     steps_to_run(plan.tile_plan.steps, plan.tile_plan.denoise)))
    for name, sampler, steps in runs:
        if "unipc" in sampler.lower() and 0 < steps < order:
            return (f"the {name} stage's sampler UniPC needs at least {order} steps (its order, "
                    f"set in Settings), but the stage runs {steps}: raise its steps or choose "
                    "another sampler")
    return None


def tool_error(values: Mapping[str, Any], names: HostNames, limits: HostLimits,
               main: StageSettings, size: Optional[tuple[int, int]], refine: bool,
               denoise: Optional[float] = None) -> Optional[str]:
    """Why the tool cannot run with ``values`` (a sentence), or None. ``size`` is the
    image before the upscale (None when only the job knows it: the size checks wait);
    ``refine`` runs the base and refiner stages (txt2img, or img2img with
    ``img2img_refine``) from the main ``denoise`` (img2img)."""
    if values.get("tool") != "refine_upscale":
        return None
    try:
        resolved = resolve_tool_names(values, names)
        main = StageSettings(main.steps, main.cfg, names.sampler(main.sampler) or main.sampler,
                             names.scheduler(main.scheduler) or main.scheduler)
        width, height = size if size is not None else (512, 512)
        plan = plan_for_check(resolved, main, width, height, refine, denoise)
    except ParamError as e:
        return str(e)
    except ValueError as e:
        if size is None and "upscale" in str(e) and "px" in str(e):
            return None
        return str(e)
    if size is not None and limits.max_pixels and plan.width * plan.height > limits.max_pixels:
        return (f"upscale_by {values['upscale_by']} makes {width}x{height} into "
                f"{plan.width}x{plan.height} ({plan.width * plan.height / 1e6:.1f} MP), above this "
                f"WebUI's maximum image size of {limits.max_pixels / 1e6:g} MP (Settings: "
                "img_max_size_mp)")
    return sampler_error(plan) or unipc_error(plan, limits.unipc_order)


def image_size(data: Any) -> Optional[tuple[int, int]]:
    """``(width, height)`` of a base64 image (with or without a data-URL prefix) read from
    its header, or None when it is not one (the host judges it)."""
    if not isinstance(data, str):
        return None
    body = _DATA_URL.sub("", "".join(data.split()), count=1)
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        from PIL import Image
        with Image.open(io.BytesIO(raw)) as image:
            return int(image.width), int(image.height)
    except Exception:  # noqa: BLE001 - not an image: the host answers it
        return None


def request_main(request: ApiRequest) -> StageSettings:
    """The main settings of an API request (the hosts' API defaults when left out)."""
    f = request.fields
    sampler = f.get("sampler_name") or f.get("sampler_index") or "Euler"
    return StageSettings(int(f.get("steps") or 50), float(f.get("cfg_scale") or 7.0), sampler,
                         f.get("scheduler") or "Automatic")


def request_size(request: ApiRequest, values: Mapping[str, Any]) -> Optional[tuple[int, int]]:
    """The size of the image the upscale starts from: the input image's own size in
    img2img upscale-only; else the request's width x height (None when its ``infotext``
    sets them, which the host pastes later)."""
    f = request.fields
    if request.tab == "img2img" and not values.get("img2img_refine"):
        images = f.get("init_images") or []
        return image_size(images[0]) if images else None
    for key, name in (("Size-1", "width"), ("Size-2", "height")):
        if key in request.infotext and name not in request.given:
            return None
    try:
        return int(f.get("width") or 512), int(f.get("height") or 512)
    except (TypeError, ValueError):
        return None


def request_tool_error(values: Mapping[str, Any], request: ApiRequest, names: HostNames,
                       limits: HostLimits) -> Optional[str]:
    """``tool_error`` for an API request."""
    refine = request.tab == "txt2img" or bool(values.get("img2img_refine"))
    denoise = None
    if request.tab == "img2img":
        try:
            denoise = float(request.fields.get("denoising_strength", 0.75))
        except (TypeError, ValueError):
            return None
    try:
        main = request_main(request)
    except (TypeError, ValueError):
        return None
    return tool_error(values, names, limits, main, request_size(request, values), refine, denoise)
