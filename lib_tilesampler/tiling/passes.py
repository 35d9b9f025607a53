"""One latent-tile resample job, written against two small callables the host supplies.

* ``sample_whole(latent, noise, wrap)``: run the host's sampler img2img-style over the
  whole latent from the resample's start step, with its denoiser wrapped by ``wrap``
  (fused and moving modes).
* ``sample_tiles(latents, noises, tiles)``: the same for a batch of equal-size tiles,
  without wrapping (independent mode; see ``resample.resample_independent``).

The host decides how a sampler runs; this module decides the tiles, the noise and the
wrappers, so both WebUIs get the same maths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from .conditioning import pop_place, with_place
from .independent import is_identity, resample_independent, steps_to_run
from .denoisers import (Denoiser, OnTile, ShouldStop, check_stop, fused_denoiser,
                        moving_seam_denoiser)
from .plan import Tile, batch_tiles, blend_weights, plan_tiles

LATENT_FACTOR = 8   # image pixels per latent cell
LATENT_ALIGN = 8    # tile sides in multiples of the U-Net's total downsampling (3 halvings)
Wrap = Callable[[Denoiser], Denoiser]
SampleWhole = Callable[[torch.Tensor, torch.Tensor, Wrap], torch.Tensor]
SampleTiles = Callable[[torch.Tensor, torch.Tensor, Sequence[Tile]], torch.Tensor]


@dataclass(frozen=True)
class TilePlan:
    """The resample options in latent cells, with the host's defaults filled in.

    No image seed is part of the plan: the noise comes from each image's own seed (see
    ``seeded_noise``, ``tile_seeds``) and the moving seams from ``salt`` and the step,
    so every image of a batch is resampled as it would be alone."""

    mode: str            # "independent", "fused", "moving"
    weights: str         # "gaussian" or "uniform" (fused mode)
    tile: int            # latent cells
    overlap: int         # latent cells
    batch: int
    denoise: float
    steps: int
    salt: int = 0        # what the moving seams' offsets are drawn from, with the step
    wrap: bool = False   # the host's seamless tiling is on

    @classmethod
    def from_values(cls, values: Mapping[str, Any], steps: int, salt: int = 0,
                    wrap: bool = False) -> "TilePlan":
        tile = max(1, int(values["resample_tile_size"]) // LATENT_FACTOR)
        overlap = int(values["resample_overlap"]) // LATENT_FACTOR
        if values["resample_mode"] != "moving" and overlap >= tile:
            raise ValueError(f"resample_overlap ({values['resample_overlap']} px) must be smaller "
                             f"than resample_tile_size ({values['resample_tile_size']} px)")
        return cls(mode=values["resample_mode"], weights=values["resample_weights"], tile=tile,
                   overlap=overlap, batch=int(values["resample_batch"]),
                   denoise=float(values["resample_denoise"]), steps=int(steps), salt=int(salt),
                   wrap=wrap)

    def exceeds(self, latent_hw: Sequence[int]) -> bool:
        """True when the latent is larger than one tile along some axis."""
        return latent_hw[-2] > self.tile or latent_hw[-1] > self.tile

    def tiles(self, height: int, width: int) -> list[Tile]:
        """The overlapping tiles of the independent and fused modes over a latent."""
        return plan_tiles(height, width, self.tile, self.tile, self.overlap, LATENT_ALIGN)


def make_wrap(plan: TilePlan, on_tile: Optional[OnTile] = None,
              should_stop: Optional[ShouldStop] = None) -> Wrap:
    """The denoiser wrapper of a fused or moving plan."""
    if plan.mode == "fused":
        return lambda d: fused_denoiser(d, plan.tile, plan.tile, plan.overlap, plan.weights,
                                        plan.batch, on_tile, should_stop, LATENT_ALIGN)
    if plan.mode == "moving":
        return lambda d: moving_seam_denoiser(d, plan.tile, plan.tile, plan.salt, plan.wrap,
                                              plan.batch, on_tile, should_stop)
    raise ValueError(f"mode {plan.mode!r} does not wrap the denoiser")


def place_within(tile: Tile, latent_hw: Sequence[int]) -> Wrap:
    """The wrapper of a sampler run over one tile sampled as a whole latent (independent
    mode): the place each call carries (see ``conditioning.TilePlace``) is moved into
    ``tile`` of the ``latent_hw`` latent, so the host crops hints and sizes for the tile."""
    def wrap(denoiser: Denoiser) -> Denoiser:
        def call(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            cond, place = pop_place(cond)
            if place is not None:
                cond = with_place(cond, place.within(tile, latent_hw))
            return denoiser(x, t, cond)
        return call
    return wrap


def seeded_noise(shape: Sequence[int], seeds: Sequence[int], dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """Unit Gaussian noise, one CPU generator per batch row seeded from ``seeds`` (cycled),
    so the same seed gives the same noise on every device and batch layout."""
    rows = []
    for i in range(shape[0]):
        g = torch.Generator().manual_seed(int(seeds[i % len(seeds)]) & 0xFFFF_FFFF_FFFF_FFFF)
        rows.append(torch.randn(tuple(shape[1:]), generator=g))
    return torch.stack(rows).to(device=device, dtype=dtype)


_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64's output function (Steele, Lea and Flood 2014) of ``z + golden gamma``."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, *parts: int) -> int:
    """A seed for one part of a job (a tile, a purpose) derived from an image's seed:
    SplitMix64 of the seed, then of that plus an odd multiple of each part in turn, so
    neighbouring seeds and parts give unrelated streams. 63 bits, non-negative."""
    x = _splitmix64(int(seed) & _MASK64)
    for part in parts:
        x = _splitmix64((x + (int(part) & _MASK64) * 0xD1B54A32D192ED03 + 1) & _MASK64)
    return x >> 1


def tile_index(tile: Tile, latent_hw: Sequence[int]) -> int:
    """A number for a tile that depends only on its place in the latent."""
    return tile.y * int(latent_hw[1]) + tile.x


def tile_seeds(seeds: Sequence[int], tiles: Sequence[Tile], latent_hw: Sequence[int],
               purpose: int = 0) -> list[int]:
    """One seed per row of a tile-major batch (all rows of tile 0, then of tile 1, ...):
    the row's image seed mixed with the tile's place, so a tile's noise (the sampler's
    ancestral noise, an SDE sampler's Brownian tree) is the same in any tile batch and
    for an image alone or in a batch."""
    return [derive_seed(s, tile_index(t, latent_hw), purpose) for t in tiles for s in seeds]


def img2img_steps(steps: int, denoise: float, timesteps: bool = False) -> tuple[int, float]:
    """``(steps argument, denoising strength)`` that make the WebUIs' ``sample_img2img``
    run exactly the seed node's steps of a ``steps``-step schedule: from index
    ``start_step(steps, denoise)`` to the end, ``n = steps - start`` denoiser steps.

    Both WebUIs, given an explicit ``steps`` argument ``k``, build a schedule of
    ``int(k / min(strength, 0.999))`` steps and run the last ``k`` of them for
    k-diffusion samplers (``t_enc = k - 1``, slice from ``len - t_enc - 1``), or ``k - 1``
    of them for the timestep samplers (DDIM, PLMS, UniPC run ``t_enc`` calls). So
    ``k = n`` (``n + 1`` for timestep samplers) and ``strength = k / (steps + 0.5)``
    give back ``steps`` (DDIM and PLMS then make ``n - 1`` updates over those ``n`` grid
    points, as their txt2img runs make one fewer update than grid points; UniPC ``n``); the ``+ 0.5`` keeps the floor away from float noise. Passing
    ``k`` also makes the WebUI ignore its "img2img fix steps" setting. At full denoise a
    timestep sampler needs ``k = steps + 1``, which no strength below 0.999 reaches: its
    schedule then has ``steps + 1`` steps, ``steps`` of which run.
    """
    n = steps_to_run(steps, denoise)
    if n == 0:
        return 0, 0.0
    k = n + 1 if timesteps else n
    return k, min(k / (steps + 0.5), 1.0)


def run_resample(latent: torch.Tensor, plan: TilePlan, seeds: Sequence[int],
                 sample_whole: SampleWhole, sample_tiles: SampleTiles,
                 on_tile: Optional[OnTile] = None,
                 should_stop: Optional[ShouldStop] = None) -> torch.Tensor:
    """Resample ``latent`` (B, C, H, W) after the main sampling, as ``plan`` says.

    ``denoise == 0`` returns the latent itself. ``TileInterrupted`` propagates when
    ``should_stop()`` says so between tiles or after the last sampler run (which the
    host's own interrupt may have ended early): the host decides what an interrupted pass
    returns (the latent as it was).
    """
    if is_identity(plan.steps, plan.denoise):
        return latent
    noise = seeded_noise(latent.shape, seeds, latent.dtype, latent.device)
    if plan.mode == "independent":
        height, width = latent.shape[-2:]
        tiles = plan.tiles(height, width)
        weights = blend_weights(tiles, height, width, "smooth", plan.overlap)
        return resample_independent(latent, noise, tiles, weights, sample_tiles, plan.batch,
                                    on_tile, should_stop)
    out = sample_whole(latent, noise, make_wrap(plan, on_tile, should_stop))
    check_stop(should_stop, 1, 1)   # the host's own interrupt ends its sampler early
    return out


def sampler_runs(plan: TilePlan, height: int, width: int) -> int:
    """Sampler runs of the pass over a ``height x width`` latent (for progress totals):
    one per tile batch in independent mode, one otherwise; 0 at denoise 0."""
    if is_identity(plan.steps, plan.denoise):
        return 0
    if plan.mode == "independent":
        return len(batch_tiles(plan.tiles(height, width), plan.batch))
    return 1
