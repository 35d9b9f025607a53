"""Always-on "Tile Sampler" script: UI and API args -> params -> host adapter -> infotext.

The maths lives in ``lib_tilesampler``; the host specifics in ``lib_tilesampler/hosts``.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import gradio as gr

from modules import script_callbacks, scripts
from modules.ui_components import FormRow, InputAccordion

from lib_tilesampler import params as P
from lib_tilesampler.hosts import get_host
from lib_tilesampler.hosts.plan_controls import plan_controls
from lib_tilesampler.preview import PlanRequestError, plan_job, stage_work_per_evaluation, tiling_of
from lib_tilesampler.preview_text import error_html, preview_html
from lib_tilesampler.speed import SPEED
from lib_tilesampler.hosts.mask_grid_run import variation_job_of
from lib_tilesampler.hypertile.geometry import HyperTileConfig
from lib_tilesampler.job import JOBS, TOOL_ATTR, Job
from lib_tilesampler.tiling.passes import TilePlan, make_wrap

JOB_ATTR = "_tilesampler_job"
LOG_PREFIX = "[Tile Sampler]"

HYPERTILE_LAYOUT = (
    ("hypertile_tile_size", "hypertile_swap_size", "hypertile_max_depth"),
    ("hypertile_scale_depth", "hypertile_vae"),
)
RESAMPLE_LAYOUT = (
    ("resample_mode", "resample_where", "resample_weights"),
    ("resample_tile_size", "resample_overlap", "resample_batch"),
    ("resample_denoise", "resample_steps", "resample_cfg"),
    ("resample_sampler", "resample_scheduler", "resample_seed"),
    ("resample_size_cond",),
)
GROUPS = (("hypertile", HYPERTILE_LAYOUT), ("resample", RESAMPLE_LAYOUT))


def _control(field: P.Field, elem_id: str, choices: Optional[list] = None) -> Any:
    """The gradio control of one option; its details are the host's hover tooltip."""
    common = dict(label=field.label, value=field.default, elem_id=elem_id,
                  tooltip=field.info or None)
    if field.kind is bool:
        return gr.Checkbox(**common)
    if field.choices or choices is not None:
        return gr.Dropdown(choices=list(choices or field.choices), **common)
    if field.kind is str:
        return gr.Textbox(**common)
    if field.kind is int and field.maximum is not None and field.maximum > 2 ** 16:
        return gr.Number(precision=0, **common)     # a seed, as the WebUI's own seed box
    return gr.Slider(minimum=field.minimum, maximum=field.maximum, step=field.step, **common)


class _PasteKey(str):
    """An infotext key that is also a function of the parsed infotext. The WebUI's paste
    calls it (so a checkbox whose key is missing turns off); its *Send to txt2img / img2img*
    buttons carry the controls whose key is in ``paste_field_names``, and find it by the key."""

    def __new__(cls, key: str, read: Any) -> "_PasteKey":
        self = super().__new__(cls, key)
        self.read = read
        return self

    def __call__(self, params: dict) -> Any:
        return self.read(params)


def _paste_value(field: P.Field):
    """Infotext -> control value; a checkbox whose key is missing is turned off."""
    if field.key == P.MASTER.key:
        keys = [f.infotext for f in P.FIELDS if f.group]
        return _PasteKey(field.infotext, lambda d: any(k in d for k in keys))
    if field.kind is bool:
        return _PasteKey(field.infotext,
                         lambda d: str(d.get(field.infotext, "False")).strip().lower() == "true")
    return field.infotext


def _preview(request_json: str) -> tuple[str, str, str]:
    """The preview lines for the page's request (the job's fields and our options as
    JSON, gathered by javascript/tilesampler.js): the plan of ``POST /tilesampler/v1/plan``."""
    try:
        request = json.loads(request_json or "{}")
        if not isinstance(request, dict):
            raise ValueError("not a JSON object")
        plan = plan_job(request, SPEED.seconds_per_unit(get_host().model_key()))
    except (ValueError, P.ParamError, PlanRequestError) as e:
        return error_html(str(e))
    return preview_html(plan)


