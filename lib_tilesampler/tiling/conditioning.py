"""Conditioning and latents for a batch of tiles.

A denoiser call carries ``rows`` latent rows (cond and uncond rows, one per AND prompt and
per image of the batch) and a nested conditioning structure. To run ``n`` tiles in one
call, every row is repeated per tile, **tile-major**: all rows of tile 0, then all rows of
tile 1, ... (einops ``"(n b)"``); ``stack_tiles`` does it for the latent, ``crop_cond``
for the conditioning, ``repeat_rows`` for the per-row ``t``.

Rules of ``crop_cond`` for each tensor in the structure (dicts, lists and tuples are
walked and rebuilt with the same types where something in them changed; other values,
and containers without a changed tensor, pass unchanged as the same object):

1. **Spatial** — at least 3 dims and the last two equal the latent's ``(H, W)``
   (inpainting ``c_concat`` / image conditioning, masks): cropped per tile. A leading dim
   of ``rows`` gives ``n * rows`` rows, tile-major; a leading dim of 1 (broadcast over the
   rows) is expanded to ``rows`` per tile first. Any other leading dim is an error, as
   no single tensor could then hold the tiles of every row.
2. **Per row** — a leading dim equal to ``rows`` (text embeddings ``c_crossattn``, SDXL's
   pooled ``vector``, Forge's per-row ``sigmas``): repeated per tile, tile-major.
3. **Anything else** (0-d tensors, a leading dim of 1 or of another size, such as the
   ``(B, 5, 1, 1)`` zeros A1111 passes as ``c_concat`` to non-inpainting models when
   ``B != rows``): unchanged. A (rows, 5, 1, 1) dummy is per-row and repeated (rule 2).

Per-call lists of plain values (Forge's ``transformer_options["cond_or_uncond"]``) are not
tensors and pass unchanged; a host that relies on them must adapt them itself.

A ``TilePlace`` in the structure (put there by the host with ``with_place``) is turned into
the place of the tile batch: the host's own denoiser, called with the cropped conditioning,
then knows which tiles of the whole latent its rows are (to crop ControlNet hints, give
SDXL the tile's crop coordinates, ...). ``roll_cond`` rolls it with the latent.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from einops import rearrange, repeat

from .plan import Tile


PLACE_KEY = "tilesampler_place"


@dataclass(frozen=True)
class TilePlace:
    """Where the rows of a denoiser call lie in the whole latent: ``len(tiles)`` blocks of
    ``rows`` rows, tile-major, block ``i`` being the cells ``tiles[i]`` of a ``latent_hw``
    latent. A call over the whole latent is one block whose tile is the whole latent.

    ``offset`` is set by a wrap-around roll (``roll_cond``): a tile at ``(y, x)`` of the
    rolled latent holds the cells ``((y + oy) mod H, (x + ox) mod W)`` of the latent."""

    latent_hw: tuple[int, int]
    tiles: tuple[Tile, ...]
    rows: int
    offset: tuple[int, int] = (0, 0)

    @classmethod
    def whole(cls, latent_hw: Sequence[int], rows: int) -> "TilePlace":
        height, width = int(latent_hw[-2]), int(latent_hw[-1])
        return cls((height, width), (Tile(0, 0, height, width),), int(rows))

    @property
    def is_whole(self) -> bool:
        return self.tiles == (Tile(0, 0, *self.latent_hw),) and self.offset == (0, 0)

    def for_tiles(self, tiles: Sequence[Tile], rows: int) -> "TilePlace":
        """The place of a call over ``tiles`` of this call's latent (``rows`` rows each)."""
        if len(self.tiles) != 1:
            raise ValueError("only a call over one tile can be split into tiles")
        base = self.tiles[0]
        return replace(self, tiles=tuple(Tile(base.y + t.y, base.x + t.x, t.h, t.w) for t in tiles),
                       rows=int(rows))

    def within(self, tile: Tile, latent_hw: Sequence[int]) -> "TilePlace":
        """This place, for a call whose latent is ``tile`` of a ``latent_hw`` latent
        (the independent mode samples tiles as whole latents)."""
        return replace(self, latent_hw=(int(latent_hw[-2]), int(latent_hw[-1])),
                       tiles=tuple(Tile(tile.y + t.y, tile.x + t.x, t.h, t.w) for t in self.tiles))

    def rolled(self, shifts: Sequence[int]) -> "TilePlace":
        """The place after ``torch.roll(x, shifts, dims=(-2, -1))`` of the call's latent."""
        return replace(self, offset=(self.offset[0] - int(shifts[0]), self.offset[1] - int(shifts[1])))


def with_place(cond: Any, place: TilePlace) -> Any:
    """``cond`` (a dict) with ``place`` added; other structures cannot carry one."""
    if not isinstance(cond, dict):
        raise TypeError(f"a tile place needs a dict conditioning, not {type(cond).__name__}")
    out = copy.copy(cond)
    out[PLACE_KEY] = place
    return out


