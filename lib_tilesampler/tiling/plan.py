"""Tiles over a latent: where they go, how their outputs are blended, how seams are measured.

All sizes here are in latent cells (one cell = 8 image pixels for SD1.x / SD2.x / SDXL).
A tile plan covers every cell; blend weights turn the overlapping tile outputs back into
one latent (a partition of unity: at every cell the weights of the tiles covering it sum
to one); ``seam_score`` measures how visible the tile borders are in a result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

BLEND_KINDS = ("uniform", "gaussian", "smooth")
GAUSSIAN_SIGMA = 0.1  # Mixture of Diffusers: sigma = 0.1 x tile side (variance 0.01)


@dataclass(frozen=True)
class Tile:
    """A rectangle of latent cells: rows ``y .. y+h-1``, columns ``x .. x+w-1``."""

    y: int
    x: int
    h: int
    w: int

    @property
    def size(self) -> tuple[int, int]:
        return self.h, self.w

    def slices(self) -> tuple[slice, slice]:
        """Index of the tile in the last two dims: ``tensor[(..., *tile.slices())]``."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The tile's part of ``x`` (..., H, W) -> (..., h, w), a view."""
        return x[(..., *self.slices())]


def axis_span(size: int, tile: int, overlap: int, align: int = 1) -> tuple[int, list[int]]:
    """The side and the origins of the equal tiles along one axis of ``size`` cells.

    ``tile`` is the largest side allowed (the memory budget). ``n`` tiles of side ``s``
    whose neighbours overlap by ``overlap`` span ``n s - (n - 1) overlap`` cells, so the
    fewest tiles of at most ``tile`` cells are ``n = ceil((size - overlap) / (tile - overlap))``.
    Rather than keeping them ``tile`` cells wide (which makes the overlaps, and the U-Net
    work, larger than asked), the tiles shrink to the least side that still spans the axis,
    ``s = ceil((size + (n - 1) overlap) / n)``, rounded up to a multiple of ``align`` (the
    U-Net's total downsampling, so that a tile passes it without padding) when that stays
    within ``tile`` (a ``tile`` that is not a multiple of ``align`` counts as the multiple
    below it, when that is still larger than the overlap). The work per step along the axis is then ``n s / size``: for 2048 px
    from 1024 px tiles with 128 px of overlap, 3 tiles of 768 px (1.125, so 1.27 in 2-D),
    where 3 tiles of 1024 px would be 1.5 (2.25 in 2-D).

    Origins are ``round(i (size - s) / (n - 1))``: the first tile starts at 0, the last
    ends flush with the far edge, the gaps are spread evenly, and as
    ``(size - s) / (n - 1) <= s - overlap`` every real overlap is at least ``overlap``.
    """
    if size <= tile:
        return size, [0]
    cap = tile - tile % align
    if cap <= overlap:
        cap = tile          # no aligned side above the overlap fits: keep the tile as given
    n = -(-(size - overlap) // (cap - overlap))
    least = -(-(size + (n - 1) * overlap) // n)
    aligned = -(-least // align) * align
    side = aligned if aligned <= cap else cap
    span = size - side
    return side, [(2 * i * span + n - 1) // (2 * (n - 1)) for i in range(n)]


def plan_tiles(height: int, width: int, tile_h: int, tile_w: int, overlap: int,
               align: int = 1) -> list[Tile]:
    """Equal, overlapping tiles covering a ``height x width`` latent, in row-major order.

    Tiles are at most ``tile_h x tile_w`` cells, as few as that allows, and no larger than
    needed for neighbours to overlap by at least ``overlap`` (see ``axis_span``). A side
    not larger than the tile is one tile of that side.
    """
    if min(height, width) < 1:
        raise ValueError(f"latent must be at least 1x1 cells, not {height}x{width}")
    if min(tile_h, tile_w) < 1:
        raise ValueError(f"tile must be at least 1x1 cells, not {tile_h}x{tile_w}")
    if align < 1:
        raise ValueError(f"align must be at least 1 cell, not {align}")
    if overlap < 0:
        raise ValueError(f"overlap must be at least 0, not {overlap}")
    if overlap >= min(tile_h, tile_w):
        raise ValueError(f"overlap ({overlap} cells) must be smaller than the tile "
                         f"({tile_h}x{tile_w} cells)")
    th, ys = axis_span(height, tile_h, overlap, align)
    tw, xs = axis_span(width, tile_w, overlap, align)
    return [Tile(y, x, th, tw) for y in ys for x in xs]


def plan_work(tiles: Sequence[Tile]) -> float:
    """U-Net work of a plan per step: the sum of tile areas over the latent's area."""
    height, width = covered_size(tiles)
    return sum(t.h * t.w for t in tiles) / (height * width)


def grid_cuts(size: int, tile: int, offset: int) -> list[tuple[int, int]]:
    """Segments ``(start, length)`` of a non-overlapping grid of period ``tile`` whose
    cuts are at ``offset + k * tile``; the pieces at both ends may be shorter."""
    offset %= tile
    cuts = [0] + list(range(offset if offset else tile, size, tile)) + [size]
    return [(a, b - a) for a, b in zip(cuts, cuts[1:]) if b > a]


def shifted_grid(height: int, width: int, tile_h: int, tile_w: int,
                 dy: int = 0, dx: int = 0) -> list[Tile]:
    """Non-overlapping tiles of ``tile_h x tile_w`` on a grid shifted by ``(dy, dx)``,
    cut at the latent's borders (partial tiles there), in row-major order."""
    return [Tile(y, x, h, w) for y, h in grid_cuts(height, tile_h, dy)
            for x, w in grid_cuts(width, tile_w, dx)]


def batch_tiles(tiles: Sequence[Tile], tile_batch: int) -> list[list[Tile]]:
    """Batches of at most ``tile_batch`` tiles of one size (a denoiser call stacks them),
    sizes in order of first appearance and tiles in plan order within a size."""
    if tile_batch < 1:
        raise ValueError(f"tile batch must be at least 1, not {tile_batch}")
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault(t.size, []).append(t)
    return [g[i:i + tile_batch] for g in groups.values() for i in range(0, len(g), tile_batch)]


def covered_size(tiles: Sequence[Tile]) -> tuple[int, int]:
    """The latent size a plan covers: the far edge of its farthest tiles."""
    return max(t.y + t.h for t in tiles), max(t.x + t.w for t in tiles)


def _gaussian_1d(n: int) -> torch.Tensor:
    """exp(-(i - c)^2 / (2 (0.1 n)^2)) at cell centres i + 0.5, centre c = n / 2."""
    pos = torch.arange(n, dtype=torch.float64) + 0.5
    return torch.exp(-0.5 * ((pos - n / 2) / (GAUSSIAN_SIGMA * n)) ** 2)


def _ramp(n: int) -> torch.Tensor:
    """sin^2(pi/2 * (i + 0.5) / n) for i < n: rises from ~0 to ~1, strictly inside (0, 1).

    The mirrored ramp of the neighbour over the same cells is cos^2 of the same angle, so
    the two sum to exactly one (the Hann / raised-cosine crossfade)."""
    pos = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.sin(0.5 * math.pi * pos) ** 2


def _smooth_1d(length: int, near: int, far: int) -> torch.Tensor:
    """1-D weight of a tile: raised-cosine ramps over the ``near`` / ``far`` overlaps,
    flat 1 elsewhere (and at the latent borders, where the overlaps are 0)."""
    w = torch.ones(length, dtype=torch.float64)
    if near:
        w[:near] *= _ramp(near)
    if far:
        w[length - far:] *= _ramp(far).flip(0)
    return w


def _overlaps(spans: Sequence[tuple[int, int]], start: int, length: int) -> tuple[int, int]:
    """Real overlap of the span ``[start, start+length)`` with its neighbours before and
    after it along one axis, among ``spans`` (start, length)."""
    end = start + length
    near = max([min(e, end) - start for s, e in ((s, s + n) for s, n in spans)
                if s < start and e > start], default=0)
    far = max([end - max(s, start) for s, e in ((s, s + n) for s, n in spans)
               if e > end and s < end], default=0)
    return near, far


def blend_weights(tiles: Sequence[Tile], height: int, width: int, kind: str = "smooth",
                  overlap: int = 0) -> list[torch.Tensor]:
    """Per-tile weight maps (float32, ``(tile.h, tile.w)``), normalised so that at every
    cell the weights of the tiles covering it sum to one, and > 0 wherever a tile covers.

    * ``"uniform"`` — MultiDiffusion (Bar-Tal et al. 2023, eq. 5 with W_i = 1): the fused
      value is the plain average of the tiles covering a cell.
    * ``"gaussian"`` — Mixture of Diffusers (Jiménez 2023): a separable 2-D Gaussian per
      tile centred on the tile, sigma = 0.1 x tile side per axis, so a tile's border cells
      weigh ~exp(-12.5) of its centre and the tile's middle dominates.
    * ``"smooth"`` — a raised-cosine crossfade across the real overlap on every inner edge
      and flat 1 elsewhere (also along the latent's borders). On a grid the 1-D ramps of
      neighbours sum to one, so the 2-D products do too before normalisation.

    ``overlap`` is the overlap the plan was made with: ``"smooth"`` ramps span the real
    overlap between neighbours, and a plan whose neighbours overlap by less is refused.
    """
    if kind not in BLEND_KINDS:
        raise ValueError(f"blend kind must be one of {', '.join(BLEND_KINDS)}, not {kind!r}")
    if not tiles:
        raise ValueError("no tiles")
    ys = sorted({(t.y, t.h) for t in tiles})
    xs = sorted({(t.x, t.w) for t in tiles})
    raw = []
    for t in tiles:
        if kind == "uniform":
            wy, wx = torch.ones(t.h, dtype=torch.float64), torch.ones(t.w, dtype=torch.float64)
        elif kind == "gaussian":
            wy, wx = _gaussian_1d(t.h), _gaussian_1d(t.w)
        else:
            (ny, fy), (nx, fx) = _overlaps(ys, t.y, t.h), _overlaps(xs, t.x, t.w)
            shortest = min([v for v in (ny, fy, nx, fx) if v > 0], default=overlap)
            if shortest < overlap:
                raise ValueError(f"neighbouring tiles overlap by {shortest} cells, less than "
                                 f"the requested {overlap}")
            wy, wx = _smooth_1d(t.h, ny, fy), _smooth_1d(t.w, nx, fx)
        raw.append(wy[:, None] * wx[None, :])
    total = torch.zeros(height, width, dtype=torch.float64)
    for t, w in zip(tiles, raw):
        total[t.slices()] += w
    if not bool((total > 0).all()):
        raise ValueError(f"the tiles do not cover every cell of the {height}x{width} latent")
    return [(w / total[t.slices()]).float() for t, w in zip(tiles, raw)]


def weight_sum(tiles: Sequence[Tile], weights: Sequence[torch.Tensor], height: int,
               width: int) -> torch.Tensor:
    """The sum of the pasted weight maps at every cell, (height, width) float64."""
    total = torch.zeros(height, width, dtype=torch.float64)
    for t, w in zip(tiles, weights):
        total[t.slices()] += w.double()
    return total


def seam_mask(height: int, width: int, tiles: Sequence[Tile], band: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which neighbour differences lie on a seam: ``(vertical, horizontal)`` masks of
    shapes ``(height, width - 1)`` (differences along x) and ``(height - 1, width)``.

    A difference is on a seam when one of its two cells is within ``band`` cells of an
    inner tile border (a tile edge that is not the latent's border), along that edge.
    """
    mx = torch.zeros(height, max(width - 1, 0), dtype=torch.bool)
    my = torch.zeros(max(height - 1, 0), width, dtype=torch.bool)
    for t in tiles:
        rows, cols = slice(t.y, t.y + t.h), slice(t.x, t.x + t.w)
        for edge in (t.x, t.x + t.w):
            if 0 < edge < width:  # cells edge-band .. edge+band-1; diffs edge-band-1 .. edge+band-1
                mx[rows, max(edge - band - 1, 0):edge + band] = True
        for edge in (t.y, t.y + t.h):
            if 0 < edge < height:
                my[max(edge - band - 1, 0):edge + band, cols] = True
    return mx, my


def seam_score(image: torch.Tensor, tiles: Sequence[Tile], band: Optional[int] = None) -> float:
    """How visible the tile borders are: mean |neighbour difference| on the seams divided
    by mean |neighbour difference| everywhere else.

    ``image`` is (..., H, W): a latent the tiles were planned on, or a decoded image ``k``
    times larger (``k`` is inferred, and the tiles are scaled by it). Differences are taken
    along x and y; those touching a cell within ``band`` cells of an inner tile border
    (default: one latent cell, ``k`` image pixels) are "on the seam" (a seam shows as a
    step across the border or as a line of altered cells along it). All leading dims are
    averaged. About 1 for a result without seams; clearly above 1 when the borders show.
    Returns 1.0 when the plan has no inner border.
    """
    lh, lw = covered_size(tiles)
    height, width = image.shape[-2:]
    k = height // lh
    if k < 1 or height != k * lh or width != k * lw:
        raise ValueError(f"image of {height}x{width} is not a whole multiple of the "
                         f"{lh}x{lw} latent the tiles cover")
    scaled = [Tile(t.y * k, t.x * k, t.h * k, t.w * k) for t in tiles]
    mx, my = seam_mask(height, width, scaled, k if band is None else band)
    if not (mx.any() or my.any()):
        return 1.0
    image = image.detach().double().reshape(-1, height, width)
    dx = (image[:, :, 1:] - image[:, :, :-1]).abs().mean(0)
    dy = (image[:, 1:, :] - image[:, :-1, :]).abs().mean(0)
    off = torch.cat([dx[~mx], dy[~my]])
    if off.numel() == 0:
        raise ValueError("the tiles are too small to have cells away from their borders")
    on = torch.cat([dx[mx], dy[my]]).mean()
    return float(on / off.mean()) if off.mean() > 0 else math.inf
