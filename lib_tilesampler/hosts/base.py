"""The one interface the scripts call. Each host adapter (one file per host) implements it;
all imports of a host's own modules live inside those adapter files (and in
``webui_common.py`` for what A1111 and its fork Forge share).

Every method that changes the host takes the ``Job`` it does it for: the job keeps the
patches and undoes them when it closes, so nothing is kept on the adapter between jobs.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch

from ..hypertile.geometry import HyperTileConfig, HyperTilePlanner
from ..job import Job, JobStack
from ..module_patch import PatchSet
from ..tiling.passes import TilePlan, Wrap
from .api_routes import RequestChecks

After = Callable[[torch.Tensor, Any], torch.Tensor]
"""``after(samples, sampler) -> samples``: what to do with the latent a pass returns."""


class Host(Protocol):
    name: str

    # ------------------------------------------------------------------------ jobs
    def job_key(self) -> Any:
        """What tells top-level generations apart (a job of another one is stale)."""

    def watch_jobs(self, jobs: JobStack) -> None:
        """Follow the open jobs with the host's callbacks (a model switch in the middle of
        a job, every denoiser call, the end of a generation). Called at every load of the
        script file, so a Reload UI, which clears the host's callbacks, registers anew."""

    def end_with_generation(self, job: Job) -> None:
        """Close ``job`` at the end of its top-level generation, however it ends."""

    # ------------------------------------------------------------------- HyperTile
    def install_hypertile(self, p: Any, job: Job, config: HyperTileConfig, salt: int,
                          vae: bool) -> HyperTilePlanner:
        """Tile the self-attention of the U-Net that samples ``p`` next (and the VAE mid
        attention when ``vae``), and of a model switched to in the middle of the job.
        Idempotent: a second call for the same model replaces the first one."""

    # -------------------------------------------------------------------- resample
    def wrap_sampling(self, p: Any, job: Job, sampler: Any,
                      wrap: Callable[[], Optional[Wrap]]) -> PatchSet:
        """Make every denoiser call of ``sampler`` go through ``wrap()`` (looked up at
        call time; None = untiled); the job undoes it when it closes, the returned
        patches undo it earlier."""

    def watch_sampler(self, p: Any, job: Job, sampler: Any,
                      after: Callable[[], Optional[After]]) -> None:
        """Close ``job`` when ``sampler`` raises, and hand each latent it returns to
        ``after()`` (looked up at call time; None = as it is)."""

    def resample_after(self, p: Any, job: Job, samples: torch.Tensor, sampler: Any,
                       plan: TilePlan, values: Mapping[str, Any],
                       seeds: Sequence[int]) -> torch.Tensor:
        """The latent-tile resample pass over ``samples`` with the host's samplers."""

    def sampler_runs(self, plan: TilePlan, latent_hw: Sequence[int]) -> int:
        """How many sampler runs the resample pass makes over a latent of that size."""

    def add_progress_jobs(self, n: int) -> None:
        """Grow the host's progress total by ``n`` sampler runs."""

    # -------------------------------------------------------------- names, checks
    def sampler_names(self) -> list[str]: ...

    def scheduler_names(self) -> list[str]: ...

    def resolve_names(self, values: Mapping[str, Any]) -> dict:
        """``values`` with the resample sampler and schedule type in the host's own
        spelling (aliases, any case, ``"DPM++ 2M Karras"``); ``ParamError`` when unknown."""

    def settings_error(self, values: Mapping[str, Any], main_steps: Optional[int],
                       main_sampler: Optional[str] = None) -> Optional[str]:
        """Why the host cannot run the resample with these settings (UniPC with fewer
        steps than its order, an adaptive sampler in moving mode), or None."""

    def other_tilers(self, p: Any, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Tilings of other extensions or settings active in the job, as
        ``(what, group of ours it clashes with)``."""

    def units_not_tiled(self, p: Any) -> list[tuple[str, bool]]:
        """``(why, needs the whole image)`` for each ControlNet unit of the job that cannot
        be given its tile's hint; a unit that needs the whole image turns the resample off
        for the job (the others run on the whole image and each tile gets its part)."""

    def needs_place(self, p: Any, job: Job) -> bool:
        """True when the job's tile calls need to know their tiles (ControlNet units,
        SDXL's per-tile size conditioning)."""

    def parse_infotext(self, text: str) -> dict:
        """Infotext parsed by the host's own parser (``{key: text}``)."""

    def api_request_checks(self, app: Any) -> RequestChecks:
        """The checks of the app's txt2img/img2img API requests (``api_routes``)."""

    def add_api_route(self, app: Any, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        """Add a route of ours to the host's API, behind its ``--api-auth``."""

    def sampler_takes_sigmas(self, sampler_name: str) -> bool:
        """Whether the host's sampler of that name can run a given sigma schedule."""

    # ---------------------------------------------------------------- Script tools
    def run_refine_upscale(self, p: Any, values: Mapping[str, Any]) -> Any:
        """The refine & upscale tool for the job ``p``; returns the host's ``Processed``."""

    def run_mask_grid(self, p: Any, values: Mapping[str, Any]) -> Any:
        """The mask-grid tool for the job ``p``; returns the host's ``Processed``."""

    def should_stop(self) -> bool: ...

    def model_key(self) -> Optional[str]:
        """The loaded model, as the speed measurements are kept (its short hash)."""

    def show_tiles(self, done: int, total: int, label: Optional[str] = None) -> None: ...

    def show_progress(self, job: Job) -> None:
        """Refresh the progress text of ``job``'s tiled stage (cleared outside one)."""
