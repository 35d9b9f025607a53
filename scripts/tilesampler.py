"""Always-on "Tile Sampler" script: UI and API args -> params -> host adapter -> infotext.

The maths lives in ``lib_tilesampler``; the host specifics in ``lib_tilesampler/hosts``.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from modules import script_callbacks, scripts
from modules.ui_components import InputAccordion

from lib_tilesampler import params as P
from lib_tilesampler.hosts import get_host
from lib_tilesampler.hypertile import HyperTileConfig
from lib_tilesampler.lifecycle import restore_on_close

STATE_ATTR = "_tilesampler_values"
LOG_PREFIX = "[Tile Sampler]"

HYPERTILE_LAYOUT = (
    ("hypertile",),
    ("hypertile_tile_size", "hypertile_swap_size", "hypertile_max_depth"),
    ("hypertile_scale_depth", "hypertile_vae"),
)


def _control(field: P.Field, elem_id: str) -> Any:
    """The gradio control of one option."""
    if field.kind is bool:
        return gr.Checkbox(label=field.label, value=field.default, elem_id=elem_id, info=field.info or None)
    if field.choices:
        return gr.Dropdown(label=field.label, choices=list(field.choices), value=field.default,
                           elem_id=elem_id)
    return gr.Slider(label=field.label, minimum=field.minimum, maximum=field.maximum,
                     step=field.step, value=field.default, elem_id=elem_id, info=field.info or None)


def _paste_value(field: P.Field):
    """Infotext -> control value; a checkbox whose key is missing is turned off."""
    if field.key == P.MASTER.key:
        keys = [f.infotext for f in P.FIELDS if f.group]
        return lambda d: any(k in d for k in keys)
    if field.kind is bool:
        return lambda d: str(d.get(field.infotext, "False")) == "True"
    return field.infotext


def report(p: Any, message: str) -> None:
    """Tell the user: console, the UI's comments, and the infotext / API info."""
    print(f"{LOG_PREFIX} {message}")
    if hasattr(p, "comment"):
        p.comment(f"Tile Sampler: {message}")
    notes = p.extra_generation_params.get("Tile Sampler note")
    p.extra_generation_params["Tile Sampler note"] = f"{notes}; {message}" if notes else message


def _base_seed(p: Any) -> int:
    seeds = getattr(p, "seeds", None) or getattr(p, "all_seeds", None)
    return int(seeds[0]) if seeds else int(getattr(p, "seed", 0) or 0)


class TileSamplerScript(scripts.Script):
    sorting_priority = 14

    def title(self) -> str:
        return "Tile Sampler"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        made: dict[str, Any] = {}
        with InputAccordion(False, label="Tile Sampler", elem_id=self.elem_id("enabled")) as enabled:
            made[P.MASTER.key] = enabled
            with gr.Group(elem_id=self.elem_id("hypertile_group")):
                for row in HYPERTILE_LAYOUT:
                    with gr.Row():
                        for key in row:
                            made[key] = _control(P.FIELDS_BY_KEY[key], self.elem_id(key))
                gr.HTML("", elem_id=self.elem_id("hypertile_preview"))  # filled by javascript/
        controls = [made[f.key] for f in P.FIELDS]
        self.infotext_fields = [(made[f.key], _paste_value(f)) for f in P.FIELDS]
        self.paste_field_names = [f.infotext for f in P.FIELDS if f.group]
        return controls

    def process(self, p: Any, *args: Any) -> None:
        host = get_host()
        host.restore()  # leftovers of a job that died before its cleanup
        try:
            values = P.override_from(p, P.parse_args(args))
        except P.ParamError as e:
            report(p, f"{e}. The extension is off for this job.")
            values = P.defaults()
        setattr(p, STATE_ATTR, values)
        if P.group_enabled(values, "hypertile"):
            p.extra_generation_params.update(P.to_infotext(values))
            restore_on_close(p, get_host().restore)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        values = getattr(p, STATE_ATTR, None)
        if not values or not P.group_enabled(values, "hypertile"):
            return
        config = HyperTileConfig(tile_size=values["hypertile_tile_size"],
                                 swap_size=values["hypertile_swap_size"],
                                 max_depth=values["hypertile_max_depth"],
                                 scale_depth=values["hypertile_scale_depth"])
        seed = _base_seed(p) + (7919 if getattr(p, "is_hr_pass", False) else 0)
        try:
            get_host().install_hypertile(p, config, seed, vae=values["hypertile_vae"])
        except Exception as e:  # a model we cannot patch: say so, sample untiled
            get_host().restore()
            report(p, f"HyperTile could not be installed ({type(e).__name__}: {e}); sampling without it.")

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        host = get_host()
        values = getattr(p, STATE_ATTR, None)
        planner = host.last_planner()
        host.restore()
        if not values or not P.group_enabled(values, "hypertile") or planner is None:
            return
        print(f"{LOG_PREFIX} HyperTile: {planner.stats.summary()}")
        if planner.stats.tiled == 0:
            note = ("HyperTile tiled no attention layer: the image is too small for the tile "
                    f"size {values['hypertile_tile_size']} px at max depth "
                    f"{values['hypertile_max_depth']} (or the model has no attention there).")
            print(f"{LOG_PREFIX} {note}")
            processed.comments = (processed.comments or "") + f"Tile Sampler: {note}\n"
            p.extra_generation_params["Tile Sampler note"] = note


def _on_script_unloaded() -> None:
    get_host().restore()


script_callbacks.on_script_unloaded(_on_script_unloaded, name="tilesampler_restore")
