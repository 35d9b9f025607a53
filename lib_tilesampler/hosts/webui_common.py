"""What A1111 1.10 and Forge 2 share (Forge is a fork of A1111 1.10): sampler and
scheduler lists, progress and interrupt state, and the latent-tile resample pass run with
the host's own samplers. The two adapters differ only in how a denoiser is wrapped
(``_wrap_denoiser``) and how HyperTile is installed.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from ..tiling.conditioning import crop_cond, stack_tiles
from ..module_patch import PatchSet
from ..params import SAME, group_enabled
from ..tiling.passes import TilePlan, Wrap, run_resample
from ..tiling.denoisers import Denoiser, TileInterrupted
from ..tiling.plan import Tile

STATE_TEXT = "Tile Sampler"


class TileRowsRNG:
    """Stands in for ``p.rng`` while tiles are sampled: ``next()`` gives unit noise of the
    current batch's shape, one generator per row seeded from ``seeds``."""

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.shape = tuple(shape)
        self.device, self.dtype = device, dtype
        self.generators = [torch.Generator().manual_seed(int(s) & 0xFFFF_FFFF_FFFF_FFFF) for s in seeds]

    def next(self) -> torch.Tensor:
        rows = [torch.randn(self.shape, generator=g) for g in self.generators]
        return torch.stack(rows).to(self.device, self.dtype)


@contextlib.contextmanager
def overridden(obj: Any, **values: Any) -> Iterator[None]:
    """Set attributes for the duration of the block, then put the old values back."""
    old = {k: getattr(obj, k) for k in values if hasattr(obj, k)}
    missing = [k for k in values if not hasattr(obj, k)]
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)
        for k in missing:
            with contextlib.suppress(AttributeError):
                delattr(obj, k)


def _full_mask(mask: Optional[torch.Tensor], rows: int) -> Optional[torch.Tensor]:
    if mask is None or not isinstance(mask, torch.Tensor):
        return mask
    return mask.expand(rows, *mask.shape[-3:]) if mask.dim() == 3 else mask


