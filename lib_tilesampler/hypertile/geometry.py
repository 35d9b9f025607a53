"""HyperTile: self-attention over non-overlapping windows of the token grid.

HyperTile (tfernd, 2023) splits the tokens of a U-Net self-attention layer into
``nh x nw`` rectangular windows and attends inside each window only, which cuts the
quadratic attention cost by ``nh * nw``. The window counts are drawn among the ``swap_size``
largest admissible counts so that window borders move between steps.

Two things here differ from the published implementations:

* the token grid ``(h, w)`` of a layer is taken from the latent shape the U-Net was
  really called with, downsampled as the U-Net does it (``ceil(H / 2)`` per level),
  never guessed from an aspect ratio (which swaps h and w for non-square latents and
  gives comb-shaped windows);
* the depth of a layer is found by matching its token count to those grids, so no
  per-model layer tables are needed (SD1.x, SD2.x, SDXL base and refiner alike).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from einops import rearrange

from ..step_key import step_key

LATENT_FACTOR = 8  # pixels per latent cell for SD1.x / SD2.x / SDXL


@dataclass(frozen=True)
class HyperTileConfig:
    """What the user chose: tile size in pixels, swap size, max depth, scale depth."""

    tile_size: int = 256
    swap_size: int = 2
    max_depth: int = 0
    scale_depth: bool = False

    def min_window(self, depth: int) -> int:
        """Smallest window side, in tokens, at ``depth`` (as in the ComfyUI seed node)."""
        base = max(32, self.tile_size) // LATENT_FACTOR
        return base * (2 ** depth if self.scale_depth else 1)


@dataclass(frozen=True)
class Windows:
    """A split of an ``h x w`` token grid into ``nh x nw`` equal windows."""

    h: int
    w: int
    nh: int
    nw: int

    @property
    def count(self) -> int:
        return self.nh * self.nw


def level_grid(latent_hw: Sequence[int], depth: int) -> tuple[int, int]:
    """Token grid of U-Net level ``depth`` for a latent of size ``latent_hw``.

    Each downsampling is a stride-2 convolution with padding 1, whose output side is
    ``ceil(n / 2)``; applied ``depth`` times this is ``ceil(n / 2**depth)``.
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    for _ in range(depth):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def find_depth(tokens: int, latent_hw: Sequence[int], max_level: int = 8) -> Optional[int]:
    """The U-Net level whose token grid holds ``tokens`` tokens, or None."""
    for depth in range(max_level + 1):
        h, w = level_grid(latent_hw, depth)
        if h * w == tokens:
            return depth
        if h * w < tokens:
            return None
    return None


def window_count_options(side: int, min_window: int, swap_size: int) -> list[int]:
    """The ``swap_size`` largest window counts ``n`` that divide ``side`` with windows of
    at least ``min_window`` tokens. Always holds at least ``1`` (no split)."""
    min_window = max(1, min(min_window, side))
    sizes = [s for s in range(min_window, side + 1) if side % s == 0]
    return [side // s for s in sizes[: max(1, swap_size)]]


def choose_windows(h: int, w: int, min_window: int, swap_size: int, rng: random.Random) -> Windows:
    """Draw the window counts per axis among the best options, with a private RNG."""
    nh = rng.choice(window_count_options(h, min_window, swap_size))
    nw = rng.choice(window_count_options(w, min_window, swap_size))
    return Windows(h, w, nh, nw)


def split_tokens(x: torch.Tensor, win: Windows) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B*nh*nw, window tokens, C), one row per window."""
    return rearrange(x, "b (nh th nw tw) c -> (b nh nw) (th tw) c",
                     nh=win.nh, nw=win.nw, th=win.h // win.nh, tw=win.w // win.nw)


def merge_tokens(x: torch.Tensor, win: Windows) -> torch.Tensor:
    """Inverse of :func:`split_tokens`."""
    return rearrange(x, "(b nh nw) (th tw) c -> b (nh th nw tw) c",
                     nh=win.nh, nw=win.nw, th=win.h // win.nh, tw=win.w // win.nw)


def split_image(x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*nh*nw, C, H/nh, W/nw): the same windows for 4-D feature maps."""
    return rearrange(x, "b c (nh th) (nw tw) -> (b nh nw) c th tw", nh=nh, nw=nw)


