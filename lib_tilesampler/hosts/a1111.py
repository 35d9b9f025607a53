"""AUTOMATIC1111 WebUI 1.10 adapter.

HyperTile: every ``attn1`` module (ldm or sgm ``CrossAttention``) of the loaded U-Net gets
an instance ``forward`` wrapper (see ``module_patch``); the class forward, which A1111
swaps when the cross-attention optimisation changes, is looked up at call time. A model
loaded in the middle of a job (refiner switch) is patched too while a job is active.

Tiled denoising: the CFG denoiser's inner model (k-diffusion ``CompVisDenoiser`` or the
timestep denoiser, called as ``inner_model(x, sigma, cond=...)``) gets an instance
``forward`` wrapper; a refiner switch builds a new inner model, which is wrapped again at
the next step (``on_cfg_denoiser``).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

from ..hypertile.geometry import HyperTileConfig, HyperTilePlanner
from ..hypertile.install import install_on_modules
from ..module_patch import PatchSet
from ..tiling.passes import Wrap
from .webui_common import WebUIFamilyHost


def _is_ours(module: Any) -> bool:
    return bool(getattr(module.__dict__.get("forward"), "__tilesampler_patch__", False))


class A1111Host(WebUIFamilyHost):
    name = "a1111"

    def __init__(self) -> None:
        super().__init__()
        self._hypertile: list[PatchSet] = []
        self._planner: Optional[HyperTilePlanner] = None
        self._vae = False
        self._seed = 0
        self._wrapped_cfg: "weakref.WeakKeyDictionary[Any, tuple[Callable[[Any], None], PatchSet]]" = \
            weakref.WeakKeyDictionary()
        self._callbacks_registered = False

    # ------------------------------------------------------------------ HyperTile
    def install_hypertile(self, p: Any, config: HyperTileConfig, seed: int,
                          vae: bool) -> HyperTilePlanner:
        self._restore_hypertile()
        self._planner = HyperTilePlanner(config, seed)
        self._vae, self._seed = vae, seed
        self._patch_model(p.sd_model)
        self._register_callbacks()
        return self._planner

    def _patch_model(self, sd_model: Any) -> None:
        unet = sd_model.model.diffusion_model
        vae = sd_model.first_stage_model if self._vae else None
        self._hypertile.append(install_on_modules(unet, self._planner, vae, self._seed))

    def _restore_hypertile(self) -> None:
        for patches in reversed(self._hypertile):
            patches.restore()
        self._hypertile.clear()

    def last_planner(self) -> Optional[HyperTilePlanner]:
        return self._planner

    # ------------------------------------------------------------ denoiser wrapping
    def _wrap_denoiser(self, p: Any, sampler: Any, wrap: Wrap, patches: PatchSet) -> None:
        cfg_denoiser = sampler.model_wrap_cfg

        def wrap_inner(inner_model: Any) -> None:
            def call(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
                x, t = args[0], args[1]
                kwargs = dict(kwargs)
                cond = kwargs.pop("cond") if "cond" in kwargs else (args[2] if len(args) > 2 else None)

                def denoiser(x_: Any, t_: Any, cond_: Any) -> Any:
                    return inner(x_, t_, cond=cond_, **kwargs)
                return wrap(denoiser)(x, t, cond)
            patches.wrap_forward(inner_model, call)

        if _is_ours(cfg_denoiser.inner_model):
            return  # already tiled for this sampler
        wrap_inner(cfg_denoiser.inner_model)
        self._wrapped_cfg[cfg_denoiser] = (wrap_inner, patches)
        self._register_callbacks()

    # ------------------------------------------------------------------- callbacks
    def _register_callbacks(self) -> None:
        if self._callbacks_registered:
            return
        from modules import script_callbacks

        def on_model_loaded(sd_model: Any) -> None:
            # a refiner switch loads another model mid-job: tile it as well
            if self._planner is not None and self._hypertile:
                self._patch_model(sd_model)

        def on_cfg_denoiser(params: Any) -> None:
            entry = self._wrapped_cfg.get(params.denoiser)
            if entry is None or len(entry[1]) == 0:
                return
            inner_model = params.denoiser.inner_model     # rebuilt after a refiner switch
            if not _is_ours(inner_model):
                entry[0](inner_model)

        script_callbacks.on_model_loaded(on_model_loaded, name="tilesampler_hypertile")
        script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="tilesampler_rewrap")
        self._callbacks_registered = True

    def restore(self) -> None:
        super().restore()
        self._restore_hypertile()
        self._wrapped_cfg.clear()