class WebUIFamilyHost:
    """Shared glue; subclasses implement ``_wrap_denoiser`` and ``install_hypertile``."""

    name = "webui"

    def __init__(self) -> None:
        self._job_patches: list[PatchSet] = []

    def track(self, patches: PatchSet) -> PatchSet:
        """Keep ``patches`` to undo in ``restore()`` (after the job, on error, on reload)."""
        self._job_patches.append(patches)
        return patches

    def restore(self) -> None:
        for patches in reversed(self._job_patches):
            patches.restore()
        self._job_patches.clear()

    # ------------------------------------------------------------------ lists for the UI
    def sampler_names(self) -> list[str]:
        from modules import sd_samplers
        return [s.name for s in sd_samplers.visible_samplers()]

    def scheduler_names(self) -> list[str]:
        from modules import sd_schedulers
        return [s.label for s in sd_schedulers.schedulers]

    def name_error(self, values: Mapping[str, Any]) -> Optional[str]:
        """An unknown resample sampler or schedule type, said with the names there are."""
        if not group_enabled(values, "resample"):
            return None
        for key, names in (("resample_sampler", self.sampler_names),
                           ("resample_scheduler", self.scheduler_names)):
            known = names()
            if values[key] != SAME and values[key] not in known:
                return f"{key} {values[key]!r} is not one of: {', '.join([SAME] + known)}"
        return None

    # ------------------------------------------------------------ progress and interrupt
    @staticmethod
    def should_stop() -> bool:
        from modules import shared
        return bool(shared.state.interrupted or shared.state.skipped)

    @staticmethod
    def show_tiles(done: int, total: int) -> None:
        from modules import shared
        shared.state.textinfo = f"{STATE_TEXT}: tile {done}/{total}"

    @staticmethod
    def interrupted_exception() -> type:
        from modules.sd_samplers_common import InterruptedException
        return InterruptedException

    def host_denoiser(self, wrap: Wrap) -> Wrap:
        """``wrap`` with a tile interrupt turned into the host's own interrupt, which its
        samplers catch (they return the last latent, as after any Interrupt)."""
        interrupted = self.interrupted_exception()

        def wrapped(denoiser: Denoiser) -> Denoiser:
            tiled = wrap(denoiser)

            def call(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
                try:
                    return tiled(x, t, cond)
                except TileInterrupted as e:
                    raise interrupted() from e
            return call
        return wrapped

    # ------------------------------------------------------------- denoiser wrapping
    def _wrap_denoiser(self, p: Any, sampler: Any, wrap: Wrap, patches: PatchSet) -> None:
        raise NotImplementedError

    def wrap_sampling(self, p: Any, sampler: Any, wrap: Wrap) -> PatchSet:
        """Tile every denoiser call of ``sampler`` (the 'during' setting)."""
        patches = PatchSet()
        self._wrap_denoiser(p, sampler, self.host_denoiser(wrap), patches)
        return patches

    # -------------------------------------------------------- intercept the last pass
    def after_sampling(self, sampler: Any, after: Callable[[torch.Tensor, dict], torch.Tensor]) -> PatchSet:
        """Make ``sampler.sample`` / ``sample_img2img`` hand their result to ``after``
        (with the call's conditioning) before the WebUI decodes or blends it."""
        patches = PatchSet()

        def img2img(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            samples = inner(*args, **kwargs)
            names = ("p", "x", "noise", "conditioning", "unconditional_conditioning", "steps",
                     "image_conditioning")
            call = dict(zip(names, args), **kwargs)
            return after(samples, call)

        def txt2img(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            samples = inner(*args, **kwargs)
            names = ("p", "x", "conditioning", "unconditional_conditioning", "steps",
                     "image_conditioning")
            call = dict(zip(names, args), **kwargs)
            return after(samples, call)

        patches.wrap_method(sampler, "sample_img2img", img2img)
        patches.wrap_method(sampler, "sample", txt2img)
        return patches

    # ---------------------------------------------------------------- the after pass
    def resample_after(self, p: Any, samples: torch.Tensor, call: dict, plan: TilePlan,
                       values: dict, seeds: Sequence[int]) -> torch.Tensor:
        """Run the resample pass over ``samples`` with the host's sampler. An interrupt
        between tiles leaves ``samples`` as they were."""
        from modules import sd_samplers

        sampler_name = values["resample_sampler"]
        if sampler_name == SAME:
            sampler_name = (getattr(p, "hr_sampler_name", None) if getattr(p, "is_hr_pass", False)
                            else None) or p.sampler_name
        scheduler = values["resample_scheduler"]
        if scheduler == SAME:
            scheduler = (getattr(p, "hr_scheduler", None) if getattr(p, "is_hr_pass", False)
                         else None) or getattr(p, "scheduler", None) or "Automatic"
        cfg = values["resample_cfg"] or (getattr(p, "hr_cfg", None) if getattr(p, "is_hr_pass", False)
                                         else None) or p.cfg_scale
        c, uc = call.get("conditioning"), call.get("unconditional_conditioning")
        image_cond = call.get("image_conditioning")
        rows = samples.shape[0]
        latent_hw = tuple(samples.shape[-2:])
        saved_infotext = dict(p.extra_generation_params)
        settings = dict(steps=plan.steps, cfg_scale=cfg, denoising_strength=plan.denoise,
                        sampler_name=sampler_name, scheduler=scheduler, hr_scheduler=scheduler,
                        hr_cfg=cfg)

        def sample_whole(latent: torch.Tensor, noise: torch.Tensor, wrap: Wrap) -> torch.Tensor:
            sampler = sd_samplers.create_sampler(sampler_name, p.sd_model)
            patches = self.wrap_sampling(p, sampler, wrap)
            rng = TileRowsRNG(latent.shape[1:], [s + 1 for s in seeds[:rows]] or [plan.seed],
                              latent.device)
            try:
                with overridden(p, rng=rng, **settings):
                    return sampler.sample_img2img(p, latent, noise, c, uc,
                                                  image_conditioning=image_cond)
            finally:
                patches.restore()

        def sample_tiles(latents: torch.Tensor, noises: torch.Tensor, tiles: Sequence[Tile]) -> torch.Tensor:
            sampler = sd_samplers.create_sampler(sampler_name, p.sd_model)
            k = len(tiles)
            tile_seeds = [plan.seed + 7919 * (1 + _tile_index(tile, latent_hw)) + r
                          for tile in tiles for r in range(rows)]
            rng = TileRowsRNG(latents.shape[1:], tile_seeds, latents.device)
            masks = {}
            for attr in ("mask", "nmask"):
                full = _full_mask(getattr(p, attr, None), rows)
                if isinstance(full, torch.Tensor) and tuple(full.shape[-2:]) == latent_hw:
                    masks[attr] = stack_tiles(full, tiles)
            tile_cond = crop_cond(image_cond, tiles, latent_hw, rows) if image_cond is not None else None
            with overridden(p, rng=rng, **settings, **masks):
                return sampler.sample_img2img(p, latents, noises, _repeat_conds(c, k),
                                              _repeat_conds(uc, k), image_conditioning=tile_cond)

        try:
            out = run_resample(samples, plan, seeds, sample_whole, sample_tiles,
                               on_tile=self.show_tiles, should_stop=self.should_stop)
        except TileInterrupted as e:
            print(f"[{STATE_TEXT}] resample interrupted after {e.done} of {e.total} tiles; "
                  "keeping the latent as it was before the resample")
            out = samples
        finally:
            p.extra_generation_params.clear()
            p.extra_generation_params.update(saved_infotext)
        return out


def _tile_index(tile: Tile, latent_hw: Sequence[int]) -> int:
    """A number for a tile that depends only on its place, for its noise seed."""
    return tile.y * int(latent_hw[1]) + tile.x


def _repeat_conds(cond: Any, k: int) -> Any:
    """The WebUI's prompt conditioning for ``k`` tiles stacked tile-major: the per-image
    entries repeated ``k`` times (``MulticondLearnedConditioning`` or a list of schedules)."""
    if k == 1 or cond is None:
        return cond
    if hasattr(cond, "batch") and hasattr(cond, "shape"):
        return type(cond)(shape=(len(cond.batch) * k,), batch=list(cond.batch) * k)
    if isinstance(cond, list):
        return cond * k
    return cond
