"""Independent-tile resampling: the seed node's pass (MikeyLatentTileSampler).

Each tile of a finished latent is re-denoised on its own from a partial noise level by a
whole sampler run (the host's), then the tiles are blended back over their overlaps with
the ``"smooth"`` weights of ``tiles.blend_weights``. The fused and moving-seam modes need
no code here: the host samples the whole latent with the wrapped denoiser of
``denoisers``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from .conditioning import stack_tiles, unstack_tiles
from .denoisers import OnTile, ShouldStop, accumulation_dtype, check_stop
from .plan import Tile, batch_tiles, blend_weights

SampleTiles = Callable[[torch.Tensor, torch.Tensor, Sequence[Tile]], torch.Tensor]
"""``sample_tiles(latents, noise, tiles) -> latents``: the host runs its sampler over a
batch of equal-size tiles (tile-major rows, ``len(tiles) * B``) with the given noise and
returns the denoised tiles; it crops its own conditioning with ``conditioning.crop_cond``."""


def start_step(steps: int, denoise: float) -> int:
    """The step the resample starts from: ``int(steps - steps * denoise)``, as in the seed
    node, so ``ceil(steps * denoise)`` steps run (at least one when ``denoise > 0``).

    The product is rounded to 9 decimals before the floor, so float noise does not cost a
    step (30 x 0.1 is 3.0000000000000004 in floats: 27, not 26).
    """
    if steps < 0:
        raise ValueError(f"steps must be at least 0, not {steps}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be between 0 and 1, not {denoise}")
    return math.floor(round(steps - steps * denoise, 9))


def steps_to_run(steps: int, denoise: float) -> int:
    """How many sampler steps a resample at ``denoise`` runs: ``steps - start_step``."""
    return steps - start_step(steps, denoise)


def is_identity(steps: int, denoise: float) -> bool:
    """True when no step would run (``denoise == 0``): the pass must leave the latent as
    it is, and the host skips it."""
    return steps_to_run(steps, denoise) == 0


def resample_independent(latent: torch.Tensor, noise: torch.Tensor, tiles: Sequence[Tile],
                         weights: Optional[Sequence[torch.Tensor]], sample_tiles: SampleTiles,
                         tile_batch: int = 1, on_tile: Optional[OnTile] = None,
                         should_stop: Optional[ShouldStop] = None) -> torch.Tensor:
    """Re-denoise every tile of ``latent`` (B, C, H, W) on its own and blend them back.

    ``noise`` is the full-size noise drawn once from the seed; each tile gets its crop,
    so a tile's result does not depend on ``tile_batch`` (how many tiles one
    ``sample_tiles`` call gets). ``weights`` are the per-tile maps of ``blend_weights``
    (``None``: the ``"smooth"`` ones). What is blended is the change each tile made,
    ``latent + sum_i W_i (out_i - latent) / sum_i W_i`` (the same weighted average, in
    float32, or float64 for a float64 latent), so tiles that return their input leave
    the latent bit for bit unchanged. A single tile over the whole latent returns the
    sampler's output untouched.
    """
    if latent.shape != noise.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the latent's shape "
                         f"{tuple(latent.shape)}")
    height, width = latent.shape[-2:]
    if len(tiles) == 1 and tiles[0] == Tile(0, 0, height, width):
        check_stop(should_stop, 0, 1)
        out = sample_tiles(latent, noise, tiles)
        check_stop(should_stop, 0, 1)
        if on_tile is not None:
            on_tile(1, 1)
        return out
    if weights is None:
        weights = blend_weights(tiles, height, width, "smooth")
    index = {tile: i for i, tile in enumerate(tiles)}
    dtype = accumulation_dtype(latent)
    change = torch.zeros(latent.shape, dtype=dtype, device=latent.device)
    total = torch.zeros((height, width), dtype=dtype, device=latent.device)
    done = 0
    for batch in batch_tiles(tiles, tile_batch):
        check_stop(should_stop, done, len(tiles))
        out = sample_tiles(stack_tiles(latent, batch), stack_tiles(noise, batch), batch)
        check_stop(should_stop, done, len(tiles))   # the sampler may have stopped early
        for tile, rows in zip(batch, unstack_tiles(out, len(batch))):
            cells = tile.slices()
            w = weights[index[tile]].to(device=latent.device, dtype=dtype)
            change[(..., *cells)] += (rows.to(dtype) - tile.crop(latent).to(dtype)) * w
            total[cells] += w
        done += len(batch)
        if on_tile is not None:
            on_tile(done, len(tiles))
    return (latent.to(dtype) + change / total).to(latent.dtype)
