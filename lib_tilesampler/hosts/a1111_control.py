"""A1111 1.10 with sd-webui-controlnet: what a tile call of the U-Net needs from the whole
image.

sd-webui-controlnet replaces the U-Net's ``forward`` (``scripts/hook.py UnetHook``) and
keeps each unit's hint in its ``ControlParams``: ``hint_cond`` (the first pass) and
``hr_hint_cond`` (the hires pass), images of the pass's size, chosen at every call by
which one's height is nearer the latent's. In a tile call that would pick by the tile's
height and hand the ControlNet a whole-image hint for a tile latent. So around each tile
call (``A1111TileInputs.call``), for every unit:

* a unit with a spatial hint (ControlNet, Control-LoRA, ControlNet-Union, InstantID's
  ControlNet, T2I-Adapter) gets the pixels under the tiles as its hint
  (``hints.crop_pixels`` of the hint the whole latent would use), its region mask cut the
  same way; the setter clears the hook's per-hint caches (the VAE latent of the hint that
  the inpaint and colour-fix preprocessors use), and a T2I-Adapter's features, which its
  wrapper computes once and keeps (``PlugableAdapter.control``), are cleared too, so they
  are made for the tile;
* a unit without one (reference-only, Revision, IP-Adapter, the T2I style adapter) keeps
  its input; the hint the hook chooses stays the one of the whole latent, and a
  reference latent made for another number of rows is made again;
* the first-pass / hires choice stays the whole latent's (the hook's ``is_in_high_res_fix``
  drives its hires-only options);

and the params are put back exactly after the call. SDXL's ``vector`` gets each tile's
crop corner and size. Units that cannot be tiled are listed by ``units_not_tiled``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..tiling.conditioning import TilePlace, tile_blocks
from ..tiling.hints import (LATENT_SCALE, SDXL_BASE, SDXL_REFINER, SizeCondLayout, crop_pixels,
                            fit_pixels, holds_crop, size_vector_for_tiles)
from .job_scripts import script_titled

SPATIAL_TYPES = ("ControlNet", "ControlLoRA", "ControlNetUnion", "InstantID", "T2I_Adapter")
FREE_TYPES = ("AttentionInjection", "ReVision", "T2I_StyleAdapter", "IPAdapter")
PARAM_STATE = ("_hint_cond", "hr_hint_cond", "used_hint_cond", "used_hint_cond_latent",
               "used_hint_inpaint_hijack", "effective_region_mask")
SIZE_LAYOUTS = (SDXL_BASE, SDXL_REFINER)


def controlnet_params(p: Any) -> list:
    """The ``ControlParams`` sd-webui-controlnet hooked into the U-Net for this job."""
    script = script_titled(p, "controlnet")
    network = getattr(script, "latest_network", None)
    return list(getattr(network, "control_params", None) or [])


def type_name(param: Any) -> str:
    kind = getattr(param, "control_model_type", None)
    return str(getattr(kind, "name", kind))


def _hint(param: Any) -> Any:
    return getattr(param, "_hint_cond", getattr(param, "hint_cond", None))


def has_spatial_hint(param: Any) -> bool:
    hint = _hint(param)
    return type_name(param) in SPATIAL_TYPES and isinstance(hint, torch.Tensor) and hint.dim() == 4


def unit_label(index: int, param: Any) -> str:
    preprocessor = (getattr(param, "preprocessor", None) or {}).get("name", "?")
    return f"ControlNet unit {index} ({type_name(param)}, {preprocessor})"


def units_not_tiled(params: Sequence[Any]) -> list[tuple[str, bool]]:
    """``(why, needs the whole image)`` for each unit that cannot follow the tiles (empty:
    all can). None of them can run per tile here, so each needs the whole image."""
    out = []
    for i, param in enumerate(params):
        kind = type_name(param)
        if kind in SPATIAL_TYPES:
            if not has_spatial_hint(param):
                out.append(f"{unit_label(i, param)}: its hint is not one image")
        elif kind == "IPAdapter":
            if getattr(param, "effective_region_mask", None) is not None:
                out.append(f"{unit_label(i, param)}: IP-Adapter applies its region mask at the "
                           "whole image's size inside the attention layers")
        elif kind == "Controlllite":
            out.append(f"{unit_label(i, param)}: ControlLLLite keeps its hint inside the U-Net's "
                       "attention layers at the whole image's size")
        elif kind not in FREE_TYPES:
            out.append(f"{unit_label(i, param)}: {kind} is not known to Tile Sampler")
    return [(why, True) for why in out]


def uses_hires_hint(param: Any, height_px: int) -> bool:
    """The hook's choice for a latent ``height_px`` pixels high: the hires hint when its
    height is not farther than the first pass's."""
    hint, hires = _hint(param), getattr(param, "hr_hint_cond", None)
    if not (isinstance(hint, torch.Tensor) and isinstance(hires, torch.Tensor)
            and hint.dim() == 4 and hires.dim() == 4):
        return False
    return not abs(height_px - hint.shape[2]) < abs(height_px - hires.shape[2])


def sdxl_layout(vector: Any, crop_top_left: Sequence[float]) -> Optional[SizeCondLayout]:
    """The SDXL layout (base or refiner) whose crop slot holds the WebUI's crop setting."""
    if not isinstance(vector, torch.Tensor) or vector.dim() != 2:
        return None
    return next((layout for layout in SIZE_LAYOUTS if holds_crop(vector, layout, crop_top_left)), None)


