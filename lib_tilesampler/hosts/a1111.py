"""AUTOMATIC1111 WebUI 1.10 adapter.

HyperTile: every ``attn1`` module (ldm or sgm ``CrossAttention``) of the loaded U-Net gets
an instance ``forward`` wrapper (see ``module_patch``); the class forward, which A1111
swaps when the cross-attention optimisation changes, is looked up at call time. A model
loaded in the middle of a job (refiner switch) is patched too while a job is active.
"""
from __future__ import annotations

from typing import Any, Optional

from ..hypertile import HyperTileConfig, HyperTilePlanner
from ..hypertile_install import install_on_modules
from ..module_patch import PatchSet


class A1111Host:
    name = "a1111"

    def __init__(self) -> None:
        self._patches: list[PatchSet] = []
        self._planner: Optional[HyperTilePlanner] = None
        self._vae = False
        self._seed = 0
        self._callback_registered = False

    def install_hypertile(self, p: Any, config: HyperTileConfig, seed: int,
                          vae: bool) -> HyperTilePlanner:
        self.restore()
        self._planner = HyperTilePlanner(config, seed)
        self._vae, self._seed = vae, seed
        self._patch_model(p.sd_model)
        self._register_model_loaded()
        return self._planner

    def _patch_model(self, sd_model: Any) -> None:
        unet = sd_model.model.diffusion_model
        vae = sd_model.first_stage_model if self._vae else None
        self._patches.append(install_on_modules(unet, self._planner, vae, self._seed))

    def _register_model_loaded(self) -> None:
        if self._callback_registered:
            return
        from modules import script_callbacks

        def on_model_loaded(sd_model: Any) -> None:
            # a refiner switch loads another model mid-job: tile it as well
            if self._planner is not None and self._patches:
                self._patch_model(sd_model)

        script_callbacks.on_model_loaded(on_model_loaded, name="tilesampler_hypertile")
        self._callback_registered = True

    def restore(self) -> None:
        for patches in reversed(self._patches):
            patches.restore()
        self._patches.clear()

    def last_planner(self) -> Optional[HyperTilePlanner]:
        return self._planner
