"""API glue. ``POST /tilesampler/v1/plan`` answers the plan of a job (stages, HyperTile's
windows, the resample's tiles, U-Net calls, work and ETA: ``lib_tilesampler/preview.py``),
the numbers the accordion shows. Bad Tile Sampler args (``alwayson_scripts``) or infotext keys of ours (the
``infotext`` field) in /sdapi/v1/txt2img and img2img requests get an HTTP 422 with a
readable message instead of a job that runs without the extension; so do bad args of the
Script tab's "Tile Sampler tools" (``script_name`` + ``script_args``), whose args are then
rewritten into the full positional list the host needs. The checks run after the host's
authentication and its own validation of the request (see
``lib_tilesampler/hosts/api_routes.py``)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from modules import script_callbacks

from lib_tilesampler.api_check import ApiRequest, check_alwayson_args, check_infotext, \
    check_script_args, request_fit_error, script_args_in_full, script_values
from lib_tilesampler.hosts import get_host
from lib_tilesampler.hosts.api_routes import plan_endpoint
from lib_tilesampler.job import JOBS
from lib_tilesampler.preview import plan_job
from lib_tilesampler.speed import SPEED
from lib_tilesampler.params import ParamError
from lib_tilesampler.tools import options as O
from lib_tilesampler.tools.refine_upscale_check import request_tool_error
from lib_tilesampler.tools.mask_grid_job import mask_grid_error, step_range

TITLE = "Tile Sampler"
LAST_JOB_PATH = "/tilesampler/v1/jobs/last"
PLAN_PATH = "/tilesampler/v1/plan"


def _last_steps(request: ApiRequest) -> Optional[int]:
    """The steps of the last sampling pass the request asks for (hires steps after hires)."""
    fields = request.fields
    try:
        steps = int(fields.get("steps") or 50)
        if request.tab == "txt2img" and fields.get("enable_hr"):
            steps = int(fields.get("hr_second_pass_steps") or steps)
    except (TypeError, ValueError):
        return None
    return steps


def _main_sampler(request: ApiRequest) -> Optional[str]:
    """The request's sampler (``sampler_index`` is the API's older name for it)."""
    name = request.fields.get("sampler_name") or request.fields.get("sampler_index")
    return name if isinstance(name, str) else None


def _args_extra(values: Mapping[str, Any], request: ApiRequest) -> Optional[str]:
    host = get_host()
    if request.script_args(O.TITLE) is not None:   # the tool turns the resample off itself
        return host.name_error(values)
    return host.name_error(values) or request_fit_error(values, request) \
        or host.settings_error(values, _last_steps(request), _main_sampler(request))


def _infotext_extra(values: Mapping[str, Any], request: ApiRequest) -> Optional[str]:
    if request.alwayson_args(TITLE) is not None:  # the args given win over the infotext's
        return get_host().name_error(values)
    return _args_extra(values, request)


def tool_values(request: ApiRequest) -> Optional[dict]:
    return script_values(request, O.TITLE, O.TOOL_FIELDS, O.parse_tool_args, O.tool_from_infotext)


def _tool_extra(_values: Mapping[str, Any], request: ApiRequest) -> Optional[str]:
    host = get_host()
    try:
        values = tool_values(request)
    except ParamError as e:
        return str(e)
    if not values:
        return None
    return request_tool_error(values, request, host.tool_names(), host.tool_limits()) \
        or _mask_grid_extra(values, request)


def _known(request: ApiRequest, field: str, infotext_key: str, default: Any) -> Any:
    """A request field's value, or None when the infotext will paste it (not given)."""
    if infotext_key in request.infotext and field not in request.given:
        return None
    value = request.fields.get(field)
    return default if value is None else value


def _mask_grid_extra(values: Mapping[str, Any], request: ApiRequest) -> Optional[str]:
    """The mask grid's request: the mask, the grid at the size the job samples, the step
    range and the sampler, before any work."""
    if O.TOOL.infotext in request.infotext:
        try:
            O.tool_from_infotext(request.infotext)
        except ParamError as e:
            return str(e)
    if values["tool"] != "mask_grid":
        return None
    try:
        steps = _known(request, "steps", "Steps", 50)
        denoise = _known(request, "denoising_strength", "Denoising strength", 0.75)
        steps, denoise = (int(steps), float(denoise)) if None not in (steps, denoise) else (None, None)
    except (TypeError, ValueError):
        steps = denoise = None
    error = mask_grid_error(values, tab=request.tab, size=request.last_size(), steps=steps,
                            denoise=denoise, has_inpaint_mask=bool(request.fields.get("mask")))
    if error or steps is None:
        return error
    sampler = _main_sampler(request)
    if sampler and step_range(steps, denoise, values["start_step"], values["end_step"]).explicit \
            and not get_host().sampler_takes_sigmas(sampler):
        from lib_tilesampler.hosts.mask_grid_run import sigma_sampler_sentence
        return sigma_sampler_sentence(sampler)
    return None


def last_job() -> dict:
    """What the latest job of the extension ran: sampler runs and denoiser evaluations per
    stage, HyperTile's counts, notes (``GET /tilesampler/v1/jobs/last``)."""
    job = JOBS.last_closed
    return job.summary() if job is not None else {}


def plan(request: Mapping[str, Any]) -> dict:
    """The plan of the job ``request`` describes, with the ETA measured for the loaded model."""
    return plan_job(request, SPEED.seconds_per_unit(get_host().model_key()))


def _install(_demo: Any, app: Any) -> None:
    host = get_host()
    checks = host.api_request_checks(app)
    checks.add("tile sampler args", check_alwayson_args(TITLE, extra=_args_extra))
    checks.add("tile sampler infotext", check_infotext(TITLE, extra=_infotext_extra))
    checks.add("tile sampler tools args", check_script_args(O.TITLE, O.parse_tool_args, extra=_tool_extra))
    checks.add_rewrite("tile sampler tools args", script_args_in_full(
        O.TITLE, O.TOOL_FIELDS, O.parse_tool_args, O.tool_from_infotext))
    if not any(getattr(r, "path", None) == LAST_JOB_PATH for r in app.routes):
        host.add_api_route(app, LAST_JOB_PATH, last_job, methods=["GET"])
    if not any(getattr(r, "path", None) == PLAN_PATH for r in app.routes):
        host.add_api_route(app, PLAN_PATH, plan_endpoint(plan), methods=["POST"])


script_callbacks.on_app_started(_install, name="tilesampler_api_check")