class A1111TileInputs:
    """Per-tile ControlNet and SDXL size inputs of one job on A1111 (see the module doc).
    ``params()`` gives the units hooked now (looked up at each call: a hires pass or a
    refiner switch hooks anew); ``hints`` is the job's cache of whole-latent hints."""

    def __init__(self, params: Callable[[], list], per_tile_size: bool,
                 crop_top_left: Sequence[float], say: Callable[[str], None],
                 hints: Optional[dict] = None) -> None:
        self.params = params
        self.per_tile_size = per_tile_size
        self.crop_top_left = (float(crop_top_left[0]), float(crop_top_left[1]))
        self.say = say
        self.hints = {} if hints is None else hints
        self._layouts: dict = {}

    def wanted(self, cond: Any) -> bool:
        """True when a tile call of this conditioning needs its place."""
        if not isinstance(cond, dict):
            return False
        return bool(self.params()) or (self.per_tile_size and isinstance(cond.get("vector"), torch.Tensor))

    def call(self, inner: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
             x: torch.Tensor, t: torch.Tensor, cond: Any, place: TilePlace) -> torch.Tensor:
        """``inner(x, t, cond)`` on the tiles of ``place`` with the tiles' hints and sizes."""
        params = self.params()
        if len(place.tiles) > 1 and any(self._one_tile_only(p) for p in params):
            outs = [self.call(inner, *block) for block in tile_blocks(x, t, cond, place)]
            return torch.cat(outs)
        cond = self._vector(cond, place)
        with self._swapped(params, place, x):
            return inner(x, t, cond)

    @staticmethod
    def _one_tile_only(param: Any) -> bool:
        """A T2I-Adapter with CFG injection repeats its features per row of the call, so
        its hint must be one image: one tile per call."""
        return type_name(param) == "T2I_Adapter" and bool(getattr(param, "cfg_injection", False))

    # --------------------------------------------------------------------- hints
    @contextlib.contextmanager
    def _swapped(self, params: Sequence[Any], place: TilePlace, x: torch.Tensor) -> Iterator[None]:
        saved = [(param, {a: getattr(param, a) for a in PARAM_STATE if hasattr(param, a)})
                 for param in params]
        models = [(m, m.control) for m in {id(getattr(p, "control_model", None)): getattr(p, "control_model", None)
                                          for p in params if has_spatial_hint(p)}.values()
                  if hasattr(m, "control")]                # T2I-Adapter features kept by the wrapper
        height_px = place.latent_hw[0] * LATENT_SCALE
        try:
            for param in params:
                hires = uses_hires_hint(param, height_px)
                if has_spatial_hint(param):
                    whole = self._whole_hint(param, hires, place)
                    if whole.shape[0] not in (1, place.rows):
                        continue
                    crop = crop_pixels(whole, place)
                    param.hint_cond = crop                     # the setter clears the hook's caches
                    if hasattr(param.control_model, "control"):
                        param.control_model.control = None     # the adapter runs on the tile's hint
                    param.hr_hint_cond = crop if hires else None
                    mask = getattr(param, "effective_region_mask", None)
                    if isinstance(mask, torch.Tensor):
                        param.effective_region_mask = crop_pixels(self._whole_mask(mask, place), place)
                    continue
                if hires:
                    param.hint_cond = param.hr_hint_cond        # keeps the hook's hires choice
                else:
                    param.hr_hint_cond = None
                latent = getattr(param, "used_hint_cond_latent", None)
                if isinstance(latent, torch.Tensor) and latent.shape[0] != x.shape[0]:
                    param.used_hint_cond_latent = None         # made again for these rows
            yield
        finally:
            for param, state in saved:
                for name, value in state.items():
                    setattr(param, name, value)
            for model, control in models:
                model.control = control

    def _whole_hint(self, param: Any, hires: bool, place: TilePlace) -> torch.Tensor:
        """The hint the whole latent uses, at the latent's pixel size."""
        source = param.hr_hint_cond if hires else _hint(param)
        height, width = place.latent_hw
        key = (id(param), hires, height, width)
        cached = self.hints.get(key)
        if cached is None or cached[0] is not source:
            cached = (source, fit_pixels(source, height * LATENT_SCALE, width * LATENT_SCALE))
            self.hints[key] = cached
        return cached[1]

    @staticmethod
    def _whole_mask(mask: torch.Tensor, place: TilePlace) -> torch.Tensor:
        height, width = place.latent_hw
        return F.interpolate(mask.float(), size=(height * LATENT_SCALE, width * LATENT_SCALE),
                             mode="bilinear").to(mask.dtype)

    # ---------------------------------------------------------------- SDXL vector
    def _vector(self, cond: Any, place: TilePlace) -> Any:
        vector = cond.get("vector") if isinstance(cond, dict) else None
        if not self.per_tile_size or not isinstance(vector, torch.Tensor) or vector.dim() != 2:
            return cond
        width = int(vector.shape[-1])
        if width not in self._layouts:
            self._layouts[width] = sdxl_layout(vector, self.crop_top_left)
            if self._layouts[width] is None:
                self.say("SDXL size conditioning: the model's vector does not hold the crop "
                         "numbers where SDXL keeps them; every tile gets the whole image's values")
        layout = self._layouts[width]
        if layout is None:
            return cond
        return dict(cond, vector=size_vector_for_tiles(vector, place, layout, self.crop_top_left))
