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
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from einops import rearrange, repeat

from .plan import Tile


def walk(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it. Dicts, lists, tuples and named
    tuples holding a changed value are rebuilt with their own types; containers in which
    nothing changed, and every other value, are returned as the same object."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        values = {key: walk(value, fn) for key, value in obj.items()}
        if all(values[key] is value for key, value in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(values)
        return out
    if isinstance(obj, (list, tuple)):
        values = [walk(value, fn) for value in obj]
        if all(new is old for new, old in zip(values, obj)):
            return obj
        return type(obj)(*values) if hasattr(obj, "_fields") else type(obj)(values)
    return obj


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

    return walk(cond, per_tensor)


def roll_cond(cond: Any, shifts: tuple[int, int], latent_hw: Sequence[int]) -> Any:
    """``cond`` with every spatial tensor rolled by ``shifts`` over its last two dims, as
    ``torch.roll`` does to the latent (wrap-around tiling)."""
    return walk(cond, lambda x: torch.roll(x, shifts, dims=(-2, -1))
                if is_spatial(x, latent_hw) else x)
