"""WebUI Forge 2 adapter.

HyperTile: clone ``p.sd_model.forge_objects.unet`` (a ``UnetPatcher``), register an
``attn1_patch`` / ``attn1_output_patch`` pair and assign the clone back. Forge resets
``forge_objects`` from a shallow copy before each pass, so the U-Net patches never
outlive the pass; the installer still drops patches of ours that are already there,
because Forge calls ``process_before_every_sampling`` twice around a hires pass.
The VAE has no patcher hook, so its mid attention gets instance wrappers, restored
after the job like in A1111.

Tiled denoising: the same clone-and-assign with ``set_model_unet_function_wrapper``,
chaining to a wrapper another extension (or Forge's MultiDiffusion) already set.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..hypertile.geometry import HyperTileConfig, HyperTilePlanner
from ..hypertile.install import install_on_modules, make_attn1_patches
from ..module_patch import PatchSet
from ..tiling.passes import Wrap
from .webui_common import WebUIFamilyHost

_PATCH_KEYS = ("attn1_patch", "attn1_output_patch")


def _ours(fn: Any) -> bool:
    return bool(getattr(fn, "__tilesampler_patch__", False))


def drop_our_patches(model_options: dict) -> None:
    """Remove this extension's attn1 patches from a patcher's ``model_options``."""
    patches = model_options.get("transformer_options", {}).get("patches", {})
    for key in _PATCH_KEYS:
        if key in patches:
            patches[key] = [fn for fn in patches[key] if not _ours(fn)]


def chained_function_wrapper(previous: Optional[Callable[..., Any]], wrap: Wrap) -> Callable[..., Any]:
    """A ``model_function_wrapper(apply_model, args)`` that tiles through ``wrap`` and runs
    each tile through ``previous`` (another extension's wrapper) when there is one. A
    previous wrapper of ours is replaced, not stacked."""
    while _ours(previous):
        previous = getattr(previous, "__tilesampler_previous__", None)

    def wrapper(apply_model: Callable[..., Any], args: dict) -> Any:
        extra = {k: v for k, v in args.items() if k not in ("input", "timestep", "c")}
        rows = args["input"].shape[0]

        def denoiser(x: Any, t: Any, c: Any) -> Any:
            tiles = x.shape[0] // rows
            if tiles > 1:  # k tiles stacked tile-major: each chunk list repeats k times
                c = _repeat_chunk_lists(c, tiles)
            if previous is None:
                return apply_model(x, t, **c)
            more = {k: (v * tiles if k == "cond_or_uncond" and isinstance(v, list) else v)
                    for k, v in extra.items()}
            return previous(apply_model, dict(more, input=x, timestep=t, c=c))
        return wrap(denoiser)(args["input"], args["timestep"], args["c"])

    wrapper.__tilesampler_patch__ = True  # type: ignore[attr-defined]
    wrapper.__tilesampler_previous__ = previous  # type: ignore[attr-defined]
    return wrapper


def _repeat_chunk_lists(c: dict, tiles: int) -> dict:
    """Forge describes a U-Net call's rows by chunks (``cond_or_uncond``: one entry per
    chunk of batch-size rows); ``tiles`` stacked tiles repeat that layout."""
    options = c.get("transformer_options")
    if not isinstance(options, dict) or not isinstance(options.get("cond_or_uncond"), list):
        return c
    options = dict(options, cond_or_uncond=options["cond_or_uncond"] * tiles)
    return dict(c, transformer_options=options)


class ForgeHost(WebUIFamilyHost):
    name = "forge"

    def __init__(self) -> None:
        super().__init__()
        self._planner: Optional[HyperTilePlanner] = None
        self._vae_patches: Optional[PatchSet] = None

    def install_hypertile(self, p: Any, config: HyperTileConfig, seed: int,
                          vae: bool) -> HyperTilePlanner:
        self._planner = HyperTilePlanner(config, seed)
        objects = p.sd_model.forge_objects
        unet = objects.unet.clone()
        drop_our_patches(unet.model_options)
        attn1_patch, attn1_output_patch = make_attn1_patches(self._planner)
        unet.set_model_attn1_patch(attn1_patch)
        unet.set_model_attn1_output_patch(attn1_output_patch)
        objects.unet = unet
        self._restore_vae()
        if vae:
            first_stage = objects.vae.first_stage_model
            self._vae_patches = install_on_modules(None, self._planner, first_stage, seed)
        return self._planner

    def _restore_vae(self) -> None:
        if self._vae_patches is not None:
            self._vae_patches.restore()
            self._vae_patches = None

    def restore(self) -> None:
        super().restore()
        self._restore_vae()

    def last_planner(self) -> Optional[HyperTilePlanner]:
        return self._planner

    def _wrap_denoiser(self, p: Any, sampler: Any, wrap: Wrap, patches: PatchSet) -> None:
        objects = p.sd_model.forge_objects
        original = objects.unet
        unet = original.clone()
        unet.set_model_unet_function_wrapper(
            chained_function_wrapper(unet.model_options.get("model_function_wrapper"), wrap))
        objects.unet = unet

        def undo() -> None:
            if objects.unet is unet:
                objects.unet = original
        patches.add_undo(undo)
