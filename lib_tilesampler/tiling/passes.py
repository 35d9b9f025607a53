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

from .independent import is_identity, resample_independent
from .denoisers import (Denoiser, OnTile, ShouldStop, fused_denoiser, moving_seam_denoiser)
from .plan import Tile, blend_weights, plan_tiles

LATENT_FACTOR = 8   # image pixels per latent cell
LATENT_ALIGN = 8    # tile sides in multiples of the U-Net's total downsampling (3 halvings)
Wrap = Callable[[Denoiser], Denoiser]
SampleWhole = Callable[[torch.Tensor, torch.Tensor, Wrap], torch.Tensor]
SampleTiles = Callable[[torch.Tensor, torch.Tensor, Sequence[Tile]], torch.Tensor]


@dataclass(frozen=True)
class TilePlan:
    """The resample options in latent cells, with the host's defaults filled in."""

    mode: str            # "independent", "fused", "moving"
    weights: str         # "gaussian" or "uniform" (fused mode)
    tile: int            # latent cells
    overlap: int         # latent cells
    batch: int
    denoise: float
    steps: int
    seed: int
    wrap: bool = False   # the host's seamless tiling is on

    @classmethod
    def from_values(cls, values: Mapping[str, Any], steps: int, seed: int,
                    wrap: bool = False) -> "TilePlan":
        tile = max(1, int(values["resample_tile_size"]) // LATENT_FACTOR)
        overlap = int(values["resample_overlap"]) // LATENT_FACTOR
        if values["resample_mode"] != "moving" and overlap >= tile:
            raise ValueError(f"resample_overlap ({values['resample_overlap']} px) must be smaller "
                             f"than resample_tile_size ({values['resample_tile_size']} px)")
        return cls(mode=values["resample_mode"], weights=values["resample_weights"], tile=tile,
                   overlap=overlap, batch=int(values["resample_batch"]),
                   denoise=float(values["resample_denoise"]), steps=int(steps), seed=int(seed),
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
        return lambda d: moving_seam_denoiser(d, plan.tile, plan.tile, plan.seed, plan.wrap,
                                              plan.batch, on_tile, should_stop)
    raise ValueError(f"mode {plan.mode!r} does not wrap the denoiser")


def seeded_noise(shape: Sequence[int], seeds: Sequence[int], dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """Unit Gaussian noise, one CPU generator per batch row seeded from ``seeds`` (cycled),
    so the same seed gives the same noise on every device and batch layout."""
    rows = []
    for i in range(shape[0]):
        g = torch.Generator().manual_seed(int(seeds[i % len(seeds)]) & 0xFFFF_FFFF_FFFF_FFFF)
        rows.append(torch.randn(tuple(shape[1:]), generator=g))
    return torch.stack(rows).to(device=device, dtype=dtype)


def run_resample(latent: torch.Tensor, plan: TilePlan, seeds: Sequence[int],
                 sample_whole: SampleWhole, sample_tiles: SampleTiles,
                 on_tile: Optional[OnTile] = None,
                 should_stop: Optional[ShouldStop] = None) -> torch.Tensor:
    """Resample ``latent`` (B, C, H, W) after the main sampling, as ``plan`` says.

    ``denoise == 0`` returns the latent itself. ``TileInterrupted`` from ``should_stop``
    propagates: the host decides what an interrupted pass returns.
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
    return sample_whole(latent, noise, make_wrap(plan, on_tile, should_stop))
