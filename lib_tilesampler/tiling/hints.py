"""What a tile call needs from the whole image beyond the latent: ControlNet hints, control
masks and residuals, SDXL's size and crop conditioning, each cut to the tiles of a
``TilePlace`` (see ``conditioning``).

* A **hint** is an image over the whole picture, ``scale`` pixels per latent cell (8 for
  SD): ``crop_pixels`` gives a tile call the pixels under its tiles, one row per row of the
  call (tile-major), so a ControlNet run on a tile sees what it would see of the whole
  image there. ``fit_pixels`` first brings a hint of another size to the image's size the
  way ControlNet's "crop and resize" does (cover, centre crop, nearest), so a hint that was
  made for the whole latent lines up with the latent cell by cell.
* A **residual** is a ControlNet output at one of the U-Net's resolutions (the latent's,
  1/2, 1/4, 1/8): ``crop_level`` cuts a whole-image residual to the tiles at that
  resolution (for a unit that cannot be given a tile's hint and runs on the whole image).
* SDXL's **size conditioning** (Podell et al. 2023, "SDXL", sec. 2.2: the original size,
  the crop's top-left corner and the target size, each number embedded with the sinusoidal
  embedding of Vaswani et al. 2017 and appended to the pooled text embedding): a tile is
  the crop of the image at its place, so ``size_vector_for_tiles`` writes the tile's
  top-left corner and size into the crop and target slots of each row's vector.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .conditioning import TilePlace
from .plan import Tile

LATENT_SCALE = 8   # image pixels per latent cell (SD1.x, SD2.x, SDXL)


def expand_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(1, ...) or (rows, ...) -> (rows, ...); any other leading size is an error."""
    if x.shape[0] == rows:
        return x
    if x.shape[0] == 1:
        return x.expand(rows, *x.shape[1:])
    raise ValueError(f"a tensor of {x.shape[0]} rows cannot be given to {rows} rows")


def _rolled(full: torch.Tensor, place: TilePlace, scale: float) -> torch.Tensor:
    oy, ox = place.offset
    if (oy, ox) == (0, 0):
        return full
    return torch.roll(full, (-round(oy * scale), -round(ox * scale)), dims=(-2, -1))


def _tile_box(tile: Tile, scale: float, size: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of ``tile`` in a map of ``size`` at ``scale`` per latent cell:
    the origin rounded, the side ``ceil(side * scale)`` (what the U-Net's stride-2 steps
    make of a tile), kept inside the map."""
    h, w = max(1, math.ceil(tile.h * scale - 1e-9)), max(1, math.ceil(tile.w * scale - 1e-9))
    y = min(max(0, round(tile.y * scale)), size[0] - h)
    x = min(max(0, round(tile.x * scale)), size[1] - w)
    return slice(y, y + h), slice(x, x + w)


def _cut(full: torch.Tensor, place: TilePlace, scale: float, keep_broadcast: bool) -> torch.Tensor:
    size = tuple(full.shape[-2:])
    full = _rolled(full, place, scale)
    if keep_broadcast and full.shape[0] == 1 and len(place.tiles) == 1:
        return full[(..., *_tile_box(place.tiles[0], scale, size))]
    full = expand_rows(full, place.rows)
    crops = [full[(..., *_tile_box(t, scale, size))] for t in place.tiles]
    if len({c.shape for c in crops}) != 1:
        raise ValueError(f"tiles of one call must have one size, got {[tuple(c.shape) for c in crops]}")
    return torch.cat(crops, dim=0)


def crop_pixels(full: torch.Tensor, place: TilePlace, scale: int = LATENT_SCALE,
                keep_broadcast: bool = True) -> torch.Tensor:
    """A map over the whole latent at ``scale`` per cell (a hint: 1 or ``place.rows`` rows,
    C, H * scale, W * scale) cut to the place's tiles: (``n * rows``, C, h * scale,
    w * scale), tile-major, as the rows of the call are. With ``keep_broadcast`` a one-row
    map over one tile stays one row (the models broadcast it over the rows)."""
    height, width = place.latent_hw
    expected = (height * scale, width * scale)
    if tuple(full.shape[-2:]) != expected:
        raise ValueError(f"a map of {tuple(full.shape[-2:])} is not the latent {place.latent_hw} "
                         f"at {scale} pixels per cell {expected}")
    return _cut(full, place, scale, keep_broadcast)


def crop_level(residual: torch.Tensor, place: TilePlace, keep_broadcast: bool = False) -> torch.Tensor:
    """A whole-latent residual (1 or ``place.rows`` rows, C, h, w) at one of the U-Net's
    resolutions (``h = ceil(H / 2^k)``) cut to the place's tiles at that resolution."""
    height, width = place.latent_hw
    scale = residual.shape[-2] / height
    if abs(residual.shape[-1] / width - scale) > 1.0 / min(height, width) + 1e-9:
        raise ValueError(f"a residual of {tuple(residual.shape[-2:])} is not at one scale of the "
                         f"latent {place.latent_hw}")
    return _cut(residual, place, scale, keep_broadcast)


