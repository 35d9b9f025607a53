"""Mask-grid variation batch (after ComfyUI's "MaskGrid N KSamplers Advanced"): one variation
per cell of a ``rows x columns`` grid, in one batch, row-major.

The image (``width x height`` px) is cut into cells of ``width / columns x height / rows`` px,
each a whole number of latent cells (8 px). One cell mask (white = regenerate; see
``mask_input`` for what is accepted) is repeated over every cell. The two modes:

- **Sample then Fork**: sample once with ``grid_mask`` (the cell mask in every cell), then
  output ``i`` is the source with only cell ``i`` taken from that one result:
  ``fork_in_pixels(source, sampled, cell_masks(...))``.
- **Fork then Sample**: sample once per cell, each with only that cell's mask
  (``fork_then_sample_batches`` gives them ``cells_per_batch`` at a time, with their latent
  masks, ``cell_seeds`` their seeds), then ``fork_in_pixels(source, sampled_batch, masks)``
  so that every output is the source outside its cell.

A call sequence for a host::

    grid = cell_geometry(width, height, rows, columns)             # MaskGridError if bad
    cell, resized = fit_mask_to_cell(load_mask(mask_input), grid)  # resized -> infotext
    cell = feather(cell, grid, feather_px)                         # optional soft border
    masks = cell_masks(cell, grid)                                 # (N, H, W)
    ... sample with grid_mask(cell, grid) or per batch, then fork_in_pixels ...
    infotext per output: cell_label(i, grid)

Every function takes and returns tensors (masks ``(..., H, W)`` float in [0, 1], images
``(C, H, W)``); nothing here imports a WebUI module. A user's mistake is a ``MaskGridError``
(a ``ValueError``) whose message is a sentence for the UI or an HTTP 422; a caller's
programming mistake (wrong shapes) is a plain ``ValueError``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .mask_input import MaskGridError, load_mask  # noqa: F401  (re-exported for the host)

MODES = ("Sample then Fork", "Fork then Sample")
LATENT_FACTOR = 8          # image pixels per latent cell (SD1.x, SD2.x, SDXL)
MAX_CELLS_PER_AXIS = 16    # the ComfyUI node's range for rows and columns
MAX_IMAGE_SIDE = 16384


@dataclass(frozen=True)
class CellGrid:
    """``rows x columns`` cells of ``cell_h x cell_w`` px over a ``height x width`` image."""

    width: int
    height: int
    rows: int
    columns: int

    @property
    def cell_h(self) -> int:
        return self.height // self.rows

    @property
    def cell_w(self) -> int:
        return self.width // self.columns

    @property
    def count(self) -> int:
        return self.rows * self.columns

    @property
    def latent_cell(self) -> tuple[int, int]:
        """The cell in latent cells: ``(cell_h / 8, cell_w / 8)``."""
        return self.cell_h // LATENT_FACTOR, self.cell_w // LATENT_FACTOR

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left pixel ``(y, x)`` of cell ``index`` (row-major)."""
        row, column = divmod(_checked_index(index, self), self.columns)
        return row * self.cell_h, column * self.cell_w

    def slices(self, index: int) -> tuple[slice, slice]:
        """Cell ``index`` in the last two dims: ``image[(..., *grid.slices(i))]``."""
        y, x = self.origin(index)
        return slice(y, y + self.cell_h), slice(x, x + self.cell_w)