def report(p: Any, message: str, job: Optional[Job] = None) -> None:
    """Tell the user once: console, the UI's comments, and the infotext / API info."""
    if job is not None and not job.note(message):
        return
    print(f"{LOG_PREFIX} {message}")
    if hasattr(p, "comment"):
        p.comment(f"Tile Sampler: {message}")
    notes = p.extra_generation_params.get("Tile Sampler note")
    p.extra_generation_params["Tile Sampler note"] = f"{notes}; {message}" if notes else message


def _image_seeds(p: Any, values: dict) -> list[int]:
    """The resample seed of each image of the batch being sampled: its own seed, or the
    resample seed plus its index in the job (as the WebUI counts seeds), so each image
    is resampled as it is when generated alone."""
    seeds = getattr(p, "seeds", None) or getattr(p, "all_seeds", None) or [getattr(p, "seed", 0) or 0]
    if values["resample_seed"] < 0:
        return [int(s) for s in seeds]
    first = int(getattr(p, "iteration", 0) or 0) * int(getattr(p, "batch_size", 1) or 1)
    return [values["resample_seed"] + first + i for i in range(len(seeds))]


def _last_size(p: Any) -> tuple[int, int]:
    if getattr(p, "enable_hr", False):
        return P.final_size(p.width, p.height, True, getattr(p, "hr_scale", 2.0),
                            getattr(p, "hr_resize_x", 0), getattr(p, "hr_resize_y", 0))
    return int(p.width), int(p.height)


def _last_steps(p: Any) -> int:
    if getattr(p, "enable_hr", False):
        return int(getattr(p, "hr_second_pass_steps", 0) or p.steps)
    return int(p.steps)


