"""Always-on "Tile Sampler" script: UI and API args -> params -> host adapter -> infotext.

The maths lives in ``lib_tilesampler``; the host specifics in ``lib_tilesampler/hosts``.
"""
from __future__ import annotations

from typing import Any, Optional

import gradio as gr

from modules import script_callbacks, scripts
from modules.ui_components import InputAccordion

from lib_tilesampler import params as P
from lib_tilesampler.hosts import get_host
from lib_tilesampler.hypertile.geometry import HyperTileConfig
from lib_tilesampler.lifecycle import restore_on_close
from lib_tilesampler.tiling.passes import TilePlan, make_wrap

STATE_ATTR = "_tilesampler_values"
LOG_PREFIX = "[Tile Sampler]"

HYPERTILE_LAYOUT = (
    ("hypertile",),
    ("hypertile_tile_size", "hypertile_swap_size", "hypertile_max_depth"),
    ("hypertile_scale_depth", "hypertile_vae"),
)
RESAMPLE_LAYOUT = (
    ("resample",),
    ("resample_mode", "resample_where", "resample_weights"),
    ("resample_tile_size", "resample_overlap", "resample_batch"),
    ("resample_denoise", "resample_steps", "resample_cfg"),
    ("resample_sampler", "resample_scheduler", "resample_seed"),
)


def _control(field: P.Field, elem_id: str, choices: Optional[list] = None) -> Any:
    """The gradio control of one option."""
    info = field.info or None
    if field.kind is bool:
        return gr.Checkbox(label=field.label, value=field.default, elem_id=elem_id, info=info)
    if field.choices or choices is not None:
        return gr.Dropdown(label=field.label, choices=list(choices or field.choices),
                           value=field.default, elem_id=elem_id, info=info)
    if field.kind is str:
        return gr.Textbox(label=field.label, value=field.default, elem_id=elem_id, info=info)
    return gr.Slider(label=field.label, minimum=field.minimum, maximum=field.maximum,
                     step=field.step, value=field.default, elem_id=elem_id, info=info)


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


def _base_seeds(p: Any) -> list[int]:
    seeds = getattr(p, "seeds", None) or getattr(p, "all_seeds", None) or [getattr(p, "seed", 0) or 0]
    return [int(s) for s in seeds]


def _last_size(p: Any) -> tuple[int, int]:
    if getattr(p, "enable_hr", False):
        return P.final_size(p.width, p.height, True, getattr(p, "hr_scale", 2.0),
                            getattr(p, "hr_resize_x", 0), getattr(p, "hr_resize_y", 0))
    return int(p.width), int(p.height)


class TileSamplerScript(scripts.Script):
    sorting_priority = 14

    def title(self) -> str:
        return "Tile Sampler"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        host = get_host()
        choices = {"resample_sampler": [P.SAME] + host.sampler_names(),
                   "resample_scheduler": [P.SAME] + host.scheduler_names()}
        made: dict[str, Any] = {}
        with InputAccordion(False, label="Tile Sampler", elem_id=self.elem_id("enabled")) as enabled:
            made[P.MASTER.key] = enabled
            for group, layout in (("hypertile", HYPERTILE_LAYOUT), ("resample", RESAMPLE_LAYOUT)):
                with gr.Group(elem_id=self.elem_id(f"{group}_group")):
                    for row in layout:
                        with gr.Row():
                            for key in row:
                                made[key] = _control(P.FIELDS_BY_KEY[key], self.elem_id(key), choices.get(key))
                    gr.HTML("", elem_id=self.elem_id(f"{group}_preview"))  # filled by javascript/
        self.infotext_fields = [(made[f.key], _paste_value(f)) for f in P.FIELDS]
        self.paste_field_names = [f.infotext for f in P.FIELDS if f.group]
        return [made[f.key] for f in P.FIELDS]

    # ------------------------------------------------------------------ job hooks
    def process(self, p: Any, *args: Any) -> None:
        host = get_host()
        host.restore()  # leftovers of a job that died before its cleanup
        try:
            values = P.override_from(p, P.parse_args(args))
            error = host.name_error(values) or P.resample_fit_error(values, *_last_size(p))
            if error:
                raise P.ParamError(error)
        except P.ParamError as e:
            report(p, f"{e}. The extension is off for this job.")
            values = P.defaults()
        setattr(p, STATE_ATTR, values)
        if P.to_infotext(values):
            p.extra_generation_params.update(P.to_infotext(values))
            restore_on_close(p, host.restore)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        values = getattr(p, STATE_ATTR, None)
        if not values:
            return
        if P.group_enabled(values, "hypertile"):
            self._install_hypertile(p, values)
        if P.group_enabled(values, "resample"):
            self._install_resample(p, values, kwargs.get("x"))

    def _install_hypertile(self, p: Any, values: dict) -> None:
        config = HyperTileConfig(tile_size=values["hypertile_tile_size"],
                                 swap_size=values["hypertile_swap_size"],
                                 max_depth=values["hypertile_max_depth"],
                                 scale_depth=values["hypertile_scale_depth"])
        seed = _base_seeds(p)[0] + (7919 if getattr(p, "is_hr_pass", False) else 0)
        try:
            get_host().install_hypertile(p, config, seed, vae=values["hypertile_vae"])
        except Exception as e:  # a model we cannot patch: say so, sample untiled
            report(p, f"HyperTile could not be installed ({type(e).__name__}: {e}); sampling without it.")

    def _install_resample(self, p: Any, values: dict, x: Any) -> None:
        host = get_host()
        sampler = getattr(p, "sampler", None)
        if sampler is None:
            return
        hr = bool(getattr(p, "is_hr_pass", False))
        main_steps = (getattr(p, "hr_second_pass_steps", 0) or p.steps) if hr else p.steps
        seeds = _base_seeds(p)
        if values["resample_seed"] >= 0:
            seeds = [values["resample_seed"] + i for i in range(len(seeds))]
        plan = TilePlan.from_values(values, values["resample_steps"] or main_steps, seeds[0],
                                    wrap=bool(getattr(p, "tiling", False)))
        try:
            # every call: Forge calls this hook twice around a hires pass and drops the
            # U-Net patches of the first call; wrapping again replaces, never stacks
            if values["resample_where"] == "during" and x is not None and plan.exceeds(x.shape):
                during = plan if plan.mode != "independent" else \
                    TilePlan(**{**plan.__dict__, "mode": "fused", "weights": "smooth"})
                host.track(host.wrap_sampling(p, sampler, make_wrap(during, host.show_tiles, host.should_stop)))
            last_pass = hr or not getattr(p, "enable_hr", False)
            if last_pass and not getattr(sampler, "_tilesampler_after", False):
                sampler._tilesampler_after = True

                def after(samples: Any, call: dict) -> Any:
                    return host.resample_after(p, samples, call, plan, values, seeds)
                host.track(host.after_sampling(sampler, after))
        except Exception as e:
            report(p, f"latent tile resample could not be set up ({type(e).__name__}: {e}).")

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