def cell_geometry(width: int, height: int, rows: int = 1, columns: int = 3) -> CellGrid:
    """The grid of an image, checked: rows and columns in 1..16, and cells of whole latent
    cells (``width`` divisible by ``8 columns``, ``height`` by ``8 rows``)."""
    width, height = _whole(width, "width"), _whole(height, "height")
    rows, columns = _whole(rows, "rows"), _whole(columns, "columns")
    for name, count in (("rows", rows), ("columns", columns)):
        if not 1 <= count <= MAX_CELLS_PER_AXIS:
            raise MaskGridError(f"Mask grid: {name} must be from 1 to {MAX_CELLS_PER_AXIS}, not {count}.")
    for name, size in (("width", width), ("height", height)):
        if not LATENT_FACTOR <= size <= MAX_IMAGE_SIDE:
            raise MaskGridError(f"Mask grid: the image {name} must be from {LATENT_FACTOR} to "
                                f"{MAX_IMAGE_SIDE} px, not {size}.")
    for name, size, count in (("width", width, columns), ("height", height, rows)):
        if size % (LATENT_FACTOR * count):
            fits = [n for n in range(1, MAX_CELLS_PER_AXIS + 1) if size % (LATENT_FACTOR * n) == 0]
            hint = (f"{'columns' if name == 'width' else 'rows'} that fit: {', '.join(map(str, fits))}"
                    if fits else f"make the {name} a multiple of {LATENT_FACTOR} px")
            noun = ("column" if name == "width" else "row") + ("s" if count > 1 else "")
            raise MaskGridError(
                f"Mask grid: a {name} of {size} px does not split into {count} {noun} of whole "
                f"latent cells (multiples of "
                f"{LATENT_FACTOR} px; {size} / {count} = {size / count:g} px); {hint}.")
    return CellGrid(width, height, rows, columns)


