"""AUTOMATIC1111 WebUI 1.10 adapter.

HyperTile: every ``attn1`` module (ldm or sgm ``CrossAttention``) of the loaded U-Net gets
an instance ``forward`` wrapper (see ``module_patch``); the class forward, which A1111
swaps when the cross-attention optimisation changes, is looked up at call time. A model
switched to in the middle of a job (a refiner, newly loaded or already in memory) is
patched at its first denoiser call, once per job and model object. A1111's built-in
HyperTile (Settings) is switched off for the job's models while ours runs.

Tiled denoising: the CFG denoiser's inner model (k-diffusion ``CompVisDenoiser`` or the
timestep denoiser, called as ``inner_model(x, sigma, cond=...)``) gets an instance
``forward`` wrapper; a refiner switch builds a new inner model, which is wrapped again at
its first call (``follow_model``). A call that needs the tiles' place (sd-webui-controlnet
units, SDXL's size conditioning) carries a ``TilePlace`` through the tiler, and each tile
call runs with the tiles' hints and sizes (``a1111_control``).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

from ..hypertile.geometry import HyperTileConfig, HyperTilePlanner
from ..hypertile.install import install_on_modules
from ..job import Job
from ..module_patch import PatchSet
from ..tiling.conditioning import TilePlace, pop_place, with_place
from ..tiling.passes import Wrap
from .a1111_control import A1111TileInputs, controlnet_params, units_not_tiled
from .webui_common import JobHostState, WebUIFamilyHost

BUILTIN_HYPERTILE_PARAMS = "__webui_hypertile_params"   # set by A1111's built-in HyperTile


def _is_ours(module: Any) -> bool:
    return bool(getattr(module.__dict__.get("forward"), "__tilesampler_patch__", False))


class A1111JobState(JobHostState):
    def __init__(self) -> None:
        super().__init__()
        self.planner: Optional[HyperTilePlanner] = None
        self.vae = False
        self.hypertile: "weakref.WeakKeyDictionary[Any, PatchSet]" = weakref.WeakKeyDictionary()
        self.wrapped: "weakref.WeakKeyDictionary[Any, Callable[[Any], None]]" = weakref.WeakKeyDictionary()
        self.inputs: Optional[A1111TileInputs] = None


class A1111Host(WebUIFamilyHost):
    name = "a1111"
    state_class = A1111JobState

    # ------------------------------------------------------------------ HyperTile
    def install_hypertile(self, p: Any, job: Job, config: HyperTileConfig, salt: int,
                          vae: bool) -> HyperTilePlanner:
        state = self.state(job)
        for patches in list(state.hypertile.values()):
            patches.restore()
        state.hypertile.clear()
        state.planner = HyperTilePlanner(config, salt)
        state.vae = vae
        self._patch_model(job, p.sd_model)
        return state.planner

    def _patch_model(self, job: Job, sd_model: Any) -> None:
        """Tile ``sd_model``'s U-Net for ``job`` unless it is already (once per object)."""
        state = self.state(job)
        unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
        if state.planner is None or unet is None or unet in state.hypertile:
            return
        vae = sd_model.first_stage_model if state.vae else None
        patches = install_on_modules(unet, state.planner, vae)
        self._mute_builtin_hypertile(job, [unet] + ([vae] if vae is not None else []), patches)
        state.hypertile[unet] = job.track(patches)

    @staticmethod
    def _mute_builtin_hypertile(job: Job, models: list, patches: PatchSet) -> None:
        """A1111's built-in HyperTile keeps a per-module ``enabled`` flag: off while ours runs."""
        muted = 0
        for model in models:
            for module in model.modules():
                params = module.__dict__.get(BUILTIN_HYPERTILE_PARAMS)
                if params is not None and getattr(params, "enabled", False):
                    params.enabled = False
                    patches.add_undo(lambda params=params: setattr(params, "enabled", True))
                    muted += 1
        if muted:
            job.say("A1111's built-in HyperTile (Settings) is on too: Tile Sampler's HyperTile "
                    "runs instead of it in this job")

    def model_loaded(self, job: Job, sd_model: Any) -> None:
        self._patch_model(job, sd_model)

    def follow_model(self, job: Job, params: Any) -> None:
        from modules import shared
        self._patch_model(job, shared.sd_model)   # a refiner reused from memory loads nothing
        state = self.state(job)
        wrap_inner = state.wrapped.get(params.denoiser)
        if wrap_inner is not None:
            inner_model = params.denoiser.inner_model    # rebuilt after a refiner switch
            if not _is_ours(inner_model):
                wrap_inner(inner_model)

    # ------------------------------------------------------- ControlNet, SDXL sizes
    def tile_inputs(self, p: Any, job: Job) -> A1111TileInputs:
        """The job's per-tile ControlNet and SDXL size inputs."""
        state = self.state(job)
        if state.inputs is None:
            from modules import shared
            opts = shared.opts
            state.inputs = A1111TileInputs(
                lambda: controlnet_params(p),
                per_tile_size=job.values.get("resample_size_cond", "tile") == "tile",
                crop_top_left=(getattr(opts, "sdxl_crop_top", 0) or 0, getattr(opts, "sdxl_crop_left", 0) or 0),
                say=job.say)
        return state.inputs

    def needs_place(self, p: Any, job: Job) -> bool:
        from modules import shared
        if controlnet_params(p):
            return True
        return bool(getattr(shared.sd_model, "is_sdxl", False)) and \
            job.values.get("resample_size_cond", "tile") == "tile"

    def units_not_tiled(self, p: Any) -> list[tuple[str, bool]]:
        return units_not_tiled(controlnet_params(p))

    # ------------------------------------------------------------ denoiser wrapping
    def wrap_sampling(self, p: Any, job: Job, sampler: Any,
                      wrap: Callable[[], Optional[Wrap]]) -> PatchSet:
        cfg_denoiser = sampler.model_wrap_cfg
        state = self.state(job)
        host_wrap = self.host_denoiser
        inputs = self.tile_inputs(p, job)

        patches = job.track(PatchSet())

        def wrap_inner(inner_model: Any) -> None:

            def call(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
                current = wrap()
                if current is None:
                    return inner(*args, **kwargs)
                x, t = args[0], args[1]
                kwargs = dict(kwargs)
                cond = kwargs.pop("cond") if "cond" in kwargs else (args[2] if len(args) > 2 else None)
                if inputs.wanted(cond):
                    cond = with_place(cond, TilePlace.whole(x.shape[-2:], x.shape[0]))

                def run(x_: Any, t_: Any, cond_: Any) -> Any:
                    return inner(x_, t_, cond=cond_, **kwargs)

                def denoiser(x_: Any, t_: Any, cond_: Any) -> Any:
                    cond_, place = pop_place(cond_)
                    if place is None or place.is_whole:
                        return run(x_, t_, cond_)
                    return inputs.call(run, x_, t_, cond_, place)
                return host_wrap(current)(denoiser)(x, t, cond)
            patches.wrap_forward(inner_model, call)

        if cfg_denoiser in state.wrapped:
            return patches               # the same sampler again (img2img batches)
        state.wrapped[cfg_denoiser] = wrap_inner
        wrap_inner(cfg_denoiser.inner_model)
        return patches

    # ------------------------------------------------------------ checkpoints (Script tools)
    def saved_checkpoint(self) -> Any:
        return None                      # A1111 reloads the checkpoint of its settings

    def restore_checkpoint(self, saved: Any) -> None:
        """Load the checkpoint of the settings (the user's), as ``process_images`` does at
        the start of every job; nothing when it is loaded already."""
        from modules import sd_models
        sd_models.reload_model_weights()

    def switch_checkpoint(self, p: Any, info: Any) -> None:
        """As A1111's refiner switch (``sd_samplers_common.apply_refiner``)."""
        from modules import devices, sd_models
        with sd_models.SkipWritingToConfig():
            sd_models.reload_model_weights(info=info)
        devices.torch_gc()