class PassState:
    """What the resample of the batch being sampled uses, read when the pass runs."""

    def __init__(self) -> None:
        self.plan: Optional[TilePlan] = None
        self.seeds: list[int] = []
        self.during: Optional[Any] = None      # the wrap of the current pass, or None
        self.planners: list = []               # HyperTile planners of the job's passes
        self.progress_planned = False


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
        previews: list[Any] = []
        master = P.MASTER
        with InputAccordion(False, label=master.label, elem_id=self.elem_id(master.key)) as enabled:
            made[master.key] = enabled
            for group, layout in GROUPS:
                switch = P.FIELDS_BY_KEY[group]
                with InputAccordion(False, label=switch.label, elem_id=self.elem_id(group)) as on:
                    made[group] = on
                    for row in layout:
                        with FormRow():
                            for key in row:
                                made[key] = _control(P.FIELDS_BY_KEY[key], self.elem_id(key),
                                                     choices.get(key))
                    previews.append(gr.HTML("", elem_id=self.elem_id(f"{group}_preview")))
            previews.append(gr.HTML("", elem_id=self.elem_id("cost_preview")))
            # The page's script puts the job's fields and our options here as JSON and
            # clicks the button; the answer fills the preview lines (javascript/).
            plan_controls(self.elem_id, "Tile Sampler", (f.key for f in P.FIELDS), _preview, previews)
        self.infotext_fields = [(made[f.key], _paste_value(f)) for f in P.FIELDS]
        self.paste_field_names = [f.infotext for f in P.FIELDS]
        return [made[f.key] for f in P.FIELDS]

    # ------------------------------------------------------------------ job hooks
    def process(self, p: Any, *args: Any) -> None:
        host = get_host()
        JOBS.close_stale(host.job_key())   # a generation that ended without telling us
        setattr(p, JOB_ATTR, None)         # a copy of another job's p does not share its job
        values = self._values(p, args)
        if not P.to_infotext(values):
            return
        job = JOBS.open(Job(values, key=host.job_key(), label="Tile Sampler"))
        job.model = host.model_key()
        job.script = PassState()
        job.reporter = lambda message: report(p, message, job)
        host.end_with_generation(job)
        setattr(p, JOB_ATTR, job)
        p.extra_generation_params.update(P.to_infotext(values))

    def _values(self, p: Any, args: tuple) -> dict:
        """The job's options; a problem turns off the group it concerns (all of them when
        the arguments cannot be read) and is said in the UI and the infotext."""
        host = get_host()
        try:
            values = P.override_from(p, P.parse_args(args, merge_tail=True))
        except P.ParamError as e:
            report(p, f"{e}. The extension is off for this job.")
            return P.defaults()
        if getattr(p, TOOL_ATTR, None) and P.group_enabled(values, "resample"):
            values["resample"] = False
            report(p, "the latent tile resample is off in this job: the Tile Sampler tools' "
                      "refine & upscale tiles it itself")
        if P.group_enabled(values, "resample") and variation_job_of(p) is not None:
            values["resample"] = False     # the mask grid's variations: resampled once, as its source
        if P.group_enabled(values, "resample"):
            try:
                values = host.resolve_names(values)
                error = P.resample_fit_error(values, *_last_size(p)) \
                    or host.settings_error(values, _last_steps(p), getattr(p, "sampler_name", None))
            except P.ParamError as e:
                error = str(e)
            if error:
                report(p, f"{error}. The latent tile resample is off for this job.")
                values["resample"] = False
        for what, group in host.other_tilers(p, values):
            if group == "resample" and values["resample"]:
                values["resample"] = False
                report(p, f"{what} is on in this job and tiles every U-Net call: it runs, and "
                          "Tile Sampler's latent tile resample is off for this job (two tilings "
                          "would stack)")
        return values

    @staticmethod
    def _units_follow_tiles(p: Any, job: Job) -> bool:
        """Say which ControlNet units cannot follow the tiles; False (the resample turned
        off for the job) when one of them needs the whole image."""
        whole = []
        for why, needs_whole in get_host().units_not_tiled(p):
            if needs_whole:
                whole.append(why)
            else:
                report(p, why, job)
        if not whole:
            return True
        job.values["resample"] = False
        report(p, f"{'; '.join(whole)}. It runs on the whole image: the latent tile resample "
                  "is off for this job", job)
        return False

    @staticmethod
    def _job(p: Any) -> Optional[Job]:
        job = getattr(p, JOB_ATTR, None)
        return job if isinstance(job, Job) and not job.closed else None

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        host = get_host()
        hr = bool(getattr(p, "is_hr_pass", False))
        job.stage = "hires" if hr else "main"
        job.tiles = None
        host.show_progress(job)
        values = job.values
        sampler = getattr(p, "sampler", None)
        last_pass = hr or not getattr(p, "enable_hr", False)
        try:
            if P.group_enabled(values, "hypertile"):
                self._install_hypertile(p, job, hr)
            if P.group_enabled(values, "resample") and sampler is not None \
                    and self._units_follow_tiles(p, job):
                self._prepare_resample(p, job, hr, kwargs.get("x"))
            self._measure(job, kwargs.get("x"))
            if sampler is not None:
                after = (lambda: self._after(p, job)) if last_pass else (lambda: None)
                host.watch_sampler(p, job, sampler, after)
        except Exception as e:  # a model or sampler we cannot patch: say so, sample untiled
            report(p, f"could not be set up ({type(e).__name__}: {e}); sampling without it.", job)
            JOBS.close(job)

    def _install_hypertile(self, p: Any, job: Job, hr: bool) -> None:
        values = job.values
        config = HyperTileConfig(tile_size=values["hypertile_tile_size"],
                                 swap_size=values["hypertile_swap_size"],
                                 max_depth=values["hypertile_max_depth"],
                                 scale_depth=values["hypertile_scale_depth"])
        planner = get_host().install_hypertile(p, job, config, salt=int(hr), vae=values["hypertile_vae"])
        job.script.planners.append(planner)

    def _prepare_resample(self, p: Any, job: Job, hr: bool, x: Any) -> None:
        host, values, state = get_host(), job.values, job.script
        main_steps = (getattr(p, "hr_second_pass_steps", 0) or p.steps) if hr else p.steps
        state.plan = TilePlan.from_values(values, values["resample_steps"] or main_steps,
                                          salt=int(hr), wrap=bool(getattr(p, "tiling", False)))
        state.seeds = _image_seeds(p, values)
        if not state.progress_planned:       # once per job: the bar's total counts our runs
            state.progress_planned = True
            width, height = _last_size(p)
            runs = host.sampler_runs(state.plan, (height // 8, width // 8))
            host.add_progress_jobs(runs * int(getattr(p, "n_iter", 1) or 1))
        state.during = None
        if values["resample_where"] == "during" and x is not None and state.plan.exceeds(x.shape):
            plan = state.plan if state.plan.mode != "independent" else \
                TilePlan(**{**state.plan.__dict__, "mode": "fused", "weights": "smooth"})
            state.during = make_wrap(plan, host.show_tiles, host.should_stop)
            host.wrap_sampling(p, job, p.sampler, lambda: state.during)

    @staticmethod
    def _measure(job: Job, x: Any) -> None:
        """The work of one evaluation of this pass (the job times its evaluations; the
        speed per work unit gives the preview's ETA)."""
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            return
        height, width = int(shape[-2]) * 8, int(shape[-1]) * 8
        state = job.script
        tiling = tiling_of(state.plan, width, height, after=False) if state.during else None
        job.set_work(stage_work_per_evaluation(width, height, int(shape[0]), tiling))

    def _after(self, p: Any, job: Job) -> Optional[Any]:
        """The resample pass for the latent the last pass returns, or None."""
        state = job.script
        if job.closed or not P.group_enabled(job.values, "resample") or state.plan is None:
            return None
        plan, seeds = state.plan, list(state.seeds)

        def after(samples: Any, sampler: Any) -> Any:
            height, width = int(samples.shape[-2]) * 8, int(samples.shape[-1]) * 8
            job.set_work(stage_work_per_evaluation(width, height, int(samples.shape[0]),
                                                   tiling_of(plan, width, height, after=True)),
                         stage="resample")
            return get_host().resample_after(p, job, samples, sampler, plan, job.values, seeds)
        return after

    def post_sample(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Before the infotext of the batch is written: say when HyperTile tiled nothing."""
        job = self._job(p)
        if job is None or not P.group_enabled(job.values, "hypertile"):
            return
        planners = job.script.planners
        if planners and sum(pl.stats.tiled for pl in planners) == 0:
            values = job.values
            if sum(pl.stats.whole_by_draw for pl in planners):
                why = (f"at every step the draw among the {values['hypertile_swap_size']} best "
                       "window counts picked a single window; swap size 1 always splits")
            else:
                why = (f"the image is too small for the tile size {values['hypertile_tile_size']} px "
                       f"at max depth {values['hypertile_max_depth']} (or the model has no "
                       "attention there)")
            report(p, f"HyperTile tiled no attention layer: {why}", job)

    def postprocess_batch_list(self, p: Any, pp: Any, *args: Any, **kwargs: Any) -> None:
        """Mask grid, Sample then Fork: one output per cell of each sampled image."""
        variations = variation_job_of(p)
        if variations is not None:
            variations.expand(p, pp)

    def postprocess_image_after_composite(self, p: Any, pp: Any, *args: Any) -> None:
        """Mask grid: every output is the source outside its own cell."""
        variations = variation_job_of(p)
        if variations is not None:
            variations.compose(p, pp)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        planners = job.script.planners
        if planners:
            job.facts["hypertile"] = {k: sum(getattr(pl.stats, k) for pl in planners)
                                      for k in ("tiled", "untiled_no_divisor", "whole_by_draw",
                                                "skipped_depth", "unknown_shape")}
            print(f"{LOG_PREFIX} HyperTile: {planners[-1].stats.summary()}")
        JOBS.close(job)
        outer = next((j for j in JOBS if j.counts_nested and not j.closed), None)
        if outer is None or not outer.times_nested:
            SPEED.record_job(job)
        if outer is not None:     # a tool's job: it reports HyperTile's counts of its stages
            for key, count in job.facts.get("hypertile", {}).items():
                totals = outer.facts.setdefault("hypertile", {})
                totals[key] = totals.get(key, 0) + count
        print(f"{LOG_PREFIX} {job.summary()}")


def _on_script_unloaded() -> None:
    JOBS.close_all()


get_host().watch_jobs(JOBS)   # every load of this file: Reload UI clears the host's callbacks
script_callbacks.on_script_unloaded(_on_script_unloaded, name="tilesampler_restore")