def fit_mask_to_cell(mask: torch.Tensor, grid: CellGrid) -> tuple[torch.Tensor, bool]:
    """The ``(H, W)`` mask at the cell's size, and whether it had to be resized.

    Another size is stretched to ``cell_h x cell_w`` (the whole mask kept, never cropped) by
    ``interpolate(mode="bilinear", antialias=True)``: shrinking is a triangle filter as wide
    as the scale (like PIL's BILINEAR resize: thin strokes fade, they do not alias away),
    enlarging is plain bilinear interpolation. Every output is a convex combination of input
    values, so a mask in [0, 1] stays in [0, 1] with no ringing (bicubic and Lanczos overshoot).
    """
    _check_mask(mask, 2)
    if tuple(mask.shape) == (grid.cell_h, grid.cell_w):
        return mask, False
    resized = F.interpolate(mask[None, None].to(torch.float32), size=(grid.cell_h, grid.cell_w),
                            mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return resized.clamp_(0, 1), True


def grid_mask(cell_mask: torch.Tensor, grid: CellGrid) -> torch.Tensor:
    """The cell mask tiled over the grid: ``(cell_h, cell_w) -> (height, width)``,
    ``G[r h_c + y, c w_c + x] = M[y, x]``."""
    _check_cell(cell_mask, grid)
    return repeat(cell_mask, "h w -> (r h) (c w)", r=grid.rows, c=grid.columns)


def cell_masks(cell_mask: torch.Tensor, grid: CellGrid) -> torch.Tensor:
    """One full-size mask per cell, row-major: ``(cell_h, cell_w) -> (N, height, width)``,
    mask ``i`` equal to the cell mask in cell ``i`` and 0 elsewhere. They are disjoint and sum
    to ``grid_mask`` (products with a one-hot 0/1, so exactly). Memory: ``N H W`` floats."""
    _check_cell(cell_mask, grid)
    one_hot = torch.eye(grid.count, dtype=cell_mask.dtype, device=cell_mask.device)
    one_hot = rearrange(one_hot, "n (r c) -> n r 1 c 1", r=grid.rows)
    tiled = repeat(cell_mask, "h w -> 1 r h c w", r=grid.rows, c=grid.columns)
    return rearrange(tiled * one_hot, "n r h c w -> n (r h) (c w)")


def border_ramp(grid: CellGrid, radius_px: int) -> torch.Tensor:
    """The feather weight over one cell, ``(cell_h, cell_w)``: ``w(y, x) = s(t_y) s(t_x)`` with
    ``t_y = min(1, (d_y + 1) / (r + 1))``, ``d_y = min(y, cell_h - 1 - y)`` the distance from
    the cell's edge and ``s(t) = t^2 (3 - 2t)`` (smoothstep). ``w`` rises from ``s(1/(r+1))`` at
    the border pixels to exactly 1 from ``r`` px in, and would be 0 one pixel outside the cell:
    the ramp lies wholly inside the cell. ``r = 0`` is all ones."""
    radius = _whole(radius_px, "feather")
    limit = (min(grid.cell_h, grid.cell_w) - 1) // 2
    if not 0 <= radius <= limit:
        raise MaskGridError(f"Mask grid: a feather of {radius} px does not fit cells of "
                            f"{grid.cell_w}×{grid.cell_h} px; use 0 to {limit} px.")

    def ramp(side: int) -> torch.Tensor:
        i = torch.arange(side, dtype=torch.float32)
        t = ((torch.minimum(i, side - 1 - i) + 1) / (radius + 1)).clamp(max=1)
        return t * t * (3 - 2 * t)
    return ramp(grid.cell_h)[:, None] * ramp(grid.cell_w)[None, :]


def feather(mask: torch.Tensor, grid: CellGrid, radius_px: int) -> torch.Tensor:
    """``mask`` times ``border_ramp`` in every cell: a cell mask ``(..., cell_h, cell_w)`` or
    full-size masks ``(..., height, width)``. Multiplying only ever lowers the mask toward 0 at
    each cell's border, so nothing spreads out of a cell; where the mask is 0 it stays 0."""
    ramp = border_ramp(grid, radius_px).to(mask.device, mask.dtype)
    if tuple(mask.shape[-2:]) == (grid.height, grid.width):
        ramp = repeat(ramp, "h w -> (r h) (c w)", r=grid.rows, c=grid.columns)
    elif tuple(mask.shape[-2:]) != (grid.cell_h, grid.cell_w):
        raise ValueError(f"mask of {tuple(mask.shape)} is neither the cell's nor the image's size")
    return mask * ramp


def latent_masks(masks: torch.Tensor, factor: int = LATENT_FACTOR) -> torch.Tensor:
    """Masks for the latent, ``(N, H, W) or (H, W) -> (N, 1, H/f, W/f)``: the max over each
    ``f x f`` block of pixels. Max, not area: a latent cell is regenerated as much as the
    most-regenerated pixel it decodes to, so a thin white stroke is never averaged away (the
    pixel-space fork would otherwise take it from a latent that barely changed); and as
    cells are whole latent cells, a cell's latent mask never reaches into another cell."""
    masks = masks[None] if masks.ndim == 2 else masks
    _check_mask(masks, 3)
    if masks.shape[-1] % factor or masks.shape[-2] % factor:
        raise ValueError(f"mask of {tuple(masks.shape)} is not a whole number of {factor} px cells")
    return F.max_pool2d(masks[:, None], kernel_size=factor, stride=factor)


def fork_in_pixels(source: torch.Tensor, sampled: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One output per mask: ``out_i = source (1 - m_i) + sampled_i m_i``, ``(N, C, H, W)``.

    ``source`` is ``(C, H, W)``; ``sampled`` is ``(C, H, W)`` (Sample then Fork: one result for
    all) or ``(N, C, H, W)`` (Fork then Sample: one per mask); ``masks`` is ``(N, H, W)``; both
    images of one dtype. Exactness: where ``m_i == 0`` the output is a copy of ``source`` and
    where ``m_i == 1`` of ``sampled_i`` (chosen with ``torch.where``, not computed), so no
    rounding touches them. Integer images (uint8) are blended in float32, rounded and
    clamped only where ``0 < m_i < 1``. Outputs are built one at a time (peak memory: the
    output and one float32 image). Give ``source`` as the image the user sent in (for a
    PIL image: ``rearrange(torch.from_numpy(np.asarray(img)), "h w c -> c h w")``), not its
    VAE round trip, and convert ``sampled`` the same way, so outputs are bitwise the source
    outside their cells.
    """
    _check_mask(masks, 3)
    if source.ndim != 3 or sampled.shape[-3:] != source.shape or sampled.ndim not in (3, 4):
        raise ValueError(f"source {tuple(source.shape)} and sampled {tuple(sampled.shape)} must be "
                         "(C, H, W) and (C, H, W) or (N, C, H, W)")
    if sampled.ndim == 4 and sampled.shape[0] != masks.shape[0]:
        raise ValueError(f"{sampled.shape[0]} sampled images for {masks.shape[0]} masks")
    if masks.shape[-2:] != source.shape[-2:] or sampled.dtype != source.dtype:
        raise ValueError(f"masks {tuple(masks.shape)} / dtypes {source.dtype}, {sampled.dtype} do not "
                         f"match the source {tuple(source.shape)}")
    out = torch.empty((masks.shape[0], *source.shape), dtype=source.dtype, device=source.device)
    for i, mask in enumerate(masks.to(source.device, torch.float32)):      # one float image at a time
        out[i] = _blend(source, sampled[i] if sampled.ndim == 4 else sampled, mask)
    return out


def _blend(source: torch.Tensor, sampled: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    blend = source.to(torch.float32) * (1 - m) + sampled.to(torch.float32) * m
    if source.is_floating_point():
        blend = blend.to(source.dtype)
    else:
        info = torch.iinfo(source.dtype)
        blend = blend.round_().clamp_(info.min, info.max).to(source.dtype)
    return torch.where(m <= 0, source, torch.where(m >= 1, sampled, blend))


def chunk_cells(n: int, per_batch: int) -> list[range]:
    """Cell indices ``0 .. n-1`` in consecutive chunks of ``per_batch`` (the last may be
    shorter): ``chunk_cells(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]``."""
    n, per_batch = _whole(n, "cell count"), _whole(per_batch, "cells per batch")
    if n < 0:
        raise ValueError(f"a negative cell count: {n}")
    if per_batch < 1:
        raise MaskGridError(f"Mask grid: cells per batch must be at least 1, not {per_batch}.")
    return [range(start, min(start + per_batch, n)) for start in range(0, n, per_batch)]


@dataclass(frozen=True)
class CellBatch:
    """One sampling of Fork then Sample: its cells, their pixel masks ``(k, H, W)`` (for the
    fork and a host's own inpainting) and latent masks ``(k, 1, H/8, W/8)``."""

    cells: range
    masks: torch.Tensor
    latent: torch.Tensor


def fork_then_sample_batches(masks: torch.Tensor, per_batch: int,
                             factor: int = LATENT_FACTOR) -> list[CellBatch]:
    """``cell_masks`` split into batches of ``per_batch`` images, each with its latent masks."""
    _check_mask(masks, 3)
    return [CellBatch(cells, masks[cells.start:cells.stop],
                      latent_masks(masks[cells.start:cells.stop], factor))
            for cells in chunk_cells(masks.shape[0], per_batch)]


def cell_label(index: int, grid: CellGrid) -> str:
    """The infotext label of cell ``index``, 1-based and row-major: ``"r2 c3 of 2×3"``."""
    row, column = divmod(_checked_index(index, grid), grid.columns)
    return f"r{row + 1} c{column + 1} of {grid.rows}×{grid.columns}"


def cell_seeds(seed: int, n: int, per_cell: bool = True) -> list[int]:
    """Seeds of ``n`` cells: ``seed + i`` (a different seed per cell, as the WebUI numbers
    the images of a batch, without wrapping) or ``seed`` for all. ``seed`` is resolved (not -1)."""
    seed = _whole(seed, "seed")
    if seed < 0:
        raise ValueError(f"resolve the seed before asking for cell seeds, not {seed}")
    return [seed + i if per_cell else seed for i in range(_whole(n, "cell count"))]


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``MODES``."""
    if mode not in MODES:
        raise MaskGridError(f"Mask grid: mode must be {' or '.join(map(repr, MODES))}, not {mode!r}.")
    return mode


def _whole(value, name: str) -> int:
    """An int from an int or a whole float (UI sliders send floats)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value != int(value)):
        raise MaskGridError(f"Mask grid: {name} must be a whole number, not {value!r}.")
    return int(value)


def _checked_index(index: int, grid: CellGrid) -> int:
    if not 0 <= index < grid.count:
        raise ValueError(f"cell {index} is not in a grid of {grid.count} cells")
    return index


def _check_mask(mask: torch.Tensor, ndim: int) -> None:
    if not isinstance(mask, torch.Tensor) or mask.ndim != ndim or not mask.is_floating_point():
        raise ValueError(f"expected a float mask tensor of {ndim} dims, got "
                         f"{getattr(mask, 'shape', type(mask).__name__)}")


def _check_cell(cell_mask: torch.Tensor, grid: CellGrid) -> None:
    _check_mask(cell_mask, 2)
    if tuple(cell_mask.shape) != (grid.cell_h, grid.cell_w):
        raise ValueError(f"cell mask of {tuple(cell_mask.shape)} is not the cell's "
                         f"{(grid.cell_h, grid.cell_w)}: fit_mask_to_cell first")
