"""WebUI Forge 2: what a tile call of the U-Net needs from the whole image.

Forge computes the ControlNet residuals before the ``model_function_wrapper`` runs: in
``calc_cond_uncond_batch`` each call's conditioning gets ``control`` (the residuals of the
whole latent) and ``control_model`` (the head of the patcher's ``controlnet_linked_list``,
each node a ``ControlBase`` holding its hint in ``cond_hint_original``). Residuals of the
whole latent do not fit a tile. So in a tile call:

* each ControlNet / Control-LoRA / T2I-Adapter node gets the pixels under the tiles as its
  ``cond_hint`` (the hint brought to the latent's pixel size as Forge does for the whole
  latent, then ``hints.crop_pixels``), its mask (``advanced_mask_weighting``) cut the same
  way, and the head's ``get_control`` runs on the tile batch; the nodes are put back after;
* a node of another kind (a control type another extension registers) runs on the whole
  latent: its residuals, computed by Forge, are cut to the tiles (``hints.crop_level``);
* ``transformer_options`` describe the tile batch: ``cond_or_uncond`` repeated per tile,
  ``cond_mark`` with it, ``cond_indices`` / ``uncond_indices`` recomputed (what
  reference-only and style-align index rows with), ``sigmas`` kept per image;
* SDXL's ``y`` gets each tile's crop corner and size (``hints.size_vector_for_tiles``)
  unless the job keeps the whole image's values.

As the tile calls compute their own residuals, the whole latent's are not needed when every
node can be given a tile's hint: ``skipping_controlnet_wrapper`` (Forge's
``controlnet_model_function_wrapper`` slot) returns no residuals for a ControlNet called on a
call that is about to be tiled, which saves one ControlNet evaluation of the whole latent per
step (the memory a tiled pass is for). Calls of ours are marked in their options.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..tiling.conditioning import TilePlace
from ..tiling.hints import (LATENT_SCALE, SDXL_BASE, SDXL_REFINER, SizeCondLayout, crop_level,
                            crop_pixels, holds_crop, size_vector_for_tiles)
from .job_scripts import script_titled

HINTED_NODES = ("ControlNet", "ControlLora", "T2IAdapter")   # get a tile's hint
SKIPPABLE_NODES = ("ControlNet", "ControlLora")                # whole-latent run can be skipped
TILE_CALL = "tilesampler_tile_call"                           # in the options of our calls
SIZE_LAYOUTS = (SDXL_BASE, SDXL_REFINER)


def chain(head: Any) -> list:
    """The nodes of a ControlNet linked list, head first."""
    nodes, node = [], head
    while node is not None and len(nodes) < 64:
        nodes.append(node)
        node = getattr(node, "previous_controlnet", None)
    return nodes


def takes_tile_hint(node: Any) -> bool:
    """A node whose residuals come from its hint and the latent alone, so a tile's hint
    gives the tile's residuals: Forge's ControlNet, Control-LoRA and T2I-Adapter."""
    return (type(node).__name__ in HINTED_NODES
            and isinstance(getattr(node, "cond_hint_original", None), torch.Tensor)
            and getattr(node, "cond_hint_original").dim() == 4)


def _forge_functions() -> tuple[Callable, Callable, Callable]:
    from backend.misc.image_resize import adaptive_resize
    from backend.patcher.controlnet import broadcast_image_to
    from backend.sampling.sampling_function import compute_cond_indices
    return adaptive_resize, broadcast_image_to, compute_cond_indices


def _default_cond_indices(cond_or_uncond: Sequence[int], sigmas: torch.Tensor) -> tuple[list, list]:
    per = int(sigmas.shape[0])
    cond, uncond = [], []
    for i, kind in enumerate(cond_or_uncond):
        (cond if kind == 0 else uncond).extend(range(i * per, (i + 1) * per))
    return cond, uncond


class ForgeTileInputs:
    """Per-tile ControlNet and SDXL size inputs of one job on Forge (see the module doc).

    ``say(message)`` tells the user once; ``crop_top_left`` are the WebUI's SDXL crop
    settings; ``per_tile_size`` is the job's "SDXL size conditioning: tile". The Forge
    functions used (``adaptive_resize``, ``broadcast_image_to``, ``compute_cond_indices``)
    are looked up on first use unless given."""

    def __init__(self, per_tile_size: bool, crop_top_left: Sequence[float],
                 say: Callable[[str], None], functions: Optional[tuple] = None) -> None:
        self.per_tile_size = per_tile_size
        self.crop_top_left = (float(crop_top_left[0]), float(crop_top_left[1]))
        self.say = say
        self._functions = functions
        self._hints: dict = {}
        self._layouts: dict = {}

    @property
    def functions(self) -> tuple:
        if self._functions is None:
            self._functions = _forge_functions()
        return self._functions

    # ------------------------------------------------------------------ what is needed
    def wanted(self, c: dict) -> bool:
        """True when a tile call of this conditioning needs its place."""
        return c.get("control_model") is not None or (self.per_tile_size and isinstance(c.get("y"), torch.Tensor))

    def for_tiles(self, whole_c: dict, x: torch.Tensor, t: torch.Tensor, c: dict,
                  place: TilePlace, whole_control: Any, whole_hw: Sequence[int]) -> dict:
        """The conditioning of a tile call: ``c`` (cropped by the tiler from ``whole_c``)
        with ``transformer_options``, ``control`` and ``y`` made for the tiles. ``whole_control``
        is what Forge computed for the call over a ``whole_hw`` latent."""
        c = dict(c)
        options = tile_options(whole_c.get("transformer_options"), len(place.tiles),
                               self.functions[2])
        if options is not None:
            c["transformer_options"] = options
        head = whole_c.get("control_model")
        if head is not None:
            c["control"] = self._control(head, x, t, c, place, whole_control, whole_hw)
        y = c.get("y")
        if self.per_tile_size and isinstance(y, torch.Tensor) and not place.is_whole:
            layout = self._layout(whole_c.get("y"))
            if layout is not None:
                c["y"] = size_vector_for_tiles(y, place, layout, self.crop_top_left)
        return c

    # ------------------------------------------------------------------------ control
    def _control(self, head: Any, x: torch.Tensor, t: torch.Tensor, c: dict, place: TilePlace,
                 whole_control: Any, whole_hw: Sequence[int]) -> Any:
        nodes = chain(head)
        untiled = [type(n).__name__ for n in nodes if not takes_tile_hint(n)]
        if untiled:
            self.say(f"ControlNet: {', '.join(sorted(set(untiled)))} cannot be given a tile's hint: "
                     "the ControlNet units run on the whole image and each tile gets its part of "
                     "their output")
            return cut_residuals(whole_control, place, whole_hw)
        options = c.get("transformer_options") or {}
        chunks = len(options.get("cond_or_uncond") or [0]) // max(1, len(place.tiles))
        saved = [(n, n.cond_hint, getattr(n, "control_input", None), n.transformer_options,
                  getattr(n, "advanced_mask_weighting", None)) for n in nodes]
        try:
            for node in nodes:
                node.cond_hint = crop_pixels(self._whole_hint(node, place, chunks, x), place)
                if hasattr(node, "control_input"):
                    node.control_input = None            # a T2I-Adapter's cached features
                node.transformer_options = options
                mask = getattr(node, "advanced_mask_weighting", None)
                if isinstance(mask, torch.Tensor):
                    node.advanced_mask_weighting = crop_pixels(
                        self._whole_mask(mask, place, chunks), place)
            control_c = {k: v for k, v in c.items() if k not in ("control", "control_model")}
            return head.get_control(x, t, control_c, len(options.get("cond_or_uncond") or [0]))
        finally:
            for node, hint, control_input, node_options, mask in saved:
                node.cond_hint = hint
                if hasattr(node, "control_input"):
                    node.control_input = control_input
                node.transformer_options = node_options
                if mask is not None or hasattr(node, "advanced_mask_weighting"):
                    node.advanced_mask_weighting = mask

    def _whole_hint(self, node: Any, place: TilePlace, chunks: int, x: torch.Tensor) -> torch.Tensor:
        """The node's hint over the whole latent, one row per row of the whole call (or one
        row for all), in the dtype Forge gives it."""
        height, width = place.latent_hw
        original = node.cond_hint_original
        key = (id(node), id(original), height, width, place.rows, chunks)
        hint = self._hints.get(key)
        if hint is None:
            adaptive_resize, broadcast_image_to, _ = self.functions
            if type(node).__name__ == "T2IAdapter":
                dtype = torch.float32
            else:
                dtype = getattr(node, "manual_cast_dtype", None) or \
                    getattr(getattr(node, "control_model", None), "dtype", None) or x.dtype
            hint = adaptive_resize(original, width * LATENT_SCALE, height * LATENT_SCALE,
                                   "nearest-exact", "center").to(dtype)
            if type(node).__name__ == "T2IAdapter" and getattr(node, "channels_in", 3) == 1 and hint.shape[1] > 1:
                hint = torch.mean(hint, 1, keepdim=True)
            if hint.shape[0] not in (1, place.rows):
                hint = broadcast_image_to(hint, place.rows, max(1, chunks))
            self._hints = {k: v for k, v in self._hints.items() if k[0] != id(node)}
            self._hints[key] = hint
        return hint

    @staticmethod
    def _whole_mask(mask: torch.Tensor, place: TilePlace, chunks: int) -> torch.Tensor:
        """A control mask (1 or B rows, 1, any size) over the whole latent's pixels, per
        row of the whole call as Forge repeats it (chunk after chunk)."""
        height, width = place.latent_hw
        full = F.interpolate(mask.float(), size=(height * LATENT_SCALE, width * LATENT_SCALE),
                             mode="bilinear").to(mask.dtype)
        if full.shape[0] not in (1, place.rows) and place.rows % full.shape[0] == 0:
            full = full.repeat(place.rows // full.shape[0], 1, 1, 1)
        return full

    # ------------------------------------------------------------------------- SDXL y
    def _layout(self, y: Any) -> Optional[SizeCondLayout]:
        """The layout whose crop slot holds the WebUI's crop setting in every row of the
        whole call's ``y`` (checked once per width), or None with a note."""
        if not isinstance(y, torch.Tensor) or y.dim() != 2:
            return None
        width = int(y.shape[-1])
        if width not in self._layouts:
            found = next((layout for layout in SIZE_LAYOUTS
                          if holds_crop(y, layout, self.crop_top_left)), None)
            self._layouts[width] = found
            if found is None:
                self.say("SDXL size conditioning: the model's vector does not hold the crop "
                         "numbers where SDXL keeps them; every tile gets the whole image's values")
        return self._layouts[width]


