"""WebUI Forge 2 adapter.

HyperTile: clone ``p.sd_model.forge_objects.unet`` (a ``UnetPatcher``), register an
``attn1_patch`` / ``attn1_output_patch`` pair and assign the clone back. Forge resets
``forge_objects`` from a shallow copy before each pass, so the U-Net patches never
outlive the pass; the installer still drops patches of ours that are already there,
because Forge calls ``process_before_every_sampling`` twice around a hires pass. A
refiner switch loads other ``forge_objects``: the patches are applied to them at their
first denoiser call (``follow_model``). The VAE has no patcher hook, so its mid attention
gets instance wrappers, restored when the job closes.

Tiled denoising: the same clone-and-assign with ``set_model_unet_function_wrapper``,
chaining to a wrapper another extension (or Forge's MultiDiffusion) already set. A call
that needs the tiles' place (ControlNet units, SDXL's size conditioning) carries a
``TilePlace`` through the tiler, and each tile call gets its ControlNet residuals and
``transformer_options`` from ``forge_control``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..hypertile.geometry import HyperTileConfig, HyperTilePlanner
from ..hypertile.install import install_on_modules, make_attn1_patches
from ..job import Job
from ..module_patch import PatchSet
from ..tiling.conditioning import TilePlace, pop_place, with_place
from ..tiling.passes import Wrap
from .forge_control import ForgeTileInputs, skipping_controlnet_wrapper, tile_options, units_not_tiled
from .webui_common import JobHostState, WebUIFamilyHost

_PATCH_KEYS = ("attn1_patch", "attn1_output_patch")


def _ours(fn: Any) -> bool:
    return bool(getattr(fn, "__tilesampler_patch__", False))


def drop_our_patches(model_options: dict) -> None:
    """Remove this extension's attn1 patches from a patcher's ``model_options``."""
    patches = model_options.get("transformer_options", {}).get("patches", {})
    for key in _PATCH_KEYS:
        if key in patches:
            patches[key] = [fn for fn in patches[key] if not _ours(fn)]


def has_our_patches(model_options: dict) -> bool:
    patches = model_options.get("transformer_options", {}).get("patches", {})
    return any(_ours(fn) for key in _PATCH_KEYS for fn in patches.get(key, []))


def chained_function_wrapper(previous: Optional[Callable[..., Any]], wrap: Callable[[], Optional[Wrap]],
                             inputs: Optional[Callable[[], Optional[ForgeTileInputs]]] = None
                             ) -> Callable[..., Any]:
    """A ``model_function_wrapper(apply_model, args)`` that tiles through ``wrap()`` (looked
    up at call time; None = untiled) and runs each tile through ``previous`` (another
    extension's wrapper) when there is one. A previous wrapper of ours is replaced, not
    stacked. ``inputs()`` (the job's ``ForgeTileInputs``, or None) makes each tile call's
    ControlNet residuals, ``transformer_options`` and SDXL ``y``."""
    while _ours(previous):
        previous = getattr(previous, "__tilesampler_previous__", None)

    def call(apply_model: Callable[..., Any], args: dict, x: Any, t: Any, c: Any,
             tile_inputs: Optional[ForgeTileInputs], whole_control: Any) -> Any:
        c, place = pop_place(c)
        rows = args["input"].shape[0]
        tiles = x.shape[0] // rows
        if place is not None and tile_inputs is not None:
            # the whole latent too (a tile as large as it): its residuals may have been skipped
            c = tile_inputs.for_tiles(args["c"], x, t, c, place, whole_control,
                                      tuple(args["input"].shape[-2:]))
        else:
            if tiles > 1:  # k tiles stacked tile-major: each chunk list repeats k times
                c = dict(c, transformer_options=tile_options(args["c"].get("transformer_options"), tiles))
        if previous is None:
            return apply_model(x, t, **c)
        extra = {k: v for k, v in args.items() if k not in ("input", "timestep", "c")}
        more = {k: (v * tiles if k == "cond_or_uncond" and isinstance(v, list) else v)
                for k, v in extra.items()}
        return previous(apply_model, dict(more, input=x, timestep=t, c=c))

    def wrapper(apply_model: Callable[..., Any], args: dict) -> Any:
        current = wrap()
        c, whole_control = args["c"], None
        tile_inputs = inputs() if inputs is not None and current is not None else None
        if tile_inputs is not None and isinstance(c, dict) and tile_inputs.wanted(c):
            whole_control = c.get("control")
            c = with_place({k: v for k, v in c.items() if k != "control"},
                           TilePlace.whole(args["input"].shape[-2:], args["input"].shape[0]))

        def denoiser(x: Any, t: Any, c_: Any) -> Any:
            return call(apply_model, args, x, t, c_, tile_inputs, whole_control)
        if current is None:
            return denoiser(args["input"], args["timestep"], c)
        return current(denoiser)(args["input"], args["timestep"], c)

    wrapper.__tilesampler_patch__ = True  # type: ignore[attr-defined]
    wrapper.__tilesampler_previous__ = previous  # type: ignore[attr-defined]
    return wrapper


class ForgeJobState(JobHostState):
    def __init__(self) -> None:
        super().__init__()
        self.planner: Optional[HyperTilePlanner] = None
        self.vae_patches: Optional[PatchSet] = None
        self.wrap: Optional[Callable[[], Optional[Wrap]]] = None   # the pass's tiling
        self.inputs: Optional[ForgeTileInputs] = None             # per-tile ControlNet, SDXL size


class ForgeHost(WebUIFamilyHost):
    name = "forge"
    state_class = ForgeJobState

    def install_hypertile(self, p: Any, job: Job, config: HyperTileConfig, salt: int,
                          vae: bool) -> HyperTilePlanner:
        state = self.state(job)
        state.planner = HyperTilePlanner(config, salt)
        objects = p.sd_model.forge_objects
        objects.unet = self._with_hypertile(objects.unet, state.planner)
        if state.vae_patches is not None:
            state.vae_patches.restore()
            state.vae_patches = None
        if vae:
            first_stage = objects.vae.first_stage_model
            state.vae_patches = job.track(install_on_modules(None, state.planner, first_stage))
        return state.planner

    @staticmethod
    def _with_hypertile(unet: Any, planner: HyperTilePlanner) -> Any:
        unet = unet.clone()
        drop_our_patches(unet.model_options)
        attn1_patch, attn1_output_patch = make_attn1_patches(planner)
        unet.set_model_attn1_patch(attn1_patch)
        unet.set_model_attn1_output_patch(attn1_output_patch)
        return unet

    @staticmethod
    def _with_wrapper(unet: Any, wrap: Callable[[], Optional[Wrap]], state: "ForgeJobState",
                      head: Callable[[], Any] = lambda: None) -> Any:
        """``unet`` cloned with the tiling wrapper, and the ControlNet wrapper that skips the
        whole latent's residuals of a call about to be tiled (``head()``: the ControlNet
        chain the U-Net samples with now)."""
        unet = unet.clone()
        unet.set_model_unet_function_wrapper(
            chained_function_wrapper(unet.model_options.get("model_function_wrapper"), wrap,
                                     lambda: state.inputs))
        previous = unet.model_options.get("transformer_options", {}).get("controlnet_model_function_wrapper")
        unet.set_controlnet_model_function_wrapper(
            skipping_controlnet_wrapper(previous, lambda: head() if wrap() is not None else None))
        return unet

    def tile_inputs(self, p: Any, job: Job) -> ForgeTileInputs:
        """The job's per-tile ControlNet and SDXL size inputs (one per job: it caches the
        hints brought to the latent's size)."""
        state = self.state(job)
        if state.inputs is None:
            from modules import shared
            opts = shared.opts
            state.inputs = ForgeTileInputs(
                per_tile_size=job.values.get("resample_size_cond", "tile") == "tile",
                crop_top_left=(getattr(opts, "sdxl_crop_top", 0) or 0, getattr(opts, "sdxl_crop_left", 0) or 0),
                say=job.say)
        return state.inputs

    def needs_place(self, p: Any, job: Job) -> bool:
        """True when tile calls need to know their tiles: a ControlNet unit is on the
        U-Net, or the model is SDXL with per-tile size conditioning."""
        unet = p.sd_model.forge_objects.unet
        if getattr(unet, "controlnet_linked_list", None) is not None:
            return True
        return bool(getattr(p.sd_model, "is_sdxl", False)) and \
            job.values.get("resample_size_cond", "tile") == "tile"

    def units_not_tiled(self, p: Any) -> list[tuple[str, bool]]:
        return units_not_tiled(p)

    def follow_model(self, job: Job, params: Any) -> None:
        """After a refiner switch the denoiser samples with the refiner's fresh
        ``forge_objects``: give them the job's HyperTile patches and tiling wrapper."""
        state = self.state(job)
        objects = getattr(getattr(params.denoiser.inner_model, "inner_model", None), "forge_objects", None)
        if objects is None:
            return
        unet = objects.unet
        options = unet.model_options
        changed = unet
        if state.planner is not None and not has_our_patches(options):
            changed = self._with_hypertile(changed, state.planner)
        if state.wrap is not None and not _ours(options.get("model_function_wrapper")):
            changed = self._with_wrapper(changed, state.wrap, state,
                                         lambda: getattr(objects.unet, "controlnet_linked_list", None))
        if changed is not unet:
            objects.unet = changed

            def undo() -> None:
                if objects.unet is changed:
                    objects.unet = unet
            patches = PatchSet()
            patches.add_undo(undo)
            job.track(patches)

    def wrap_sampling(self, p: Any, job: Job, sampler: Any,
                      wrap: Callable[[], Optional[Wrap]]) -> PatchSet:
        objects = p.sd_model.forge_objects
        original = objects.unet
        host_wrap = self.host_denoiser
        state = self.state(job)

        def current() -> Optional[Wrap]:
            w = wrap()
            return None if w is None else host_wrap(w)
        state.wrap = current
        self.tile_inputs(p, job)
        unet = self._with_wrapper(original, current, state,
                                  lambda: getattr(p.sd_model.forge_objects.unet, "controlnet_linked_list", None))
        objects.unet = unet

        def undo() -> None:
            if objects.unet is unet:
                objects.unet = original
            if state.wrap is current:
                state.wrap = None
        patches = PatchSet()
        patches.add_undo(undo)
        return job.track(patches)

    # ------------------------------------------------------------ checkpoints (Script tools)
    def saved_checkpoint(self) -> Any:
        from modules import shared
        return shared.opts.data.get("sd_model_checkpoint")

    def restore_checkpoint(self, saved: Any) -> None:
        """Select the user's checkpoint again and load it if another one is loaded (as
        Forge's hires pass puts its first-pass checkpoint back: change, refresh, reload)."""
        from modules import sd_models
        from modules_forge import main_entry
        if saved:
            main_entry.checkpoint_change(saved, save=False, refresh=False)
        main_entry.refresh_model_loading_parameters()
        sd_models.forge_model_reload()

    def switch_checkpoint(self, p: Any, info: Any) -> None:
        """As Forge's refiner switch (``sd_samplers_common.apply_refiner``): change the
        selected checkpoint, load it, select the previous one again (it is loaded at the
        next job or batch), and reapply the job's extra networks to the new model."""
        from modules import extra_networks, sd_models, shared
        from modules_forge import main_entry
        previous = shared.opts.data.get("sd_model_checkpoint")
        if main_entry.checkpoint_change(info.title, save=False, refresh=False):
            try:
                main_entry.refresh_model_loading_parameters()
                sd_models.forge_model_reload()
            finally:
                main_entry.checkpoint_change(previous, save=False, refresh=True)
        if not getattr(p, "disable_extra_networks", False) and getattr(p, "extra_network_data", None):
            extra_networks.activate(p, p.extra_network_data)

    def prepare_sampling(self, p: Any) -> None:
        """Forge's ``sample()``: fresh patchers (with the job's LoRAs) and token merging."""
        from modules.sd_models import apply_token_merging
        model = p.sd_model
        model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
        apply_token_merging(model, p.get_token_merging_ratio())

    def take_noise(self, p: Any, noise: Any) -> Any:
        modified = getattr(p, "modified_noise", None)
        if modified is None:
            return noise
        p.modified_noise = None
        return modified
