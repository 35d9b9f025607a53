"""The options of the Script tab's script ("Tile Sampler tools"): one table that fixes the
UI order (= the API's positional ``script_args``), the named keys, the infotext keys,
ranges and defaults, for both tools (the tool selector first, then refine + upscale, then
mask grid).

``parse_tool_args`` reads what the hosts hand the script: the positional values of the
UI controls, or one dict of named values (``{"tool": "refine_upscale", "upscale_by": 2}``)
from the API; keys left out keep their defaults, and nothing is silently replaced.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ..params import SAME, Field, ParamError
from .mask_grid import MAX_CELLS_PER_AXIS, MODES
from .refine_upscale import NO_REFINER, TILER_MODELS, UPSCALE_BY_MAX, UPSCALE_BY_MIN

TITLE = "Tile Sampler tools"
TOOLS = ("refine_upscale", "mask_grid")
TOOL_LABELS = {"refine_upscale": "Refine & upscale", "mask_grid": "Mask grid"}
NO_UPSCALER = "None"
RESAMPLE_MODES = ("independent", "fused", "moving")

TOOL = Field("tool", "Tool", "Tile Sampler tool", str, "refine_upscale", choices=TOOLS,
             info="Refine & upscale: base, refiner, upscaler model, tiled re-denoise. Mask "
                  "grid: one variation per cell of a grid.")

REFINE_UPSCALE_FIELDS: tuple[Field, ...] = (
    Field("img2img_refine", "Refine input first", "RU refine input", bool, False,
          group="refine_upscale",
          info="img2img: run the base and refiner stages on the input (at the main denoise) "
               "before the upscale; off: the input is upscaled as it is."),
    Field("base_steps", "Base steps", "RU base steps", int, 30, 0, 150, 1,
          group="refine_upscale", info="Length of the base's schedule; 0 = the main steps."),
    Field("base_stop", "Base stops after step", "RU base stop", int, 14, 1, 150, 1,
          group="refine_upscale", info="The base runs steps 0..stop-1 and hands its latent, "
                                       "noise left in, to the refiner."),
    Field("base_cfg", "Base CFG", "RU base CFG", float, 6.5, 0.0, 30.0, 0.5,
          group="refine_upscale", info="CFG scale of the base; 0 = the main CFG scale."),
    Field("base_sampler", "Base sampler", "RU base sampler", str, "DPM++ 3M SDE",
          group="refine_upscale"),
    Field("base_scheduler", "Base schedule type", "RU base scheduler", str, "Exponential",
          group="refine_upscale"),
    Field("refiner", "Refiner checkpoint", "RU refiner", str, NO_REFINER, group="refine_upscale",
          info="None: the base goes on to the end of its own schedule."),
    Field("refiner_steps", "Refiner steps", "RU refiner steps", int, 32, 0, 150, 1,
          group="refine_upscale", info="Length of the refiner's schedule; 0 = the main steps."),
    Field("refiner_start", "Refiner starts at step", "RU refiner start", int, 15, 0, 149, 1,
          group="refine_upscale",
          info="The refiner runs its steps from here to the end, respaced to start at exactly "
               "the noise level where the base stopped."),
    Field("refiner_cfg", "Refiner CFG", "RU refiner CFG", float, 3.5, 0.0, 30.0, 0.5,
          group="refine_upscale", info="CFG scale of the refiner; 0 = the main CFG scale."),
    Field("refiner_sampler", "Refiner sampler", "RU refiner sampler", str, "DPM++ 3M SDE",
          group="refine_upscale"),
    Field("refiner_scheduler", "Refiner schedule type", "RU refiner scheduler", str, "Exponential",
          group="refine_upscale"),
    Field("upscaler", "Upscale with", "RU upscaler", str, NO_UPSCALER, group="refine_upscale",
          info="An upscaler of the WebUI (ESRGAN and the like, Lanczos), or None."),
    Field("upscale_by", "Upscale factor", "RU upscale by", float, 1.0, UPSCALE_BY_MIN, UPSCALE_BY_MAX,
          0.05, group="refine_upscale", info="Sides are floored to a multiple of 8."),
    Field("tiler_denoise", "Tiler denoise", "RU tiler denoise", float, 0.25, 0.0, 1.0, 0.01,
          group="refine_upscale", info="0 returns the upscaled image as it is."),
    Field("tiler_model", "Tiler model", "RU tiler model", str, "base", choices=TILER_MODELS,
          group="refine_upscale"),
    Field("tiler_mode", "Tiler mode", "RU tiler mode", str, "independent", choices=RESAMPLE_MODES,
          group="refine_upscale",
          info="independent: tiles sampled on their own and crossfaded (as the seed node); "
               "fused: MultiDiffusion; moving: SpotDiffusion."),
    Field("tiler_tile_size", "Tiler tile size (px)", "RU tiler tile size", int, 1024, 256, 4096, 64,
          group="refine_upscale"),
    Field("tiler_overlap", "Tiler overlap (px)", "RU tiler overlap", int, 128, 0, 2048, 8,
          group="refine_upscale"),
    Field("tiler_batch", "Tiler tile batch", "RU tiler batch", int, 1, 1, 32, 1,
          group="refine_upscale"),
    Field("tiler_steps", "Tiler steps", "RU tiler steps", int, 0, 0, 150, 1,
          group="refine_upscale", info="Length of the tiler's schedule (0 = the main steps); "
                                       "it runs the last steps × tiler denoise of them."),
    Field("tiler_cfg", "Tiler CFG", "RU tiler CFG", float, 0.0, 0.0, 30.0, 0.5,
          group="refine_upscale", info="CFG scale of the tiled pass; 0 = the main CFG scale."),
    Field("tiler_sampler", "Tiler sampler", "RU tiler sampler", str, SAME, group="refine_upscale",
          info="'same as main' = the job's own sampler (the one above the prompt's settings)."),
    Field("tiler_scheduler", "Tiler schedule type", "RU tiler scheduler", str, SAME,
          group="refine_upscale"),
    Field("tiled_only", "Tiled image only", "RU tiled only", bool, False, group="refine_upscale",
          info="Return the tiled image without the plain upscaled one."),
)

MASK_GRID_FIELDS: tuple[Field, ...] = (
    Field("mask", "Cell mask", "MG mask", str, "", group="mask_grid",
          info="White = regenerate; repeated over every cell (an image, or base64 PNG in the API)."),
    Field("use_inpaint_mask", "Use inpaint mask", "MG inpaint mask", bool, False,
          group="mask_grid", info="img2img Inpaint / Inpaint upload: the cell mask is the "
                                  "inpaint mask instead of the upload."),
    Field("rows", "Grid rows", "MG rows", int, 1, 1, MAX_CELLS_PER_AXIS, 1, group="mask_grid"),
    Field("columns", "Grid columns", "MG columns", int, 3, 1, MAX_CELLS_PER_AXIS, 1, group="mask_grid"),
    Field("mode", "Grid mode", "MG mode", str, MODES[0], choices=MODES, group="mask_grid",
          info="Sample then Fork: one sampling, one output per cell. Fork then Sample: every "
               "cell sampled on its own (batched)."),
    Field("add_noise", "Add noise", "MG add noise", bool, True, group="mask_grid",
          info="Off: the sampler gets no noise and starts from the image as it is."),
    Field("start_step", "Start at step", "MG start step", int, -1, -1, 150, 1, group="mask_grid",
          info="-1: where the main denoise starts (as the WebUI's img2img)."),
    Field("end_step", "End at step", "MG end step", int, -1, -1, 150, 1, group="mask_grid",
          info="-1: the last step; before it, the sampling stops there."),
    Field("leftover_noise", "Leftover noise", "MG leftover noise", bool, False,
          group="mask_grid", info="With an end step before the last: keep that step's noise; "
                                  "decoded, the regenerated area stays grainy. Off: the last "
                                  "step goes to a clean image."),
    Field("seed_per_cell", "Seed per cell", "MG seed per cell", bool, False,
          group="mask_grid", info="Fork then Sample: cell i gets seed + i (off: one seed for "
                                  "all). Sample then Fork samples once, with the job's seed."),
    Field("feather", "Feather (px)", "MG feather", int, 0, 0, 256, 1, group="mask_grid",
          info="Soften the cell border inside the cell; pixels outside stay the source's."),
    Field("cells_per_batch", "Cells per batch", "MG cells per batch", int, 4, 1, 256, 1,
          group="mask_grid", info="Fork then Sample: cells sampled together (memory)."),
)

TOOL_FIELDS: tuple[Field, ...] = (TOOL,) + REFINE_UPSCALE_FIELDS + MASK_GRID_FIELDS
TOOL_FIELDS_BY_KEY: dict[str, Field] = {f.key: f for f in TOOL_FIELDS}


def tool_defaults() -> dict[str, Any]:
    return {f.key: f.default for f in TOOL_FIELDS}


def parse_tool_args(args: Sequence[Any]) -> dict[str, Any]:
    """The tool's values from positional values (UI order) or one dict of named values.

    The mask may be an image object (the UI's), a base64 string or empty: it is checked
    by ``mask_input.load_mask`` when the mask grid runs, not here.
    """
    args = list(args)
    values = tool_defaults()
    if args and isinstance(args[0], Mapping):
        if any(a is not None for a in args[1:]):
            raise ParamError("give either one dict of named args or positional args, not both")
        named = dict(args[0])
        unknown = sorted(set(named) - set(TOOL_FIELDS_BY_KEY))
        if unknown:
            raise ParamError(f"unknown key(s) {', '.join(map(repr, unknown))}; known keys: "
                             f"{', '.join(TOOL_FIELDS_BY_KEY)}")
        for key, value in named.items():
            values[key] = _check(TOOL_FIELDS_BY_KEY[key], value)
        return values
    if len(args) > len(TOOL_FIELDS):
        raise ParamError(f"got {len(args)} positional args, expected at most {len(TOOL_FIELDS)} "
                         f"({', '.join(TOOL_FIELDS_BY_KEY)})")
    for f, value in zip(TOOL_FIELDS, args):
        values[f.key] = _check(f, value)
    return values


def _check(f: Field, value: Any) -> Any:
    if f.key == "mask" and not isinstance(value, str):
        return value                  # an image from the UI; load_mask judges it
    if f.key == "tool" and isinstance(value, str):
        by_label = {label.lower(): key for key, label in TOOL_LABELS.items()}
        value = by_label.get(value.lower(), value)
    if f.key == "tool" and isinstance(value, int) and not isinstance(value, bool) \
            and 0 <= value < len(TOOLS):
        value = TOOLS[value]          # a radio of type "index"
    return f.check(value)


def tool_infotext(values: Mapping[str, Any]) -> dict[str, Any]:
    """Infotext entries of the tool that ran (flat scalars; never the mask's pixels)."""
    tool = values["tool"]
    out: dict[str, Any] = {TOOL.infotext: tool}
    for f in TOOL_FIELDS[1:]:
        if f.group == tool and f.key != "mask":
            out[f.infotext] = values[f.key]
    return out


def tool_from_infotext(params: Mapping[str, str]) -> Optional[dict[str, Any]]:
    """Values restored from parsed infotext, or None when no tool ran there. A value that
    does not read is an error naming its key (the API answers 422)."""
    if TOOL.infotext not in params:
        return None
    out = tool_defaults()
    for f in TOOL_FIELDS:
        if f.infotext in params and f.key != "mask":
            try:
                out[f.key] = _check(f, params[f.infotext])
            except ParamError as e:
                raise ParamError(f"infotext {f.infotext!r}: {e}") from None
    return out