def fit_pixels(image: torch.Tensor, height: int, width: int, mode: str = "nearest-exact") -> torch.Tensor:
    """``image`` (N, C, h, w) brought to (N, C, height, width) as "crop and resize" does:
    scaled to cover the target, then cut to it around the centre. Unchanged when it has
    the size already."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    factor = max(height / h, width / w)
    sh, sw = max(height, round(h * factor)), max(width, round(w * factor))
    kwargs = {} if mode.startswith("nearest") else {"align_corners": False}
    scaled = F.interpolate(image.float(), size=(sh, sw), mode=mode, **kwargs).to(image.dtype)
    top, left = (sh - height) // 2, (sw - width) // 2
    return scaled[..., top:top + height, left:left + width]


# ------------------------------------------------------------------ SDXL size conditioning
def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(k,) numbers -> (k, dim): ``[cos(v f_0) .. cos(v f_{d/2-1}), sin(v f_0) .. ]`` with
    ``f_i = max_period^(-i / (d/2))`` (Vaswani et al. 2017), the embedding SDXL gives each
    size and crop number."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = values.float().reshape(-1, 1) * freqs.reshape(1, -1)
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        out = torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1)
    return out


@dataclass(frozen=True)
class SizeCondLayout:
    """Where the crop and target numbers sit at the end of an SDXL ``vector``: each number
    is ``width`` wide; ``after_crop`` numbers follow the crop pair (the base model: the
    target height and width; the refiner: the aesthetic score, and it has no target)."""

    width: int = 256
    after_crop: int = 2
    target: bool = True

    def crop_slice(self, dim: int) -> slice:
        end = dim - self.after_crop * self.width
        return slice(end - 2 * self.width, end)

    def target_slice(self, dim: int) -> Optional[slice]:
        return slice(dim - 2 * self.width, dim) if self.target else None


SDXL_BASE = SizeCondLayout(256, 2, True)
SDXL_REFINER = SizeCondLayout(256, 1, False)
Embed = Callable[[torch.Tensor, int], torch.Tensor]


def _embed_pairs(pairs: Sequence[Sequence[float]], layout: SizeCondLayout, embed: Embed,
                 like: torch.Tensor) -> torch.Tensor:
    values = torch.tensor([v for pair in pairs for v in pair], dtype=torch.float32)
    return embed(values, layout.width).reshape(len(pairs), 2 * layout.width).to(like)


def holds_crop(vector: torch.Tensor, layout: SizeCondLayout, crop_top_left: Sequence[float],
               embed: Embed = sinusoidal_embedding, atol: float = 2e-2) -> bool:
    """True when every row of ``vector`` holds ``crop_top_left`` in the crop slot of
    ``layout``: the check that the vector is laid out as the layout says."""
    dim = vector.shape[-1]
    if vector.dim() != 2 or dim < (layout.after_crop + 2) * layout.width:
        return False
    want = _embed_pairs([crop_top_left], layout, embed, vector)
    got = vector[:, layout.crop_slice(dim)].float()
    return bool(torch.allclose(got, want.float().expand_as(got), atol=atol))


def size_vector_for_tiles(vector: torch.Tensor, place: TilePlace, layout: SizeCondLayout,
                          crop_top_left: Sequence[float] = (0, 0), scale: int = LATENT_SCALE,
                          embed: Embed = sinusoidal_embedding) -> torch.Tensor:
    """The ``vector`` rows of a tile call (``n * rows``, tile-major) with each tile's crop
    corner (``crop_top_left`` + the tile's place in pixels) and, when the layout has one,
    its size as the target. The original size and the text part are kept."""
    n = len(place.tiles)
    if vector.shape[0] != n * place.rows:
        raise ValueError(f"a vector of {vector.shape[0]} rows is not {n} tiles x {place.rows} rows")
    height, width = place.latent_hw
    oy, ox = place.offset
    corners = [(crop_top_left[0] + ((t.y + oy) % height) * scale,
                crop_top_left[1] + ((t.x + ox) % width) * scale) for t in place.tiles]
    out = vector.clone()
    dim = vector.shape[-1]
    crops = _embed_pairs(corners, layout, embed, vector)
    out[:, layout.crop_slice(dim)] = crops.repeat_interleave(place.rows, dim=0)
    target = layout.target_slice(dim)
    if target is not None:
        sizes = _embed_pairs([(t.h * scale, t.w * scale) for t in place.tiles], layout, embed, vector)
        out[:, target] = sizes.repeat_interleave(place.rows, dim=0)
    return out
