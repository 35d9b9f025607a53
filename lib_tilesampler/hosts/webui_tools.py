"""What the Script tab's tools need from A1111 1.10 and Forge 2 alike: the host's names
(samplers, schedule types, checkpoints, upscalers) and limits, its sigma schedules, its
upscalers, a nested img2img job, saving and the result object. The checkpoint switch, the
restore and the per-pass preparation differ per host: ``a1111.py`` and ``forge.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import torch

from ..tools.refine_upscale import StageSettings
from ..tools.refine_upscale_check import HostLimits, HostNames
from ..tools.sigmas import Schedule

EULER = "Euler"


def _overridden(obj: Any, **values: Any) -> Any:
    from .webui_common import overridden
    return overridden(obj, **values)


class ToolsHost:
    """Mixed into ``WebUIFamilyHost``; ``sampler_of`` and ``scheduler_of`` come from it."""

    sampler_of: Callable[[str], Optional[str]]
    scheduler_of: Callable[[str], Optional[str]]

    # ------------------------------------------------------------------ names, limits
    @staticmethod
    def checkpoint_info(name: str) -> Any:
        """The host's checkpoint for a title, file name, alias or hash (its own fuzzy
        match, as for its refiner), or None."""
        from modules import sd_models
        return sd_models.get_closet_checkpoint_match(name) if isinstance(name, str) and name else None

    def checkpoint_of(self, name: str) -> Optional[str]:
        info = self.checkpoint_info(name)
        return info.title if info is not None else None

    @staticmethod
    def upscaler_data(name: str) -> Any:
        """The host's upscaler (``UpscalerData``) of that name, in any case; None."""
        from modules import shared
        if not isinstance(name, str):
            return None
        return next((u for u in shared.sd_upscalers if u.name.lower() == name.lower()), None)

    def upscaler_of(self, name: str) -> Optional[str]:
        data = self.upscaler_data(name)
        return data.name if data is not None else None

    def tool_names(self) -> HostNames:
        return HostNames(self.sampler_of, self.scheduler_of, self.checkpoint_of, self.upscaler_of,
                         self.sampler_names(), self.scheduler_names(), self.checkpoint_names(),
                         self.upscaler_names())

    @staticmethod
    def tool_limits() -> HostLimits:
        """The host's "Maximum image size" (Settings, ``img_max_size_mp``, megapixels: its
        only limit on an image's size; the API has none, the UI's sliders stop at 2048 px
        for the sampled size) and the UniPC order."""
        from modules import shared
        try:
            mp = float(getattr(shared.opts, "img_max_size_mp", 200) or 0)
        except (TypeError, ValueError):
            mp = 0.0
        return HostLimits(max_pixels=int(mp * 1_000_000) or None,
                          unipc_order=int(getattr(shared.opts, "uni_pc_order", 3)))

    def job_checkpoint(self, p: Any) -> Any:
        """The checkpoint ``p``'s own passes load: its ``override_settings`` checkpoint when
        that is one of the host's, else the one of the settings."""
        from modules import sd_models, shared
        name = (getattr(p, "override_settings", None) or {}).get("sd_model_checkpoint")
        info = sd_models.checkpoint_aliases.get(name) if isinstance(name, str) else None
        return info or self.checkpoint_info(shared.opts.data.get("sd_model_checkpoint")) \
            or self.loaded_checkpoint()

    @staticmethod
    def loaded_checkpoint() -> Any:
        from modules import shared
        return getattr(shared.sd_model, "sd_checkpoint_info", None)

    # ------------------------------------------------------------------ schedules
    @staticmethod
    def schedule_for(p: Any) -> Callable[[str, StageSettings], Schedule]:
        """``schedule_for(model, settings)``: the host's own sigma schedule of a sampler and
        schedule type (``KDiffusionSampler.get_sigmas``, its discard-the-penultimate rule
        included) on the model loaded now; a timestep sampler (DDIM, PLMS, UniPC) gets
        Euler's with the same schedule type (it only runs whole schedules)."""
        from modules import sd_samplers

        def for_stage(_model: str, settings: StageSettings) -> Schedule:
            sampler = sd_samplers.create_sampler(settings.sampler, p.sd_model)
            if not hasattr(sampler, "get_sigmas"):
                sampler = sd_samplers.create_sampler(EULER, p.sd_model)

            def schedule(steps: int) -> torch.Tensor:
                saved = dict(p.extra_generation_params)
                try:
                    with _overridden(p, scheduler=settings.scheduler, is_hr_pass=False,
                                     sampler_noise_scheduler_override=None):
                        return sampler.get_sigmas(p, steps).detach().float().cpu()
                finally:
                    p.extra_generation_params.clear()
                    p.extra_generation_params.update(saved)
            return schedule
        return for_stage

    # ------------------------------------------------------------------ upscaling
    def upscale(self, image: Any, name: str, scale: float) -> Any:
        """``image`` enlarged by the host's upscaler ``name`` to ``int(side * scale) // 8 * 8``
        (``Upscaler.upscale``: the model runs until the image covers that size, then
        Lanczos; "None" only resizes)."""
        from modules import devices
        data = self.upscaler_data(name)
        if data is None:
            raise ValueError(f"upscaler {name!r} is not one of this WebUI's")
        out = data.scaler.upscale(image, scale, data.data_path)
        devices.torch_gc()
        return out

    @staticmethod
    def flatten(image: Any) -> Any:
        """An input image as the host flattens img2img inputs (transparency on the img2img
        background colour)."""
        from modules import images, shared
        return images.flatten(image, shared.opts.img2img_background_color)

    # ------------------------------------------------------------------ nested jobs
    @staticmethod
    def make_img2img(p: Any, **fields: Any) -> Any:
        """An img2img job for an image of ``p``'s job: ``fields`` and ``p``'s own sampler
        extras, scripts (so the always-on scripts run in it), API flag and output folders;
        the host's built-in UI scripts do not overwrite its fields."""
        from modules import processing
        cls = processing.StableDiffusionProcessingImg2Img
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        for key in ("eta", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise",
                    "disable_extra_networks", "tiling", "outpath_samples", "outpath_grids",
                    "distilled_cfg_scale", "subseed_strength"):
            if key in names and key not in fields and hasattr(p, key):
                fields[key] = getattr(p, key)
        p2 = cls(**{k: v for k, v in fields.items() if k in names})
        p2.is_api = bool(getattr(p, "is_api", False))
        p2.user = getattr(p, "user", None)
        p2.scripts_setup_complete = True
        p2.scripts = p.scripts
        p2.script_args = p.script_args
        return p2

    @staticmethod
    def process(p: Any) -> Any:
        from modules import processing
        return processing.process_images(p)

    @staticmethod
    def fix_seed(p: Any) -> None:
        from modules import processing
        processing.fix_seed(p)

    @staticmethod
    def fix_sampler(p: Any) -> None:
        """The job's sampler and schedule type in the host's spelling (as it does itself)."""
        from modules import sd_samplers
        sd_samplers.fix_p_invalid_sampler_and_scheduler(p)

    @staticmethod
    def before_sampling(p: Any, x: torch.Tensor, noise: torch.Tensor, c: Any, uc: Any) -> None:
        """The always-on scripts' ``process_before_every_sampling`` (HyperTile goes in here)."""
        if getattr(p, "scripts", None) is not None:
            p.scripts.process_before_every_sampling(p=p, x=x, noise=noise, c=c, uc=uc)

    # ------------------------------------------------------------------ outputs
    @staticmethod
    def save_output(p: Any, image: Any, seed: int, prompt: str, infotext: str, suffix: str = "") -> None:
        """Save as the host saves a job's images (when its settings and the request say so)."""
        from modules import images, shared
        if p.save_samples():
            images.save_image(image, p.outpath_samples, "", seed, prompt, shared.opts.samples_format,
                              info=infotext, p=p, suffix=suffix)

    @staticmethod
    def with_infotext(image: Any, infotext: str) -> Any:
        from modules import shared
        if shared.opts.enable_pnginfo:
            image.info["parameters"] = infotext
        return image

    @staticmethod
    def processed(p: Any, images: Sequence[Any], infotexts: Sequence[str], seeds: Sequence[int],
                  subseeds: Sequence[int], prompts: Sequence[str],
                  negative_prompts: Sequence[str]) -> Any:
        from modules import processing
        return processing.Processed(
            p, list(images), seed=seeds[0] if seeds else p.seed, info=infotexts[0] if infotexts else "",
            subseed=subseeds[0] if subseeds else p.subseed, all_prompts=list(prompts) or None,
            all_negative_prompts=list(negative_prompts) or None, all_seeds=list(seeds) or None,
            all_subseeds=list(subseeds) or None, index_of_first_image=0, infotexts=list(infotexts))

    @staticmethod
    def clear_skip() -> bool:
        """True when Skip was pressed (and clear it: it skips one image)."""
        from modules import shared
        skipped = bool(shared.state.skipped)
        shared.state.skipped = False
        return skipped

    # ------------------------------------------------------ per host (a1111.py, forge.py)
    def saved_checkpoint(self) -> Any:
        """What ``restore_checkpoint`` puts back: the user's checkpoint."""
        raise NotImplementedError

    def restore_checkpoint(self, saved: Any) -> None:
        raise NotImplementedError

    def switch_checkpoint(self, p: Any, info: Any) -> None:
        """Load checkpoint ``info`` in the middle of ``p``'s sampling, as the host's own
        refiner switch does (not saved to the settings)."""
        raise NotImplementedError

    def prepare_sampling(self, p: Any) -> None:
        """What the host does right before its scripts' ``process_before_every_sampling``."""

    def take_noise(self, p: Any, noise: torch.Tensor) -> torch.Tensor:
        """The noise a script replaced after ``process_before_every_sampling`` (Forge's
        ``p.modified_noise``), else ``noise``."""
        return noise
