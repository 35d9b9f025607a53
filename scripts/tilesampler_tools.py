"""The Script tab's "Tile Sampler tools": Refine & upscale, and Mask grid.

UI and API args -> ``lib_tilesampler.tools.options`` -> the host adapter's tool runners
(``lib_tilesampler/hosts``); the maths lives in ``lib_tilesampler/tools``.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import gradio as gr

from modules import scripts

from lib_tilesampler import params as P
from lib_tilesampler.hosts import get_host
from lib_tilesampler.hosts.plan_controls import plan_controls
from lib_tilesampler.preview import plan_job
from lib_tilesampler.preview_text import tool_error_html, tool_preview_html
from lib_tilesampler.speed import SPEED
from lib_tilesampler.tools import options as O

REFINE_UPSCALE_LAYOUT = (
    ("img2img_refine",),
    ("base_steps", "base_stop", "base_cfg"),
    ("base_sampler", "base_scheduler"),
    ("refiner", "refiner_sampler", "refiner_scheduler"),
    ("refiner_steps", "refiner_start", "refiner_cfg"),
    ("upscaler", "upscale_by"),
    ("tiler_denoise", "tiler_model", "tiler_mode"),
    ("tiler_tile_size", "tiler_overlap", "tiler_batch"),
    ("tiler_steps", "tiler_cfg", "tiled_only"),
    ("tiler_sampler", "tiler_scheduler"),
)
MASK_GRID_LAYOUT = (
    ("mask",),
    ("use_inpaint_mask",),
    ("rows", "columns", "mode"),
    ("add_noise", "leftover_noise", "seed_per_cell"),
    ("start_step", "end_step"),
    ("feather", "cells_per_batch"),
)


def _control(field: P.Field, elem_id: str, choices: Any = None) -> Any:
    """The gradio control of one option; its details are the host's hover tooltip (as in
    the accordion), so the Script tab stays as compact as the host's own scripts."""
    tooltip = field.info or None
    if field.key == "mask":
        return gr.Image(label=field.label, type="pil", image_mode="RGBA", source="upload",
                        elem_id=elem_id, tooltip=tooltip, height=256)
    common = dict(label=field.label, value=field.default, elem_id=elem_id, tooltip=tooltip)
    if field.kind is bool:
        return gr.Checkbox(**common)
    if field.choices or choices is not None:
        return gr.Dropdown(choices=list(choices or field.choices), **common)
    if field.kind is str:
        return gr.Textbox(**common)
    return gr.Slider(minimum=field.minimum, maximum=field.maximum, step=field.step, **common)


def _paste_value(field: P.Field) -> Any:
    """Infotext -> control value: the tool's label for the radio, real booleans for the
    checkboxes (the API's infotext field would turn the text "False" into True)."""
    if field.key == O.TOOL.key:
        return lambda d: O.TOOL_LABELS.get(d.get(field.infotext), d.get(field.infotext))
    if field.kind is bool:
        return lambda d: (str(d[field.infotext]).strip().lower() == "true") if field.infotext in d else None
    return field.infotext


def _preview(request_json: str) -> str:
    """The preview line for the page's request (the job's fields, the accordion's options and
    the tool's, as JSON, gathered by javascript/tilesampler.js): the plan of ``POST
    /tilesampler/v1/plan`` with ``script_name`` "Tile Sampler tools"."""
    try:
        request = json.loads(request_json or "{}")
        if not isinstance(request, dict):
            raise ValueError("not a JSON object")
        plan = plan_job(request, SPEED.seconds_per_unit(get_host().model_key()))
    except (ValueError, P.ParamError) as e:     # PlanRequestError is a ValueError
        return tool_error_html(str(e))
    return tool_preview_html(plan)


class TileSamplerTools(scripts.Script):
    def title(self) -> str:
        return O.TITLE

    def show(self, is_img2img: bool) -> Any:
        return True

    def ui(self, is_img2img: bool) -> list:
        host = get_host()
        samplers = [P.SAME] + host.sampler_names()
        schedulers = [P.SAME] + host.scheduler_names()
        choices = {"base_sampler": samplers, "refiner_sampler": samplers, "tiler_sampler": samplers,
                   "base_scheduler": schedulers, "refiner_scheduler": schedulers,
                   "tiler_scheduler": schedulers,
                   "refiner": [O.NO_REFINER] + host.checkpoint_names(),
                   "upscaler": host.upscaler_names()}
        made: dict[str, Any] = {}
        made["tool"] = gr.Radio(label=O.TOOL.label, choices=list(O.TOOL_LABELS.values()),
                                value=O.TOOL_LABELS[O.TOOL.default], elem_id=self.elem_id("tool"),
                                tooltip=O.TOOL.info or None)
        groups = {}
        for tool, layout in (("refine_upscale", REFINE_UPSCALE_LAYOUT), ("mask_grid", MASK_GRID_LAYOUT)):
            with gr.Group(visible=tool == O.TOOL.default, elem_id=self.elem_id(f"{tool}_group")) as group:
                for row in layout:
                    if not is_img2img and row[0] in ("img2img_refine", "use_inpaint_mask"):
                        field = O.TOOL_FIELDS_BY_KEY[row[0]]   # keeps the arg order (txt2img: unused)
                        made[row[0]] = gr.Checkbox(label=field.label, value=False, visible=False)
                        continue
                    with gr.Row():
                        for key in row:
                            made[key] = _control(O.TOOL_FIELDS_BY_KEY[key], self.elem_id(key), choices.get(key))
            groups[tool] = group
        preview = gr.HTML("", elem_id=self.elem_id("plan_preview"))
        # The page's script puts the job's fields and the options here as JSON and clicks the
        # button; the answer is the preview line (javascript/tilesampler.js).
        plan_controls(self.elem_id, "Tile Sampler tools",
                      (f.key for f in O.TOOL_FIELDS if f.key != "mask"), _preview, [preview])
        labels = {label: key for key, label in O.TOOL_LABELS.items()}
        made["tool"].change(fn=lambda label: [gr.update(visible=labels.get(label) == t) for t in groups],
                            inputs=made["tool"], outputs=list(groups.values()), show_progress=False)
        self.infotext_fields = [(made[f.key], _paste_value(f)) for f in O.TOOL_FIELDS if f.key != "mask"]
        return [made[f.key] for f in O.TOOL_FIELDS]

    def run(self, p: Any, *args: Any) -> Any:
        if args and isinstance(args[0], Mapping):
            args = args[:1]     # a named dict: what follows it belongs to other scripts
        values = O.parse_tool_args(args)
        p.extra_generation_params["Script"] = self.title()
        host = get_host()
        if values["tool"] == "refine_upscale":
            return host.run_refine_upscale(p, values)
        return host.run_mask_grid(p, values)
