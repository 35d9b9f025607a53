"""A mask-grid job in WebUI terms, host-independent: which part of the schedule samples
(the KSamplerAdvanced controls), which rows a job samples with which seeds, which cell an
output image is, and the checks an API request gets before any work starts.

Steps. A WebUI img2img job of ``steps`` steps at denoise ``d`` samples the last
``int(min(d, 0.999) steps) + 1`` steps of the ``steps``-step schedule (A1111 1.10.1 and
Forge 2, ``setup_img2img_steps`` and ``sample_img2img``): it starts at index
``steps - int(min(d, 0.999) steps) - 1`` (``host_img2img_start``). "Start at step" and "End
at step" cut that schedule as ComfyUI's KSamplerAdvanced does: the sampler walks
``s[start : end + 1]``; "return with leftover noise" off sets the last of those sigmas to 0
when ``end < steps`` (the last step jumps to a clean latent), on keeps it (the latent comes
back at noise level ``s[end]``, and the WebUI decodes it as it is: the regenerated area
looks grainy). "Add noise" off gives the sampler zero noise: it starts from the latent as
it is, as if it were already at the start's noise level.

Rows. Sample then Fork samples ``repeats`` images (the job's batch count x batch size), each
with the whole grid mask, and each becomes ``cells`` outputs. Fork then Sample samples
``repeats x cells`` rows, ``cells_per_batch`` at a time, each with its own cell's mask.
Either way output ``j`` of the job (row-major within each repeat) is cell ``j % cells`` of
repeat ``j // cells``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from .mask_grid import (LATENT_FACTOR, MODES, CellGrid, MaskGridError, border_ramp, cell_geometry,
                        check_mode, feather, fit_mask_to_cell)
from .mask_input import load_mask

SAMPLE_THEN_FORK, FORK_THEN_SAMPLE = MODES
DEFAULT_STEP = -1


def host_img2img_start(steps: int, denoise: float) -> int:
    """The schedule index where the WebUIs' img2img starts at ``denoise`` (their own rule,
    without the "img2img fix steps" setting): ``steps - int(min(denoise, 0.999) steps) - 1``,
    never below 0. Denoise 1 starts at 0; denoise 0 still runs the last step."""
    if steps < 1:
        raise MaskGridError(f"Mask grid: the job needs at least 1 step, not {steps}.")
    return max(0, steps - int(min(float(denoise), 0.999) * steps) - 1)


@dataclass(frozen=True)
class StepRange:
    """The part of the ``steps``-step schedule the variations sample: ``s[start : end + 1]``."""

    steps: int
    start: int
    end: int
    add_noise: bool = True
    leftover_noise: bool = False
    explicit: bool = False   # False: the host's own img2img range (no schedule is cut)

    @property
    def count(self) -> int:
        """Sampler steps that run."""
        return self.end - self.start


def step_range(steps: int, denoise: float, start_step: int = DEFAULT_STEP,
               end_step: int = DEFAULT_STEP, add_noise: bool = True,
               leftover_noise: bool = False) -> StepRange:
    """The range of the KSamplerAdvanced controls in a job of ``steps`` steps at ``denoise``.

    ``start_step`` -1 is where the host's img2img starts at that denoise
    (``host_img2img_start``); ``end_step`` -1, or one past the last step, is the end. The
    range is ``explicit`` (a cut schedule is needed) unless it is the host's own range."""
    steps = int(steps)
    default_start = host_img2img_start(steps, denoise)
    start = default_start if start_step < 0 else int(start_step)
    end = steps if end_step < 0 else min(int(end_step), steps)
    if start >= steps:
        raise MaskGridError(f"Mask grid: start at step must be below the job's {steps} steps "
                            f"(0 to {steps - 1}, or -1 for where denoise {denoise:g} starts), "
                            f"not {start}.")
    if start >= end:
        raise MaskGridError(f"Mask grid: end at step ({end}) must be after start at step "
                            f"({start}); -1 is the last step ({steps}).")
    explicit = start != default_start or end != steps
    return StepRange(steps, start, end, bool(add_noise), bool(leftover_noise), explicit)


def cut_schedule(schedule: torch.Tensor, steps: StepRange) -> torch.Tensor:
    """``s[start : end + 1]`` of the host's ``steps``-step schedule (``steps + 1`` sigmas),
    the last one set to 0 unless leftover noise is kept (it already is 0 at the end)."""
    if schedule.ndim != 1 or len(schedule) != steps.steps + 1:
        raise ValueError(f"a schedule of {steps.steps} steps holds {steps.steps + 1} sigmas, "
                         f"not {tuple(schedule.shape)}")
    cut = schedule[steps.start:steps.end + 1].clone()
    if not steps.leftover_noise:
        cut[-1] = 0
    return cut