def pop_place(cond: Any) -> tuple[Any, Optional[TilePlace]]:
    """``(cond without its place, the place)``, or ``(cond, None)`` when it has none."""
    if not isinstance(cond, dict) or PLACE_KEY not in cond:
        return cond, None
    out = copy.copy(cond)
    place = out.pop(PLACE_KEY)
    return out, place


def walk(obj: Any, fn: Callable[[torch.Tensor], Any],
         other: Optional[Callable[[Any], Any]] = None) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (and ``other``, when given, to
    every value that is neither a tensor nor a container). Dicts, lists, tuples and named
    tuples holding a changed value are rebuilt with their own types; containers in which
    nothing changed, and every other value, are returned as the same object."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        values = {key: walk(value, fn, other) for key, value in obj.items()}
        if all(values[key] is value for key, value in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(values)
        return out
    if isinstance(obj, (list, tuple)):
        values = [walk(value, fn, other) for value in obj]
        if all(new is old for new, old in zip(values, obj)):
            return obj
        return type(obj)(*values) if hasattr(obj, "_fields") else type(obj)(values)
    return other(obj) if other is not None else obj


def is_spatial(x: torch.Tensor, latent_hw: Sequence[int]) -> bool:
    """True for a tensor laid out over the latent's cells (rule 1 of the module doc)."""
    return x.dim() >= 3 and tuple(x.shape[-2:]) == tuple(latent_hw)


def _same_size(tiles: Sequence[Tile]) -> tuple[int, int]:
    sizes = {t.size for t in tiles}
    if len(sizes) != 1:
        raise ValueError(f"tiles batched together must have one size, got {sorted(sizes)}")
    return sizes.pop()


def repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """(rows, ...) -> (n * rows, ...), tile-major."""
    return repeat(x, "b ... -> (n b) ...", n=n)


def stack_tiles(x: torch.Tensor, tiles: Sequence[Tile]) -> torch.Tensor:
    """(rows, C, H, W) -> (n * rows, C, h, w): the tiles of every row, tile-major.
    The tiles must all have the same size."""
    _same_size(tiles)
    return rearrange(torch.stack([t.crop(x) for t in tiles]), "n b ... -> (n b) ...")


def unstack_tiles(x: torch.Tensor, n: int) -> torch.Tensor:
    """(n * rows, ...) -> (n, rows, ...): inverse of the tile-major stacking."""
    return rearrange(x, "(n b) ... -> n b ...", n=n)


def crop_cond(cond: Any, tiles: Sequence[Tile], latent_hw: Sequence[int], rows: int) -> Any:
    """The conditioning of ``rows`` latent rows turned into that of ``n * rows`` tile rows
    (tile-major), by the rules in the module docstring. The tiles must have one size."""
    _same_size(tiles)
    n = len(tiles)

    def per_tensor(x: torch.Tensor) -> torch.Tensor:
        if is_spatial(x, latent_hw):
            if x.shape[0] not in (rows, 1):
                raise ValueError(f"cannot crop a conditioning tensor of shape {tuple(x.shape)} "
                                 f"to tiles: its leading dim is neither the {rows} rows nor 1")
            return stack_tiles(x.expand(rows, *x.shape[1:]), tiles)
        if x.dim() >= 1 and x.shape[0] == rows:
            return repeat_rows(x, n)
        return x

    def per_place(value: Any) -> Any:
        return value.for_tiles(tiles, rows) if isinstance(value, TilePlace) else value

    return walk(cond, per_tensor, per_place)


def tile_blocks(x: torch.Tensor, t: Any, cond: Any, place: TilePlace
                ) -> Iterator[tuple[torch.Tensor, Any, Any, TilePlace]]:
    """A call over the tiles of ``place`` split into one call per tile: ``(x, t, cond,
    place)`` of each block of ``place.rows`` rows (tensors with a row per row of the call
    are cut, everything else is passed as it is)."""
    n, rows = len(place.tiles), place.rows
    total = n * rows
    for i, tile in enumerate(place.tiles):
        block = slice(i * rows, (i + 1) * rows)

        def per_tensor(v: torch.Tensor) -> torch.Tensor:
            return v[block] if v.dim() >= 1 and v.shape[0] == total else v
        t_block = t[block] if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == total else t
        yield x[block], t_block, walk(cond, per_tensor), replace(place, tiles=(tile,))


def roll_cond(cond: Any, shifts: tuple[int, int], latent_hw: Sequence[int]) -> Any:
    """``cond`` with every spatial tensor rolled by ``shifts`` over its last two dims, as
    ``torch.roll`` does to the latent (wrap-around tiling)."""
    return walk(cond, lambda x: torch.roll(x, shifts, dims=(-2, -1)) if is_spatial(x, latent_hw) else x,
                lambda v: v.rolled(shifts) if isinstance(v, TilePlace) else v)
