"""Tiled denoisers: each function takes a denoiser and returns one with the same signature
that runs it tile by tile, so every sampler of the host (k-diffusion or timestep) works.

A ``Denoiser`` is ``denoiser(x, t, cond) -> out``: ``x`` is (rows, C, H, W) latent rows
(cond and uncond rows, AND prompts and batch images alike), ``t`` is the (rows,) sigma or
timestep of each row, ``cond`` a nested structure of tensors and other values (see
``conditioning``), and ``out`` has the shape of ``x`` (denoised x0 or eps: the blends are
linear, so both work). When the latent fits in one tile the wrapped denoiser is called
once with the untouched arguments, so the result is exactly the untiled one.

* ``fused_denoiser`` — MultiDiffusion (Bar-Tal et al. 2023): at every call the latent is
  split into overlapping tiles and the outputs are fused by the weighted average of their
  eq. 5, ``sum_i W_i * F_i(x) / sum_i W_i``, with uniform weights or the Gaussian weights
  of Mixture of Diffusers (Jiménez 2023).
* ``moving_seam_denoiser`` — SpotDiffusion (Frolov et al. 2024): non-overlapping tiles on
  a grid shifted by a seeded random offset that changes at every step, so a seam left at
  one step is denoised from inside a tile at the next. Without ``wrap`` the latent's
  borders stay borders (partial tiles there); with ``wrap`` (seamless tiling) the latent
  is rolled as in the paper.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..step_key import step_key
from .conditioning import crop_cond, repeat_rows, roll_cond, stack_tiles, unstack_tiles
from .plan import BLEND_KINDS, Tile, batch_tiles, blend_weights, plan_tiles, shifted_grid

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
OnTile = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


class TileInterrupted(Exception):
    """Raised between tile batches when ``should_stop()`` says so (the host's Interrupt or
    Skip). ``done`` and ``total`` count the tiles of the interrupted call."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"interrupted after {done} of {total} tiles")
        self.done = done
        self.total = total


def check_stop(should_stop: Optional[ShouldStop], done: int, total: int) -> None:
    if should_stop is not None and should_stop():
        raise TileInterrupted(done, total)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision and float32 latents, float64 for float64 ones."""
    return torch.promote_types(x.dtype, torch.float32)


def tile_t(t: torch.Tensor, rows: int, n: int) -> torch.Tensor:
    """``t`` for ``n`` tiles: per-row values repeated tile-major, anything else as it is."""
    if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == rows:
        return repeat_rows(t, n)
    return t


def denoise_tiles(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any,
                  tiles: Sequence[Tile], tile_batch: int = 1, on_tile: Optional[OnTile] = None,
                  should_stop: Optional[ShouldStop] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``denoiser`` on ``tiles`` of ``x``, ``tile_batch`` same-size tiles per call (all
    rows of a tile together); yield ``(index of the tile, its output rows (rows, C, h, w))``.

    ``should_stop`` is asked before each call, ``on_tile(done, total)`` told after it.
    """
    rows, hw, total = x.shape[0], tuple(x.shape[-2:]), len(tiles)
    index = {tile: i for i, tile in enumerate(tiles)}
    done = 0
    for batch in batch_tiles(tiles, tile_batch):
        check_stop(should_stop, done, total)
        n = len(batch)
        out = denoiser(stack_tiles(x, batch), tile_t(t, rows, n), crop_cond(cond, batch, hw, rows))
        for tile, rows_out in zip(batch, unstack_tiles(out, n)):
            yield index[tile], rows_out
        done += n
        if on_tile is not None:
            on_tile(done, total)


def fuse_tiles(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any,
               tiles: Sequence[Tile], weights: Sequence[torch.Tensor], tile_batch: int = 1,
               on_tile: Optional[OnTile] = None, should_stop: Optional[ShouldStop] = None
               ) -> torch.Tensor:
    """One MultiDiffusion fusion (Bar-Tal et al. 2023, eq. 5): the per-cell weighted average
    ``sum_i W_i * out_i / sum_i W_i`` of the tile outputs, accumulated in float32 (or
    float64 for a float64 ``x``) and cast back to ``x.dtype``. ``weights[i]`` is tile i's
    (h, w) map; their sum must be > 0 at every cell."""
    dtype = accumulation_dtype(x)
    acc = torch.zeros(x.shape, dtype=dtype, device=x.device)
    total = torch.zeros(x.shape[-2:], dtype=dtype, device=x.device)
    for i, out in denoise_tiles(denoiser, x, t, cond, tiles, tile_batch, on_tile, should_stop):
        cells = tiles[i].slices()
        w = weights[i].to(device=x.device, dtype=dtype)
        acc[(..., *cells)] += out.to(dtype) * w
        total[cells] += w
    return (acc / total).to(x.dtype)


def paste_tiles(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any,
                tiles: Sequence[Tile], tile_batch: int = 1, on_tile: Optional[OnTile] = None,
                should_stop: Optional[ShouldStop] = None) -> torch.Tensor:
    """Outputs of non-overlapping tiles that cover the latent, pasted in place."""
    out = torch.empty_like(x)
    for i, rows_out in denoise_tiles(denoiser, x, t, cond, tiles, tile_batch, on_tile, should_stop):
        out[(..., *tiles[i].slices())] = rows_out
    return out


