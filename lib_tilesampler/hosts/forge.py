"""WebUI Forge 2 adapter.

HyperTile: clone ``p.sd_model.forge_objects.unet`` (a ``UnetPatcher``), register an
``attn1_patch`` / ``attn1_output_patch`` pair and assign the clone back. Forge resets
``forge_objects`` from a shallow copy before each pass, so the U-Net patches never
outlive the pass; the installer still drops patches of ours that are already there,
because Forge calls ``process_before_every_sampling`` twice around a hires pass.
The VAE has no patcher hook, so its mid attention gets instance wrappers, restored
after the job like in A1111.
"""
from __future__ import annotations

from typing import Any, Optional

from ..hypertile import HyperTileConfig, HyperTilePlanner
from ..hypertile_install import install_on_modules, make_attn1_patches
from ..module_patch import PatchSet

_PATCH_KEYS = ("attn1_patch", "attn1_output_patch")


def _ours(fn: Any) -> bool:
    return bool(getattr(fn, "__tilesampler_patch__", False))


def drop_our_patches(model_options: dict) -> None:
    """Remove this extension's attn1 patches from a patcher's ``model_options``."""
    patches = model_options.get("transformer_options", {}).get("patches", {})
    for key in _PATCH_KEYS:
        if key in patches:
            patches[key] = [fn for fn in patches[key] if not _ours(fn)]


class ForgeHost:
    name = "forge"

    def __init__(self) -> None:
        self._vae_patches: list[PatchSet] = []
        self._planner: Optional[HyperTilePlanner] = None

    def install_hypertile(self, p: Any, config: HyperTileConfig, seed: int,
                          vae: bool) -> HyperTilePlanner:
        self.restore()
        self._planner = HyperTilePlanner(config, seed)
        objects = p.sd_model.forge_objects
        unet = objects.unet.clone()
        drop_our_patches(unet.model_options)
        attn1_patch, attn1_output_patch = make_attn1_patches(self._planner)
        unet.set_model_attn1_patch(attn1_patch)
        unet.set_model_attn1_output_patch(attn1_output_patch)
        objects.unet = unet
        if vae:
            first_stage = objects.vae.first_stage_model
            self._vae_patches.append(install_on_modules(None, self._planner, first_stage, seed))
        return self._planner

    def restore(self) -> None:
        for patches in reversed(self._vae_patches):
            patches.restore()
        self._vae_patches.clear()

    def last_planner(self) -> Optional[HyperTilePlanner]:
        return self._planner
