"""The plan of the Script tab's "Tile Sampler tools" (``preview.plan_job`` with the
request's ``script_name`` and ``script_args``): the stages each tool runs, from the code
the tool's job runs.

Refine & upscale: ``tools.refine_upscale.plan_job`` (through ``plan_for_check``, with a
stand-in sigma schedule: the steps of each stage do not depend on the model's sigmas,
except the refiner's when the base stops below its smallest sigma) gives the base and
refiner steps, the upscaled size and the tiler's ``TilePlan``; the tiles are that plan's
over the upscaled latent, as the job's resample lays them out. Mask grid:
``tools.mask_grid.cell_geometry`` and ``tools.mask_grid_job.step_range`` /
``VariationRows`` give the grid, the steps that run and the host batches.

Counting as in ``preview``: a stage's ``runs`` and ``evaluations`` are those of one batch
of images, its ``work`` covers all ``images``; the mask grid's variations count every host
batch (Fork then Sample's batches are the tool's own).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from .api_check import ApiRequest, script_values
from .tools import options as O
from .tools.mask_grid import border_ramp, cell_geometry, check_mode
from .tools.mask_grid_job import VariationRows, step_range
from .tools.refine_upscale import StageSettings, sampler_error
from .tools.refine_upscale_check import image_size, plan_for_check

TOOLS_TITLE = O.TITLE
MASK_GRID_DENOISE = 0.75     # the variations' denoise when the request gives none (the API's)

StageFn = Callable[..., dict]


class ToolPlanError(ValueError):
    """Tool options the job would refuse; the message is the job's sentence."""


def tool_values(request: Mapping[str, Any], tab: str) -> Optional[dict]:
    """The tool's values when the request selects "Tile Sampler tools" (``script_name``,
    any case) with ``script_args`` as the API takes them, else None; ``ParamError`` for a
    bad value. The plan reads no ``infotext`` field."""
    return script_values(ApiRequest(tab, request, frozenset(request)), O.TITLE, O.TOOL_FIELDS,
                         O.parse_tool_args, lambda _infotext: None)


def main_settings(request: Mapping[str, Any], steps: int) -> StageSettings:
    """The job's own settings, which "0" and "same as main" stand for."""
    return StageSettings(steps, float(request.get("cfg_scale") or 7.0),
                         str(request.get("sampler_name") or request.get("sampler_index") or "Euler"),
                         str(request.get("scheduler") or "Automatic"))


def input_size(request: Mapping[str, Any]) -> Optional[tuple[int, int]]:
    """The size of the request's first ``init_images`` (base64), or its ``init_size``
    ``[width, height]`` (what the page knows of the input image), or None."""
    images = request.get("init_images") or []
    if images:
        return image_size(images[0])
    size = request.get("init_size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        try:
            width, height = int(size[0]), int(size[1])
        except (TypeError, ValueError):
            return None
        return (width, height) if width > 0 and height > 0 else None
    return None


def refine_upscale_stages(values: Mapping[str, Any], tab: str, request: Mapping[str, Any],
                          size: tuple[int, int], steps: int, denoise: float, images: int,
                          stage: StageFn, tiling: Callable[..., dict]) -> tuple[list[dict], dict]:
    """The stages of Refine & upscale and what the preview says of it: base (its steps up
    to the stop), refiner (or the base going on), the upscale (no U-Net work) and the tiled
    re-denoise (the tiler's tiles over the upscaled latent). img2img upscales the input
    image (``input_size``; the width and height when it is not known) unless
    ``img2img_refine`` runs the base and refiner first at the main denoise."""
    refine = tab == "txt2img" or bool(values["img2img_refine"])
    width, height = size
    source = "size"
    if not refine:
        known = input_size(request)
        if known is not None:
            (width, height), source = known, "input image"
    main = main_settings(request, steps)
    try:
        plan = plan_for_check(values, main, width, height, refine,
                              denoise if tab == "img2img" and refine else None)
    except ValueError as e:
        raise ToolPlanError(f"{O.TITLE}: {e}") from None
    error = sampler_error(plan)
    if error:
        raise ToolPlanError(f"{O.TITLE}: {error}")
    stages = [stage(part.name, width, height, part.steps, images)
              for part in (plan.base, plan.refiner) if part is not None]
    stages.append({**stage("upscale", plan.width, plan.height, 0, images), "runs": 0,
                   "work_per_evaluation": 0.0, "upscaler": values["upscaler"],
                   "from": [width, height]})
    info: dict[str, Any] = {"name": "refine_upscale", "refine": refine, "input": [width, height],
                            "input_from": source, "output": [plan.width, plan.height],
                            "upscaler": values["upscaler"], "upscale_by": values["upscale_by"],
                            "tiles": plan.tile_count(), "tiled_only": bool(values["tiled_only"])}
    if plan.tiler is not None:
        layout = tiling(plan.tile_plan, plan.width, plan.height, after=True)
        stages.append(stage("resample", plan.width, plan.height, plan.tiler.steps, images, layout))
        info.update(mode=plan.tile_plan.mode, grid=layout["grid"], tile=layout["tile"],
                    overlap=layout["overlap"], steps=plan.tiler.settings.steps,
                    steps_run=plan.tiler.steps, model=plan.tiler.model)
    return stages, info


def batched_stage(name: str, width: int, height: int, steps: int, rows: int, batches: int,
                  stage: StageFn) -> dict:
    """A stage of ``batches`` host batches of ``steps`` evaluations that sample ``rows``
    images of ``width x height`` in all."""
    one = stage(name, width, height, steps, rows)
    evaluations = steps * batches
    return {**one, "runs": batches, "evaluations": evaluations, "unet_calls": evaluations,
            "work_per_evaluation": round(one["work"] / evaluations, 6) if evaluations else 0.0}


def mask_grid_stages(values: Mapping[str, Any], tab: str,
                     size: tuple[int, int], steps: int, denoise: float, batch_size: int,
                     n_iter: int, stage: StageFn) -> tuple[list[dict], dict]:
    """The variations of the mask grid over the source of ``size`` (txt2img: the image the
    main settings make, hires included; img2img: the input at the job's size): Sample then
    Fork samples each image of the job once; Fork then Sample samples every cell of every
    image, ``cells_per_batch`` at a time. Both run the steps of the step range."""
    width, height = size
    try:
        check_mode(values["mode"])
        grid = cell_geometry(width, height, values["rows"], values["columns"])
        border_ramp(grid, values["feather"])
        span = step_range(steps, denoise, values["start_step"], values["end_step"],
                          values["add_noise"], values["leftover_noise"])
    except ValueError as e:
        message = str(e) if str(e).startswith("Mask grid") else f"Mask grid: {e}"
        raise ToolPlanError(f"{O.TITLE}: {message}") from None
    rows = VariationRows(values["mode"], grid.count, batch_size * n_iter, int(values["cells_per_batch"]))
    per_batch, batches = rows.host_batches(batch_size, n_iter)
    variations = batched_stage("variations", width, height, span.count, rows.sampled_rows, batches, stage)
    info = {"name": "mask_grid", "mode": values["mode"], "grid": [grid.rows, grid.columns],
            "cell": [grid.cell_w, grid.cell_h], "cells": grid.count, "outputs": rows.outputs,
            "sampled_rows": rows.sampled_rows, "batches": batches, "rows_per_batch": per_batch,
            "steps": steps, "start": span.start, "end": span.end, "steps_run": span.count,
            "denoise": denoise, "source": tab == "txt2img"}
    return [variations], info