def tile_options(options: Any, tiles: int, cond_indices: Callable = _default_cond_indices) -> Any:
    """Forge's ``transformer_options`` of a call over ``tiles`` stacked tiles (tile-major):
    the per-chunk lists repeated, ``cond_mark`` with them, the row indices recomputed,
    ``sigmas`` (one per image) as they were."""
    if not isinstance(options, dict) or not isinstance(options.get("cond_or_uncond"), list):
        return options
    out = dict(options)
    out[TILE_CALL] = True
    out["cond_or_uncond"] = list(options["cond_or_uncond"]) * tiles
    mark = options.get("cond_mark")
    if isinstance(mark, torch.Tensor):
        out["cond_mark"] = torch.cat([mark] * tiles)
    sigmas = options.get("sigmas")
    if isinstance(sigmas, torch.Tensor) and "cond_indices" in options:
        out["cond_indices"], out["uncond_indices"] = cond_indices(out["cond_or_uncond"], sigmas)
    return out


def skipping_controlnet_wrapper(previous: Optional[Callable[..., Any]], tiling: Callable[[], Optional[Any]]
                                ) -> Callable[..., Any]:
    """A ``controlnet_model_function_wrapper`` that gives no residuals when a ControlNet runs
    on a call ``tiling()`` (the chain's head, or None) says is about to be tiled and every
    node of the chain can be given a tile's hint; otherwise it runs the control model (through
    ``previous``, another extension's wrapper, when there is one)."""
    while getattr(previous, "__tilesampler_patch__", False):
        previous = getattr(previous, "__tilesampler_previous__", None)

    def wrapper(**kwargs: Any) -> Any:
        node = kwargs.get("model")
        options = getattr(node, "transformer_options", None) or {}
        if not options.get(TILE_CALL) and type(node).__name__ in SKIPPABLE_NODES:
            head = tiling()
            if head is not None and all(takes_tile_hint(n) for n in chain(head)):
                return []
        if previous is not None:
            return previous(**kwargs)
        inner = kwargs["inner_model"]       # what Forge calls without a wrapper:
        if "x" not in kwargs:               # a T2I-Adapter, on its hint alone
            return inner(kwargs["hint"].to(next(inner.parameters()).device))
        return inner(x=kwargs["x"], hint=kwargs["hint"].to(getattr(node, "device", kwargs["hint"].device)),
                     timesteps=kwargs["timesteps"], context=kwargs["context"], y=kwargs.get("y"))

    wrapper.__tilesampler_patch__ = True  # type: ignore[attr-defined]
    wrapper.__tilesampler_previous__ = previous  # type: ignore[attr-defined]
    return wrapper


