"""The plan of a job before it runs: its sampling stages, HyperTile's windows per level,
the resample's tiles, the U-Net calls and the work of each stage, from the code the job
itself runs (``hypertile.geometry`` for the windows, ``tiling.passes.TilePlan`` for the
tiles).

The page's preview and ``POST /tilesampler/v1/plan`` both call ``plan_job`` with the
fields of a txt2img / img2img request (``width``, ``height``, ``steps``, ``enable_hr``,
``hr_scale``, ...) and the Tile Sampler args, so the UI and the API show the same numbers.

Work is counted in *units*: one U-Net evaluation of one image at 512 x 512 (a 64 x 64
latent). A stage's work is its evaluations times the latent area its U-Net calls cover
(the sum of the tile areas when tiled) over 4096 cells, times the images of the job.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from . import params as P
from .hypertile.geometry import HyperTileConfig, level_grid, window_count_options
from .tiling.independent import steps_to_run
from .tiling.passes import LATENT_FACTOR, TilePlan
from .tiling.plan import batch_tiles, shifted_grid
from .preview_tools import MASK_GRID_DENOISE, TOOLS_TITLE, ToolPlanError, mask_grid_stages, \
    refine_upscale_stages, tool_values

UNIT_CELLS = 64 * 64          # a work unit: one evaluation of a 512 x 512 image
TITLE = "tile sampler"        # the script's name in ``alwayson_scripts``
DEFAULT_STEPS = 20


class PlanRequestError(ValueError):
    """A request the plan cannot be made for; the message names the field."""


def _number(fields: Mapping[str, Any], name: str, default: float, kind: type = int,
            minimum: float = 0) -> Any:
    value = fields.get(name)
    if value is None or value == "":
        return kind(default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PlanRequestError(f"{name} must be a number, not {value!r}") from None
    if number != number or number < minimum:
        raise PlanRequestError(f"{name} must be at least {minimum}, not {value!r}")
    return kind(number)


def _flag(fields: Mapping[str, Any], name: str) -> bool:
    value = fields.get(name)
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def script_args(request: Mapping[str, Any]) -> list:
    """The Tile Sampler args of a request: ``args`` (a named dict or positional list) or
    ``alwayson_scripts["tile sampler"]["args"]`` (any case), as the txt2img API takes them."""
    if "args" in request:
        args = request["args"]
        return [args] if isinstance(args, Mapping) else list(args or [])
    for name, entry in (request.get("alwayson_scripts") or {}).items():
        if str(name).lower() == TITLE and isinstance(entry, Mapping):
            return list(entry.get("args") or [])
    return []


def tile_sampler_values(request: Mapping[str, Any]) -> dict:
    """The Tile Sampler options of a request (``ParamError`` for a bad one)."""
    return P.parse_args(script_args(request))


def hypertile_levels(width: int, height: int, values: Mapping[str, Any]) -> list[dict]:
    """HyperTile's windows at each level down to max depth for a ``width x height`` image:
    the token grid, the window counts the draw picks among per axis (best first), the
    smallest window side, and how many times cheaper the attention gets with the most
    windows (1 when the level stays whole)."""
    config = HyperTileConfig(tile_size=values["hypertile_tile_size"],
                             swap_size=values["hypertile_swap_size"],
                             max_depth=values["hypertile_max_depth"],
                             scale_depth=values["hypertile_scale_depth"])
    latent = (-(-height // LATENT_FACTOR), -(-width // LATENT_FACTOR))
    levels = []
    for depth in range(config.max_depth + 1):
        h, w = level_grid(latent, depth)
        least = config.min_window(depth)
        nh = window_count_options(h, least, config.swap_size)
        nw = window_count_options(w, least, config.swap_size)
        levels.append({"depth": depth, "tokens": [h, w], "min_window": least,
                       "windows_h": nh, "windows_w": nw, "speedup": nh[0] * nw[0]})
    return levels


def _tile_layout(plan: TilePlan, height: int, width: int) -> dict:
    """Where the tiles of ``plan`` go over a ``height x width`` latent, in pixels."""
    if plan.mode == "moving":
        tiles = shifted_grid(height, width, min(plan.tile, height), min(plan.tile, width),
                             plan.tile // 2 if height > plan.tile else 0,
                             plan.tile // 2 if width > plan.tile else 0)
        rows = len({t.y for t in tiles})
        cols = len({t.x for t in tiles})
        side = [min(plan.tile, width) * LATENT_FACTOR, min(plan.tile, height) * LATENT_FACTOR]
        return {"tiles": len(tiles), "grid": [rows, cols], "tile": side, "overlap": 0,
                "batches": len(batch_tiles(tiles, plan.batch)), "work": 1.0}
    tiles = plan.tiles(height, width)
    ys = sorted({t.y for t in tiles})
    xs = sorted({t.x for t in tiles})
    th, tw = tiles[0].h, tiles[0].w
    overlaps = [th - (b - a) for a, b in zip(ys, ys[1:])] + [tw - (b - a) for a, b in zip(xs, xs[1:])]
    return {"tiles": len(tiles), "grid": [len(ys), len(xs)],
            "tile": [tw * LATENT_FACTOR, th * LATENT_FACTOR],
            "overlap": min(overlaps, default=0) * LATENT_FACTOR,
            "batches": len(batch_tiles(tiles, plan.batch)),
            "work": len(tiles) * th * tw / (height * width)}


def _stage(name: str, width: int, height: int, steps: int, images: int,
           tiling: Optional[dict] = None) -> dict:
    """One sampling stage of ``steps`` steps over a ``width x height`` image.

    Untiled, or tiled at every step (fused, moving, ``during``): one sampler run whose
    ``steps`` evaluations make one U-Net call per tile batch each. Independent tiles: one
    sampler run per tile batch, each of ``steps`` evaluations of one U-Net call."""
    cells = -(-height // LATENT_FACTOR) * -(-width // LATENT_FACTOR)
    if tiling is None:
        runs, evaluations, calls, factor = 1, steps, steps, 1.0
    elif tiling.get("per_step", True):
        runs, evaluations, calls = 1, steps, steps * tiling["batches"]
        factor = tiling["work"]
    else:
        runs = tiling["batches"]
        evaluations = calls = steps * runs
        factor = tiling["work"] / runs
    per_evaluation = cells * factor / UNIT_CELLS * images
    return {"name": name, "width": width, "height": height, "steps": steps, "runs": runs,
            "evaluations": evaluations, "unet_calls": calls,
            "work": round(evaluations * per_evaluation, 4),
            "work_per_evaluation": round(per_evaluation, 6),
            "untiled_work": round(steps * cells / UNIT_CELLS * images, 4), "tiling": tiling}


def _during_tiling(plan: TilePlan, width: int, height: int) -> Optional[dict]:
    """The tiling of a main or hires pass with ``where: during`` (as the job does it: the
    independent mode's per-step tiles are fused with a crossfade), or None when the latent
    fits in one tile."""
    latent = (-(-height // LATENT_FACTOR), -(-width // LATENT_FACTOR))
    if not plan.exceeds(latent):
        return None
    if plan.mode == "independent":
        plan = TilePlan(**{**plan.__dict__, "mode": "fused", "weights": "smooth"})
    return {"mode": plan.mode, **_tile_layout(plan, *latent)}


def plan_job(request: Mapping[str, Any], seconds_per_unit: Optional[float] = None) -> dict:
    """The plan of the job ``request`` describes (the fields of a txt2img / img2img request
    with ``tab``, and the Tile Sampler args, see ``script_args``).

    ``seconds_per_unit`` is the measured speed of the loaded model on this machine (see
    ``speed``); with it the plan has an ETA. Bad Tile Sampler args raise ``ParamError``,
    bad request fields ``PlanRequestError``; a resample that cannot run on this size is
    said in ``resample.error`` (as the job would say it and run without it).
    """
    tab = str(request.get("tab") or "txt2img")
    if tab not in ("txt2img", "img2img"):
        raise PlanRequestError(f"tab must be 'txt2img' or 'img2img', not {tab!r}")
    values = tile_sampler_values(request)
    width = _number(request, "width", 512, minimum=8)
    height = _number(request, "height", 512, minimum=8)
    steps = _number(request, "steps", DEFAULT_STEPS, minimum=1)
    images = _number(request, "batch_size", 1, minimum=1) * _number(request, "n_iter", 1, minimum=1)
    hires = tab == "txt2img" and _flag(request, "enable_hr")
    denoise = _number(request, "denoising_strength", 0.75 if tab == "img2img" else 0.7, float)

    sizes = [("main", width, height, steps)]
    if tab == "img2img":       # the WebUI's img2img runs int(steps x denoise) + 1 steps
        sizes = [("main", width, height, min(steps, int(min(denoise, 0.999) * steps) + 1))]
    last_steps = steps
    if hires:
        fw, fh = P.final_size(width, height, True, _number(request, "hr_scale", 2.0, float),
                              _number(request, "hr_resize_x", 0), _number(request, "hr_resize_y", 0))
        last_steps = _number(request, "hr_second_pass_steps", 0) or steps
        sizes.append(("hires", fw, fh, last_steps))
    final_w, final_h = sizes[-1][1], sizes[-1][2]

    resample_on = P.group_enabled(values, "resample")
    resample: dict = {"enabled": resample_on}
    plan = None
    if resample_on:
        error = P.resample_fit_error(values, final_w, final_h)
        if error:
            resample["error"] = error
        else:
            plan = TilePlan.from_values(values, values["resample_steps"] or last_steps)

    stages = []
    for name, w, h, n in sizes:
        during = _during_tiling(plan, w, h) if plan is not None and \
            values["resample_where"] == "during" else None
        stages.append(_stage(name, w, h, n, images, during))
    if plan is not None:
        latent = (-(-final_h // LATENT_FACTOR), -(-final_w // LATENT_FACTOR))
        layout = {"mode": plan.mode, **_tile_layout(plan, *latent)}
        run = steps_to_run(plan.steps, plan.denoise)
        if plan.mode == "independent":
            layout["per_step"] = False
        resample.update(mode=plan.mode, steps=plan.steps, steps_run=run, **{
            k: layout[k] for k in ("tiles", "grid", "tile", "overlap", "batches")},
            work_per_step=round(layout["work"], 4))
        if run:
            stages.append(_stage("resample", final_w, final_h, run, images, layout))

    hypertile_sizes = [(name, w, h) for name, w, h, _ in sizes]
    plain = round(sum(s["untiled_work"] for s in stages if s["name"] != "resample"), 4)
    try:
        tool = tool_values(request, tab)
        if tool is not None:
            stages, tool, resample = _tool_stages(tool, request, tab, (width, height),
                                                  (final_w, final_h), steps, resample)
    except P.ParamError as e:
        raise PlanRequestError(f"{TOOLS_TITLE}: {e}") from None
    except ToolPlanError as e:
        raise PlanRequestError(str(e)) from None
    if tool is not None:
        hypertile_sizes = [(s["name"], *((s["tiling"] or {}).get("tile") or (s["width"], s["height"])))
                           for s in stages if s["evaluations"]]
        final_w, final_h = stages[-1]["width"], stages[-1]["height"]
    hypertile: dict = {"enabled": P.group_enabled(values, "hypertile")}
    if hypertile["enabled"]:
        hypertile["stages"] = [{"name": name, "width": w, "height": h,
                                "levels": hypertile_levels(w, h, values)}
                               for name, w, h in hypertile_sizes]

    total_work = round(sum(s["work"] for s in stages), 4)
    untiled = round(sum(s["untiled_work"] for s in stages if "resample" not in s["name"]), 4)
    eta = round(total_work * seconds_per_unit, 1) if seconds_per_unit else None
    return {"tab": tab, "enabled": bool(values[P.MASTER.key]), "width": final_w,
            "height": final_h, "images": images, "stages": stages, "tool": tool,
            "hypertile": hypertile, "resample": resample,
            "total": {"unet_calls": sum(s["unet_calls"] for s in stages),
                      "evaluations": sum(s["evaluations"] for s in stages),
                      "work": total_work, "work_without_resample": untiled,
                      "plain_work": plain, "eta_seconds": eta,
                      "seconds_per_unit": seconds_per_unit}}


SOURCE_STAGES = {"main": "source", "hires": "source hires", "resample": "source resample"}


def _tool_stages(tool: dict, request: Mapping[str, Any], tab: str, size: tuple[int, int],
                 final: tuple[int, int], steps: int, resample: dict) -> tuple[list, dict, dict]:
    """The stages of the Script's tool (``preview_tools``), its details, and what becomes of
    the accordion's resample: off in Refine & upscale (the tool tiles itself) and on the mask
    grid's variations; it runs on a txt2img mask grid's source, which is the main job of
    one image."""
    batch_size = _number(request, "batch_size", 1, minimum=1)
    n_iter = _number(request, "n_iter", 1, minimum=1)
    denoise = _number(request, "denoising_strength", MASK_GRID_DENOISE, float)
    if tool["tool"] == "refine_upscale":
        stages, info = refine_upscale_stages(tool, tab, request, size, steps, denoise,
                                             batch_size * n_iter, _stage, tiling_of)
        off = "the Script's Refine & upscale tiles the image itself"
        return stages, info, ({"enabled": False, "off": off} if resample.get("enabled") else resample)
    source: list = []
    if tab == "txt2img":
        plain = {k: v for k, v in request.items() if k not in ("script_name", "script_args")}
        first = plan_job({**plain, "batch_size": 1, "n_iter": 1})
        source = [{**s, "name": SOURCE_STAGES.get(s["name"], s["name"])} for s in first["stages"]]
        resample = first["resample"]
    elif resample.get("enabled"):
        resample = {"enabled": False, "off": "the mask grid's variations are not resampled"}
    stages, info = mask_grid_stages(tool, tab, final if tab == "txt2img" else size,
                                    steps, denoise, batch_size, n_iter, _stage)
    return source + stages, info, resample


def stage_work_per_evaluation(width: int, height: int, images: int,
                              tiling: Optional[dict] = None) -> float:
    """Work units of one U-Net evaluation of a stage (what the job measures its speed by):
    the covered area over 4096 cells, times the images; a tiled stage covers its tiles."""
    stage = _stage("", width, height, 1, images, tiling)
    return stage["work_per_evaluation"]


def tiling_of(plan: TilePlan, width: int, height: int, after: bool) -> Optional[dict]:
    """The tiling a stage of the job runs with: ``after`` = the resample pass over the
    final latent, else a pass tiled ``during`` sampling (None when it fits one tile)."""
    if not after:
        return _during_tiling(plan, width, height)
    latent = (-(-height // LATENT_FACTOR), -(-width // LATENT_FACTOR))
    layout = {"mode": plan.mode, **_tile_layout(plan, *latent)}
    if plan.mode == "independent":
        layout["per_step"] = False
    return layout