@dataclass(frozen=True)
class VariationRows:
    """The rows of the variation job and the host job that samples them."""

    mode: str
    cells: int           # N = rows x columns of the grid
    repeats: int         # R = the job's batch count x batch size
    per_batch: int       # Fork then Sample: cells sampled together

    @property
    def sample_then_fork(self) -> bool:
        return self.mode == SAMPLE_THEN_FORK

    @property
    def outputs(self) -> int:
        return self.repeats * self.cells

    @property
    def sampled_rows(self) -> int:
        """Rows the sampler denoises in all: R (Sample then Fork) or R x N."""
        return self.repeats if self.sample_then_fork else self.outputs

    def host_batches(self, batch_size: int, n_iter: int) -> tuple[int, int]:
        """``(batch_size, n_iter)`` of the host job. Sample then Fork keeps the job's own;
        Fork then Sample takes ``per_batch`` rows at a time (the last batch may be
        shorter: the job's prompt and seed lists hold exactly ``R x N`` rows)."""
        if self.sample_then_fork:
            return batch_size, n_iter
        size = min(self.per_batch, self.outputs)
        return size, math.ceil(self.outputs / size)

    def outputs_per_batch(self, batch_size: int) -> int:
        """How many output images one host batch of ``batch_size`` rows makes."""
        return batch_size * self.cells if self.sample_then_fork else batch_size

    def seeds(self, seed: int, per_cell: bool) -> list[int]:
        """Fork then Sample's row seeds, row-major per repeat: ``seed + r`` for repeat r, or
        with a seed per cell ``seed + r N + c`` (as the WebUI numbers the images of a
        batch; one repeat's cells then have consecutive seeds)."""
        return [seed + (r * self.cells + c if per_cell else r)
                for r in range(self.repeats) for c in range(self.cells)]

    @staticmethod
    def cell_of(output_index: int, cells: int) -> tuple[int, int]:
        """``(repeat, cell)`` of output ``j`` of the job."""
        return divmod(output_index, cells)


def latent_cell_box(grid: CellGrid, index: int, factor: int = LATENT_FACTOR) -> tuple[slice, slice]:
    """Cell ``index`` in latent cells (its pixel box divided by ``factor``; exact, since
    ``cell_geometry`` makes cells of whole latent cells)."""
    ys, xs = grid.slices(index)
    return slice(ys.start // factor, ys.stop // factor), slice(xs.start // factor, xs.stop // factor)


def cell_boxes_mask(grid: CellGrid, indices: list[int], factor: int = LATENT_FACTOR,
                    dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """``(len(indices), 1, H/f, W/f)``: 1 inside each row's cell, 0 elsewhere. Multiplied with
    a latent mask of the whole grid, it keeps only that row's cell of it."""
    out = torch.zeros((len(indices), 1, grid.height // factor, grid.width // factor),
                      dtype=dtype, device=device)
    for row, index in enumerate(indices):
        ys, xs = latent_cell_box(grid, index, factor)
        out[row, :, ys, xs] = 1
    return out


def one_cell_mask(cell_mask: torch.Tensor, grid: CellGrid, index: int) -> torch.Tensor:
    """The full-size mask of cell ``index`` alone, ``(height, width)``: ``cell_masks(...)[index]``
    without building the other ``N - 1``."""
    if tuple(cell_mask.shape) != (grid.cell_h, grid.cell_w):
        raise ValueError(f"cell mask of {tuple(cell_mask.shape)} is not the cell's "
                         f"{(grid.cell_h, grid.cell_w)}")
    out = torch.zeros((grid.height, grid.width), dtype=cell_mask.dtype, device=cell_mask.device)
    out[grid.slices(index)] = cell_mask
    return out


@dataclass(frozen=True)
class CellMask:
    """The cell mask of a job: as sampled, as forked (feathered), and where it came from."""

    grid: CellGrid
    sampled: torch.Tensor          # (cell_h, cell_w) in [0, 1]: what the host inpaints
    forked: torch.Tensor           # the same with the feather: the pixel-space fork's weight
    resized_from: Optional[tuple[int, int]] = None   # (width, height) of a mask of another size

    def resize_note(self) -> Optional[str]:
        """The infotext value saying the mask was resized, or None."""
        if self.resized_from is None:
            return None
        w, h = self.resized_from
        return f"{w}×{h} to {self.grid.cell_w}×{self.grid.cell_h}"


def cell_mask_for(mask: Any, grid: CellGrid, feather_px: int = 0, invert: bool = False) -> CellMask:
    """Load ``mask`` (anything ``load_mask`` takes), fit it to the cell, and feather the fork's
    copy; ``invert`` for an inpaint mask of the "inpaint not masked" mode."""
    loaded = load_mask(mask)
    if invert:
        loaded = 1 - loaded
    fitted, resized = fit_mask_to_cell(loaded, grid)
    forked = feather(fitted, grid, feather_px) if feather_px else fitted
    size = (int(loaded.shape[1]), int(loaded.shape[0])) if resized else None
    return CellMask(grid, fitted, forked, size)


def is_empty_mask(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def mask_grid_error(values: Mapping[str, Any], *, tab: str, size: Optional[tuple[int, int]],
                    steps: Optional[int], denoise: Optional[float],
                    has_inpaint_mask: bool = False) -> Optional[str]:
    """Why a mask-grid request cannot run, before any work, or None. ``size`` (width,
    height), ``steps`` and ``denoise`` are None when the request does not fix them yet. With
    "use the inpaint mask" the img2img inpaint mask is the cell mask; without one the
    uploaded mask is used."""
    try:
        check_mode(values["mode"])
        inpaint = values["use_inpaint_mask"] and tab == "img2img" and has_inpaint_mask
        if values["use_inpaint_mask"] and not inpaint and is_empty_mask(values["mask"]):
            raise MaskGridError("Mask grid: 'use the inpaint mask' is on but the request has no "
                                "inpaint mask (the img2img 'mask' field).")
        if not inpaint and is_empty_mask(values["mask"]):
            raise MaskGridError("Mask grid: no cell mask; give one (white = regenerate), as a base64 "
                                "PNG in the API.")
        if not inpaint:
            load_mask(values["mask"])
        if size is not None:
            grid = cell_geometry(size[0], size[1], values["rows"], values["columns"])
            border_ramp(grid, values["feather"])
        if steps is not None and denoise is not None:
            step_range(steps, denoise, values["start_step"], values["end_step"],
                       values["add_noise"], values["leftover_noise"])
    except MaskGridError as e:
        return str(e)
    return None