def merge_image(x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """Inverse of :func:`split_image`."""
    return rearrange(x, "(b nh nw) c th tw -> b c (nh th) (nw tw)", nh=nh, nw=nw)


@dataclass
class HyperTileStats:
    """Counts of attention calls, for the console and the tests."""

    tiled: int = 0
    untiled_no_divisor: int = 0
    whole_by_draw: int = 0
    skipped_depth: int = 0
    unknown_shape: int = 0
    depths: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.tiled} attention calls tiled, {self.untiled_no_divisor} left whole "
                f"(no divisor), {self.whole_by_draw} whole by the draw (one window drawn among "
                f"the swap choices), {self.skipped_depth} deeper than max depth, "
                f"{self.unknown_shape} not matched to a level")


class HyperTilePlanner:
    """Decides the windows of each self-attention call of one sampling pass.

    ``observe_call`` records, at U-Net entry, the latent size and the step of the call;
    ``plan(tokens)`` then returns the windows for a layer with that many tokens, or None
    to leave it whole.

    The window counts are drawn among the ``swap_size`` best ones by a private
    ``random.Random`` seeded from ``(salt, step, depth, grid)`` alone, never from a
    counter of calls: the same step of the same pass gets the same windows however many
    U-Net calls the host makes (Forge splits cond and uncond into one or two calls
    depending on free memory) and in whatever order, and every image of a batch gets the
    windows it gets when generated alone. Borders still move from step to step and from
    depth to depth, which is what the swap is for. ``salt`` tells passes apart (0 for the
    first pass, 1 for the hires pass). Nothing else in the process is reseeded.
    """

    def __init__(self, config: HyperTileConfig, salt: int = 0) -> None:
        self.config = config
        self.salt = int(salt)
        self.latent_hw: Optional[tuple[int, int]] = None
        self.step: Optional[float] = None
        self.stats = HyperTileStats()
        self._draws: dict[tuple, Windows] = {}

    def observe_latent(self, shape: Sequence[int], t: Optional[object] = None) -> None:
        """Record the spatial size of the latent the U-Net is called with, and its step
        (the call's timesteps or sigmas, see ``step_key``)."""
        self.latent_hw = (int(shape[-2]), int(shape[-1]))
        self.step = step_key(t)

    def draw(self, h: int, w: int, depth: int, step: Optional[float]) -> Windows:
        """The windows of a ``h x w`` grid at ``depth`` for the step ``step``."""
        key = (h, w, depth, step)
        if key not in self._draws:
            rng = random.Random(f"tilesampler-hypertile:{self.salt}:{step!r}:{depth}:{h}x{w}")
            self._draws[key] = choose_windows(h, w, self.config.min_window(depth),
                                              self.config.swap_size, rng)
        return self._draws[key]

    def plan(self, tokens: int, latent_hw: Optional[Sequence[int]] = None,
             step: Optional[object] = None) -> Optional[Windows]:
        """Windows for a self-attention call over ``tokens`` tokens. ``latent_hw`` and
        ``step`` default to what ``observe_latent`` recorded; a ``step`` given here is a
        raw timestep or sigma tensor (see ``step_key``)."""
        hw = latent_hw if latent_hw is not None else self.latent_hw
        key = step_key(step) if step is not None else self.step
        if hw is None:
            self.stats.unknown_shape += 1
            return None
        depth = find_depth(tokens, hw)
        if depth is None:
            self.stats.unknown_shape += 1
            return None
        if depth > self.config.max_depth:
            self.stats.skipped_depth += 1
            return None
        h, w = level_grid(hw, depth)
        min_window, swap = self.config.min_window(depth), self.config.swap_size
        if window_count_options(h, min_window, swap) == [1] == window_count_options(w, min_window, swap):
            self.stats.untiled_no_divisor += 1
            return None
        win = self.draw(h, w, depth, key)
        if win.count == 1:
            self.stats.whole_by_draw += 1
            return None
        self.stats.tiled += 1
        self.stats.depths[depth] = self.stats.depths.get(depth, 0) + 1
        return win


def tiled_attention(x: torch.Tensor, attention: Callable[[torch.Tensor], torch.Tensor],
                    win: Optional[Windows]) -> torch.Tensor:
    """Run ``attention`` (tokens -> tokens) window by window; whole when ``win`` is None."""
    if win is None:
        return attention(x)
    return merge_tokens(attention(split_tokens(x, win)), win)


def vae_windows(h: int, w: int, config: HyperTileConfig) -> Windows:
    """Windows for a VAE mid-block attention on an ``h x w`` feature map.

    The VAE attends at latent resolution; windows are at least 128 px (16 latent cells)
    wide, as small windows there visibly change colours. The draw depends on the grid
    only, so every image of a batch is decoded as it would be alone.
    """
    rng = random.Random(f"tilesampler-hypertile-vae:{h}x{w}")
    return choose_windows(h, w, max(16, config.tile_size // (2 * LATENT_FACTOR)),
                          config.swap_size, rng)