def _whole(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any,
           on_tile: Optional[OnTile], should_stop: Optional[ShouldStop]) -> torch.Tensor:
    """The latent fits in one tile: one call with the untouched arguments."""
    check_stop(should_stop, 0, 1)
    out = denoiser(x, t, cond)
    if on_tile is not None:
        on_tile(1, 1)
    return out


def _check_tile(tile_h: int, tile_w: int, tile_batch: int) -> None:
    if min(tile_h, tile_w) < 1:
        raise ValueError(f"tile must be at least 1x1 cells, not {tile_h}x{tile_w}")
    if tile_batch < 1:
        raise ValueError(f"tile batch must be at least 1, not {tile_batch}")


def fused_denoiser(denoiser: Denoiser, tile_h: int, tile_w: int, overlap: int,
                   weighting: str = "gaussian", tile_batch: int = 1,
                   on_tile: Optional[OnTile] = None,
                   should_stop: Optional[ShouldStop] = None, align: int = 1) -> Denoiser:
    """MultiDiffusion: every call is split into the overlapping tiles of ``plan_tiles``
    (at most ``tile_h x tile_w`` cells, sides in multiples of ``align`` where possible, at
    least ``overlap`` cells of overlap) and fused with ``weighting`` (``"gaussian"``,
    ``"uniform"`` or ``"smooth"``, see ``blend_weights``)."""
    _check_tile(tile_h, tile_w, tile_batch)
    if weighting not in BLEND_KINDS:
        raise ValueError(f"weighting must be one of {', '.join(BLEND_KINDS)}, not {weighting!r}")
    if not 0 <= overlap < min(tile_h, tile_w):
        raise ValueError(f"overlap ({overlap} cells) must be at least 0 and smaller than the "
                         f"tile ({tile_h}x{tile_w} cells)")
    plans: dict[tuple, tuple[list[Tile], list[torch.Tensor]]] = {}

    def fused(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        height, width = x.shape[-2:]
        if tile_h >= height and tile_w >= width:
            return _whole(denoiser, x, t, cond, on_tile, should_stop)
        key = (height, width, x.device)
        if key not in plans:
            tiles = plan_tiles(height, width, tile_h, tile_w, overlap, align)
            weights = blend_weights(tiles, height, width, weighting, overlap)
            plans[key] = tiles, [w.to(x.device) for w in weights]
        tiles, weights = plans[key]
        return fuse_tiles(denoiser, x, t, cond, tiles, weights, tile_batch, on_tile, should_stop)

    return fused


def seam_offset(seed: int, t: torch.Tensor, height: int, width: int, tile_h: int,
                tile_w: int, granularity: int = 8) -> tuple[int, int]:
    """The grid shift ``(dy, dx)`` of a step: drawn in ``[0, tile)`` per axis, in multiples
    of ``granularity``, by a private RNG seeded from ``(seed, step_key(t))``; 0 along an
    axis the tile covers whole. Every call of one step gets the same shift."""
    rng = random.Random(f"tilesampler-moving-seams:{int(seed)}:{step_key(t)!r}")
    step = max(1, granularity)
    dy = rng.randrange(0, tile_h, step) if tile_h < height else 0
    dx = rng.randrange(0, tile_w, step) if tile_w < width else 0
    return dy, dx


def moving_seam_denoiser(denoiser: Denoiser, tile_h: int, tile_w: int, seed: int,
                         wrap: bool = False, tile_batch: int = 1,
                         on_tile: Optional[OnTile] = None,
                         should_stop: Optional[ShouldStop] = None,
                         granularity: int = 8) -> Denoiser:
    """SpotDiffusion: non-overlapping ``tile_h x tile_w`` tiles on a grid shifted at every
    step by ``seam_offset``.

    ``wrap=False``: the grid is cut at the latent's borders, so border tiles may be
    smaller (tiles of one size are batched together). Offsets in multiples of
    ``granularity`` (default 8 cells, the U-Net's total downsampling) keep every tile a
    multiple of 8 cells when the latent and the tile are. ``wrap=True`` (the host's
    seamless tiling): latent and spatial conditioning are rolled by the offset with
    ``torch.roll``, tiled from the origin and rolled back, so the wrap-around seam moves too.
    """
    _check_tile(tile_h, tile_w, tile_batch)

    def moving(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        height, width = x.shape[-2:]
        if tile_h >= height and tile_w >= width:
            return _whole(denoiser, x, t, cond, on_tile, should_stop)
        dy, dx = seam_offset(seed, t, height, width, tile_h, tile_w, granularity)
        if not wrap:
            tiles = shifted_grid(height, width, tile_h, tile_w, dy, dx)
            return paste_tiles(denoiser, x, t, cond, tiles, tile_batch, on_tile, should_stop)
        back = (-dy, -dx)
        rolled_x = torch.roll(x, back, dims=(-2, -1))
        rolled_cond = roll_cond(cond, back, (height, width))
        tiles = shifted_grid(height, width, tile_h, tile_w)
        out = paste_tiles(denoiser, rolled_x, t, rolled_cond, tiles, tile_batch, on_tile, should_stop)
        return torch.roll(out, (dy, dx), dims=(-2, -1))

    return moving