def cut_residuals(control: Any, place: TilePlace, whole_hw: Sequence[int]) -> Any:
    """Forge's residuals (``{"input": [...], "middle": [...], "output": [...]}``) of the
    call over the whole latent cut to the tiles; residuals of a call that was not over the
    whole latent (a tile sampled as a whole) are the tile's already."""
    if not isinstance(control, dict):
        return control
    if tuple(whole_hw) != tuple(place.latent_hw):
        return {k: list(v) if isinstance(v, list) else v for k, v in control.items()}
    out = {}
    for key, values in control.items():
        if not isinstance(values, list):
            out[key] = values
            continue
        out[key] = [crop_level(v, place) if isinstance(v, torch.Tensor) and v.dim() == 4 else v
                    for v in values]
    return out



def _controlnet_units(p: Any) -> list:
    """``(index, cached parameters)`` of the units Forge's ControlNet set up for the job."""
    params = getattr(script_titled(p, "controlnet"), "current_params", None) or {}
    return sorted(params.items(), key=lambda item: item[0])


def units_not_tiled(p: Any) -> list[tuple[str, bool]]:
    """``(why, runs on the whole image)`` for each unit that cannot follow the tiles: a
    unit whose control type has no hint to cut still follows them with its whole-image
    residuals cut per tile (False); a unit that works inside the U-Net on the whole
    latent (ControlLLLite, the tile colour fix) needs the whole image (True)."""
    out = []
    for index, cached in _controlnet_units(p):
        model = getattr(cached, "model", None)
        kind = type(model).__name__
        preprocessor = getattr(getattr(cached, "preprocessor", None), "name", "?")
        label = f"ControlNet unit {index} ({preprocessor})"
        if "colorfix" in str(preprocessor):
            out.append((f"{label}: the tile colour fix blends with the whole image's latent "
                        "inside the U-Net", True))
        elif "LLLite" in kind:
            out.append((f"{label}: ControlLLLite keeps its hint inside the U-Net's attention "
                        "layers at the whole image's size", True))
        elif kind == "ControlNetPatcher":
            node = getattr(model, "model_patcher", None)
            if type(node).__name__ not in HINTED_NODES:
                out.append((f"{label}: {type(node).__name__} cannot be given a tile's hint: it runs "
                            "on the whole image and each tile gets its part of the output", False))
    return out
