"""The mask-grid tool inside A1111 1.10 and Forge 2, through the host's own ``process_images``
(so seeds, prompts, batches, extra networks, saving, infotext and the grid image are the
host's), with four changes to the img2img job that makes the variations:

1. ``image_mask`` is the grid mask (the cell mask in every cell), so the host does its own
   inpainting (mask blur, masked content, mask rounding, the overlay); "Only masked" is not
   used: the grid covers the whole picture, and the latent must stay the image's for the
   per-cell masks.
2. ``sample`` is an instance attribute of the job's ``p``: Fork then Sample gives every row
   of a batch its own cell of the host's latent mask (``p.mask`` / ``p.nmask`` of shape
   ``(B, C, h, w)``, which the host's blends broadcast); both modes put the KSamplerAdvanced
   controls on the sampler's ``sample_img2img`` (zero noise; a cut schedule through
   ``p.sampler_noise_scheduler_override``).
3. Sample then Fork: the always-on script's ``postprocess_batch_list`` repeats each sampled
   image once per cell (no second decode) with its prompt and seed.
4. The always-on script's ``postprocess_image_after_composite`` forks every output in pixel
   space on the user's own uint8 source: outside its cell it is the source, bit for bit.

Everything is set on the ``p`` this run owns and put back afterwards (``overridden``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from ..job import JOBS, Job
from ..module_patch import PatchSet
from ..preview import stage_work_per_evaluation
from ..speed import SPEED
from ..tools import options as O
from ..tools.mask_grid import CellGrid, MaskGridError, cell_geometry, cell_label, check_mode, \
    fork_in_pixels, grid_mask
from ..tools.mask_grid_job import (SAMPLE_THEN_FORK, CellMask, StepRange, VariationRows,
                                   cell_boxes_mask, cell_mask_for, cut_schedule, is_empty_mask,
                                   step_range)
from ..tools.sigmas import img2img_call_for_sigmas, sigma_override
from .webui_common import overridden

MARK = "_tilesampler_mask_grid"
CELL_KEY = "Mask grid cell"
RESIZED_KEY = "MG mask resized"
SOURCE_KEY = "Mask grid source"
LABEL = "Mask grid"
SOURCE_STAGE, VARIATIONS_STAGE = "source", "variations"   # the stages of the tool's job
TXT2IMG_MASK_BLUR = 4          # the WebUIs' img2img defaults, for the variations of txt2img
TXT2IMG_FILL_ORIGINAL = 1      # masked content "original": the variations start from the image


def variation_job_of(p: Any) -> Optional["VariationJob"]:
    """The mask-grid variation job ``p`` runs, or None (for the always-on script's hooks)."""
    job = getattr(p, MARK, None)
    return job if isinstance(job, VariationJob) else None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as (3, H, W) uint8."""
    return rearrange(torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)), "h w c -> c h w")


def to_image(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(rearrange(pixels, "c h w -> h w c").contiguous().numpy(), "RGB")


class VariationJob:
    """One img2img job of mask-grid variations: what its ``sample`` and the always-on
    script's hooks need."""

    def __init__(self, p: Any, values: Mapping[str, Any], source: Image.Image, cell: CellMask,
                 rows: VariationRows, steps: StepRange, job: Optional[Job] = None,
                 model_key: Any = None) -> None:
        self.p = p
        self.job = job                   # the tool's job: times the variations' evaluations
        self.model_key = model_key       # () -> the loaded model, for the speed book
        self.values = dict(values)
        self.source = to_tensor(source)
        self.cell = cell
        self.grid: CellGrid = cell.grid
        self.rows = rows
        self.steps = steps
        self.composed: set[int] = set()
        self._originals: dict[str, Any] = {}

    # ------------------------------------------------------------------ numbering
    def output_index(self, p: Any, index: int) -> int:
        """Output ``index`` of the current host batch, counted over the whole job."""
        return int(p.iteration) * self.rows.outputs_per_batch(int(p.batch_size)) + int(index)

    def cell_infotext(self, p: Any = None, index: int = 0, use_main_prompt: bool = False,
                      **_: Any) -> Optional[str]:
        """The "Mask grid cell" infotext value of an output (none for the grid image)."""
        if use_main_prompt or p is None:
            return None
        return cell_label(self.output_index(p, index or 0) % self.grid.count, self.grid)

    # ------------------------------------------------------------------- sampling
    def setup_prompts(self) -> None:
        """The host's prompts, cut to the job's rows (Fork then Sample's last batch may be
        shorter than the others)."""
        p = self.p
        type(p).setup_prompts(p)
        n = self.rows.outputs
        for name in ("all_prompts", "all_negative_prompts"):
            items = list(getattr(p, name))
            setattr(p, name, (items * (n // max(1, len(items)) + 1))[:n])

    def sample(self, conditioning: Any, unconditional_conditioning: Any, seeds: Any,
               subseeds: Any, subseed_strength: Any, prompts: Any) -> Any:
        """``p.sample`` for one host batch: the rows' own cells of the latent mask (Fork
        then Sample), the sampler's controls, then the host's own ``sample``."""
        p = self.p
        rows = len(seeds)
        self.measure(rows)
        saved = {name: getattr(p, name, None) for name in ("init_latent", "image_conditioning", "mask", "nmask")}
        try:
            if not self.rows.sample_then_fork and isinstance(p.nmask, torch.Tensor):
                first = int(p.iteration) * int(p.batch_size)
                cells = [(first + r) % self.grid.count for r in range(rows)]
                nmask = p.nmask.unsqueeze(0) * cell_boxes_mask(self.grid, cells, dtype=p.nmask.dtype,
                                                               device=p.nmask.device)
                p.nmask, p.mask = nmask, 1 - nmask
                p.init_latent = p.init_latent[:rows]
                condition = p.image_conditioning
                if isinstance(condition, torch.Tensor) and condition.shape[0] > rows:
                    p.image_conditioning = condition[:rows]
            patches = self.control(p.sampler)
            try:
                return type(p).sample(p, conditioning=conditioning,
                                      unconditional_conditioning=unconditional_conditioning,
                                      seeds=seeds, subseeds=subseeds,
                                      subseed_strength=subseed_strength, prompts=prompts)
            finally:
                patches.restore()
        finally:
            for name, value in saved.items():
                setattr(p, name, value)

    def measure(self, rows: int) -> None:
        """A sampler run of ``rows`` images of the whole grid (the host inpaints the whole
        latent): its evaluations are timed apart from the batch before, with their work."""
        job = self.job
        if job is None or job.closed:
            return
        job.stage = VARIATIONS_STAGE
        job.times_nested = True           # the accordion's job inside sees the same calls
        job.count_run()
        job.set_work(stage_work_per_evaluation(self.grid.width, self.grid.height, rows),
                     model=self.model_key() if self.model_key is not None else None)

    def control(self, sampler: Any) -> PatchSet:
        """The KSamplerAdvanced controls on ``sampler.sample_img2img(p, x, noise, c, uc,
        steps=None, image_conditioning=None)``: zero noise without "add noise"; for a cut
        range, the host's own schedule of the job's steps cut to it, sampled through
        ``p.sampler_noise_scheduler_override`` with the step arguments that make the host
        walk all of it."""
        patches = PatchSet()
        r = self.steps
        if r.add_noise and not r.explicit:
            return patches
        if r.explicit and not hasattr(sampler, "get_sigmas"):
            raise MaskGridError(sigma_sampler_sentence(getattr(self.p, "sampler_name", "")))

        def call(inner: Any, args: tuple, kwargs: dict) -> Any:
            args, kwargs = list(args), dict(kwargs)
            p = args[0] if args else kwargs["p"]
            if not r.add_noise:
                if len(args) > 2:
                    args[2] = torch.zeros_like(args[2])
                else:
                    kwargs["noise"] = torch.zeros_like(kwargs["noise"])
            if not r.explicit:
                return inner(*args, **kwargs)
            with overridden(p, sampler_noise_scheduler_override=None, is_hr_pass=False):
                schedule = sampler.get_sigmas(p, r.steps)
            cut = cut_schedule(schedule, r)
            steps_arg, strength = img2img_call_for_sigmas(r.count)
            if len(args) > 6:
                kwargs["image_conditioning"] = args[6]
            args = args[:5]
            kwargs["steps"] = steps_arg
            with overridden(p, sampler_noise_scheduler_override=sigma_override(cut),
                            denoising_strength=strength):
                return inner(*args, **kwargs)

        patches.wrap_method(sampler, "sample_img2img", call)
        return patches

    # --------------------------------------------------------- the always-on hooks
    def expand(self, p: Any, pp: Any) -> None:
        """Sample then Fork: each sampled image of the batch becomes one output per cell
        (the same decoded image, forked later), with its prompt and seed."""
        if not self.rows.sample_then_fork:
            return
        n = self.grid.count
        pp.images = [image for image in pp.images for _ in range(n)]
        for name in ("prompts", "negative_prompts", "seeds", "subseeds"):
            items = getattr(p, name, None)
            if items is not None:
                setattr(p, name, [item for item in items for _ in range(n)])
        for name in ("overlay_images", "color_corrections"):   # indexed per image by the host
            if name not in self._originals:
                self._originals[name] = getattr(p, name, None)
            items = self._originals[name]
            if items:
                setattr(p, name, [item for item in items for _ in range(n)])

    def compose(self, p: Any, pp: Any) -> None:
        """The output as the host composited it, forked: the source outside its cell."""
        j = self.output_index(p, int(getattr(p, "batch_index", 0) or 0))
        sampled = to_tensor(pp.image)
        if sampled.shape != self.source.shape:
            raise MaskGridError(f"Mask grid: the sampled image is {tuple(sampled.shape[1:])} px, the "
                                f"source {tuple(self.source.shape[1:])}: cannot fork it.")
        box = self.grid.slices(j % self.grid.count)
        out = self.source.clone()          # outside the cell: the source, copied
        out[(slice(None), *box)] = fork_in_pixels(self.source[(slice(None), *box)],
                                                  sampled[(slice(None), *box)], self.cell.forked[None])[0]
        pp.image = to_image(out)
        self.composed.add(j)


def sigma_sampler_sentence(sampler_name: str) -> str:
    return (f"Mask grid: start at step, end at step before the last step and leftover noise need "
            f"a sampler that takes a sigma schedule; {sampler_name} runs on timesteps (DDIM, PLMS, "
            "UniPC): choose another sampler, or leave start and end at -1.")


def resolved_seed(seed: Any) -> int:
    from modules import processing
    value = processing.get_fixed_seed(seed)
    return int(value[0] if isinstance(value, list) else value)


def img2img_source(p: Any) -> Image.Image:
    """The input image as the host's img2img would sample it: flattened over the background
    colour and resized to the job's size with its resize mode (the latent-upscale mode
    resizes in pixels here: the image is then already the size, which the host keeps)."""
    from modules import images, shared
    if not getattr(p, "init_images", None):
        raise MaskGridError("Mask grid: img2img needs an input image.")
    image = images.flatten(p.init_images[0], shared.opts.img2img_background_color)
    mode = p.resize_mode if p.resize_mode in (0, 1, 2) else 0
    return images.resize_image(mode, image, int(p.width), int(p.height))


def img2img_from_txt2img(p: Any, source: Image.Image, infotext: Mapping[str, Any]) -> Any:
    """An img2img job on ``source`` with the txt2img job's settings, scripts and seeds."""
    from modules import processing, shared
    skip = {"sd_model", "extra_generation_params", "overlay_images", "denoising_strength", "comments",
            "width", "height", "sampler_index", "firstpass_image", "do_not_reload_embeddings"}
    names = [f.name for f in dataclasses.fields(processing.StableDiffusionProcessing) if f.init]
    kwargs = {name: getattr(p, name) for name in names if name not in skip and hasattr(p, name)}
    denoise = getattr(p, "denoising_strength", None)
    q = processing.StableDiffusionProcessingImg2Img(
        sd_model=shared.sd_model, init_images=[source], width=source.width, height=source.height,
        denoising_strength=0.75 if denoise is None else float(denoise), resize_mode=0,
        inpainting_fill=TXT2IMG_FILL_ORIGINAL, inpaint_full_res=False,
        extra_generation_params=dict(infotext), **kwargs)
    q.mask_blur = TXT2IMG_MASK_BLUR
    q.is_api = getattr(p, "is_api", False)
    q.user = getattr(p, "user", None)
    q.cached_c, q.cached_uc = [None, None], [None, None]   # the class-level caches are shared
    q.scripts = p.scripts
    q.script_args = p.script_args     # runs the always-on scripts' setup(): our fields after it
    for name in ("seed", "subseed", "steps", "sampler_name", "scheduler", "cfg_scale", "batch_size", "n_iter"):
        setattr(q, name, getattr(p, name))
    return q


def job_cell_mask(values: Mapping[str, Any], grid: CellGrid, inpaint_mask: Any = None,
                  invert: bool = False) -> CellMask:
    """The cell mask: the img2img inpaint mask when asked for (img2img only), else the
    uploaded one."""
    if values["use_inpaint_mask"] and inpaint_mask is not None:
        return cell_mask_for(inpaint_mask, grid, values["feather"], invert=invert)
    if values["use_inpaint_mask"] and is_empty_mask(values["mask"]):
        raise MaskGridError("Mask grid: 'use the inpaint mask' is on but there is no inpaint mask "
                            "(img2img Inpaint or Inpaint upload).")
    if is_empty_mask(values["mask"]):
        raise MaskGridError("Mask grid: no cell mask; upload one (white = regenerate).")
    return cell_mask_for(values["mask"], grid, values["feather"])


def run_variations(host: Any, q: Any, values: Mapping[str, Any], source: Image.Image,
                   progress_before: int = 0, inpaint_mask: Any = None,
                   job: Optional[Job] = None) -> Any:
    """The mask-grid variations of ``source`` as the img2img job ``q`` (the caller's p in
    img2img, or one made from the txt2img job) run by the host's ``process_images``."""
    from modules import processing, shared
    check_mode(values["mode"])
    grid = cell_geometry(source.width, source.height, values["rows"], values["columns"])
    cell = job_cell_mask(values, grid, inpaint_mask, bool(getattr(q, "inpainting_mask_invert", 0)))
    denoise = q.denoising_strength if q.denoising_strength is not None else 0.75
    steps = step_range(int(q.steps), float(denoise), values["start_step"], values["end_step"],
                       values["add_noise"], values["leftover_noise"])
    if steps.explicit and not host.sampler_takes_sigmas(q.sampler_name):
        raise MaskGridError(sigma_sampler_sentence(q.sampler_name))
    repeats = max(1, int(q.batch_size) * int(q.n_iter))
    rows = VariationRows(values["mode"], grid.count, repeats, int(values["cells_per_batch"]))
    batch_size, n_iter = rows.host_batches(int(q.batch_size), int(q.n_iter))
    seed, subseed = resolved_seed(q.seed), resolved_seed(q.subseed)
    variations = VariationJob(q, values, source, cell, rows, steps, job, host.model_key)
    pixels = (grid_mask(cell.sampled, grid) * 255).round().to(torch.uint8).numpy()
    fields: dict[str, Any] = dict(image_mask=Image.fromarray(pixels, "L"), init_images=[source],
                                  inpaint_full_res=False, inpainting_mask_invert=0, latent_mask=None,
                                  batch_size=batch_size, n_iter=n_iter, seed=seed, subseed=subseed,
                                  sample=variations.sample, **{MARK: variations})
    if not rows.sample_then_fork:
        fields.update(seed=rows.seeds(seed, values["seed_per_cell"]),
                      subseed=[subseed + i for i in range(rows.outputs)], setup_prompts=variations.setup_prompts)
    q.extra_generation_params.update(O.tool_infotext(values))
    q.extra_generation_params[CELL_KEY] = variations.cell_infotext
    if cell.resize_note():
        q.extra_generation_params[RESIZED_KEY] = cell.resize_note()
    shared.state.job_count = progress_before + n_iter
    with overridden(q, **fields):
        processed = processing.process_images(q)
    finished = not (shared.state.interrupted or shared.state.skipped or
                    getattr(shared.state, "stopping_generation", False))
    if finished and len(variations.composed) != rows.outputs:
        raise RuntimeError(f"Mask grid: {len(variations.composed)} of {rows.outputs} outputs were forked "
                           "(the always-on Tile Sampler script did not run its hooks); the images "
                           "are not the source outside their cells")
    per_output(processed, rows, seed if rows.sample_then_fork else None)
    return processed


def per_output(processed: Any, rows: VariationRows, first_seed: Optional[int]) -> None:
    """Sample then Fork: the job's prompt and seed lists, one entry per output image."""
    if first_seed is None:
        return
    n = rows.cells
    for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"):
        items = getattr(processed, name, None)
        if isinstance(items, list):
            setattr(processed, name, [item for item in items for _ in range(n)])


def run_mask_grid(host: Any, p: Any, values: Mapping[str, Any]) -> Any:
    """The Script's mask-grid tool for ``p`` (txt2img or img2img); returns a ``Processed``.
    The tool's job counts and times the source's and the variations' evaluations (those of
    the accordion's jobs inside it too) for ``GET /tilesampler/v1/jobs/last`` and the
    speed book."""
    values = dict(values)
    check_mode(values["mode"])
    job = open_tool_job(host, values)
    try:
        return _run_mask_grid(host, p, values, job)
    finally:
        JOBS.close(job)
        SPEED.record_job(job)


def open_tool_job(host: Any, values: Mapping[str, Any]) -> Job:
    """The mask grid's own ``Job`` (its values without the mask's pixels), open until the
    tool returns and closed with the host's generation at the latest."""
    job = JOBS.open(Job({k: v for k, v in values.items() if k != "mask"}, key=host.job_key(),
                        label=LABEL))
    job.counts_nested = True
    job.model = host.model_key()
    host.end_with_generation(job)
    return job


def source_work(p: Any, accordion_job: Optional[Job]) -> float:
    """Work of one evaluation of the txt2img source (one image, see ``preview``). 0 (its
    evaluations are counted, not timed into the speed) when the accordion's job measured
    them itself (its passes and tiles, each with its work), or with hires fix, whose two
    sizes run in one host call."""
    if accordion_job is not None or getattr(p, "enable_hr", False):
        return 0.0
    return stage_work_per_evaluation(int(p.width), int(p.height), 1)


def _run_mask_grid(host: Any, p: Any, values: dict, job: Job) -> Any:
    from modules import processing, shared
    p.extra_generation_params.update(O.tool_infotext(values))
    if isinstance(p, processing.StableDiffusionProcessingImg2Img):
        if len(p.init_images or []) > 1:
            print("[Tile Sampler] Mask grid: only the first input image is varied")
        return run_variations(host, p, values, img2img_source(p), inpaint_mask=p.image_mask, job=job)

    infotext = {k: v for k, v in p.extra_generation_params.items() if not callable(v)}
    repeats = dict(batch_size=p.batch_size, n_iter=p.n_iter)
    check_before_source(host, p, values)
    p.seed, p.subseed = resolved_seed(p.seed), resolved_seed(p.subseed)
    rows = VariationRows(values["mode"], int(values["rows"]) * int(values["columns"]),
                         max(1, p.batch_size * p.n_iter), int(values["cells_per_batch"]))
    shared.state.job_count = 1 + rows.host_batches(p.batch_size, p.n_iter)[1]
    job.stage = SOURCE_STAGE
    job.count_run()
    closed_before = JOBS.last_closed
    with overridden(p, batch_size=1, n_iter=1, do_not_save_grid=True):
        p.extra_generation_params[SOURCE_KEY] = "True"
        first = processing.process_images(p)
        p.extra_generation_params.pop(SOURCE_KEY, None)
    inner = JOBS.last_closed if JOBS.last_closed is not closed_before else None
    job.set_work(source_work(p, inner))
    if shared.state.interrupted or getattr(shared.state, "stopping_generation", False) or not first.images:
        return first
    source_index = first.index_of_first_image
    source = first.images[source_index]
    q = img2img_from_txt2img(p, source, infotext)
    for name, value in repeats.items():
        setattr(q, name, value)
    try:
        processed = run_variations(host, q, values, source, progress_before=1, job=job)
    finally:
        q.close()
    at = processed.index_of_first_image
    processed.images.insert(at, source)
    processed.infotexts.insert(at, first.infotexts[source_index])
    for name in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds"):
        items, head = getattr(processed, name, None), getattr(first, name, None)
        if isinstance(items, list) and head:
            setattr(processed, name, [head[0]] + items)
    return processed


def check_before_source(host: Any, p: Any, values: Mapping[str, Any]) -> None:
    """What can be judged before the txt2img source is generated: the mask, the grid at the
    size the job will have, the step range and the sampler."""
    from ..params import final_size
    from ..tools.mask_grid_job import mask_grid_error
    size = final_size(int(p.width), int(p.height), bool(getattr(p, "enable_hr", False)),
                      float(getattr(p, "hr_scale", 2.0) or 2.0), int(getattr(p, "hr_resize_x", 0) or 0),
                      int(getattr(p, "hr_resize_y", 0) or 0))
    denoise = getattr(p, "denoising_strength", None)
    error = mask_grid_error(values, tab="txt2img", size=size, steps=int(p.steps),
                            denoise=0.75 if denoise is None else float(denoise))
    if error:
        raise MaskGridError(error)
    steps = step_range(int(p.steps), 0.75 if denoise is None else float(denoise), values["start_step"],
                       values["end_step"], values["add_noise"], values["leftover_noise"])
    if steps.explicit and not host.sampler_takes_sigmas(p.sampler_name):
        raise MaskGridError(sigma_sampler_sentence(p.sampler_name))
