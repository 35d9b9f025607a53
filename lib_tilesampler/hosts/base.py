"""The one interface the scripts call. Each host adapter (one file per host) implements it;
all imports of a host's own modules live inside those adapter files (and in
``webui_common.py`` for what A1111 and its fork Forge share)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch

from ..hypertile.geometry import HyperTileConfig, HyperTilePlanner
from ..module_patch import PatchSet
from ..tiling.passes import TilePlan, Wrap


class Host(Protocol):
    name: str

    def install_hypertile(self, p: Any, config: HyperTileConfig, seed: int,
                          vae: bool) -> HyperTilePlanner:
        """Tile the self-attention of the U-Net that will sample ``p`` next (and the VAE
        mid attention when ``vae``). Called before every sampling pass; idempotent: a
        second call replaces what the first installed."""

    def last_planner(self) -> Optional[HyperTilePlanner]:
        """The planner of the latest install, for its statistics."""

    def wrap_sampling(self, p: Any, sampler: Any, wrap: Wrap) -> PatchSet:
        """Make every denoiser call of ``sampler`` go through ``wrap``."""

    def after_sampling(self, sampler: Any,
                       after: Callable[[torch.Tensor, dict], torch.Tensor]) -> PatchSet:
        """Hand the latent ``sampler`` returns to ``after`` before the WebUI uses it."""

    def resample_after(self, p: Any, samples: torch.Tensor, call: dict, plan: TilePlan,
                       values: dict, seeds: Sequence[int]) -> torch.Tensor:
        """The latent-tile resample pass over ``samples`` with the host's samplers."""

    def track(self, patches: PatchSet) -> PatchSet:
        """Undo ``patches`` in ``restore()``."""

    def restore(self) -> None:
        """Remove everything this extension installed in the host. Safe to call often."""

    def sampler_names(self) -> list[str]: ...

    def scheduler_names(self) -> list[str]: ...

    def name_error(self, values: Mapping[str, Any]) -> Optional[str]: ...

    def should_stop(self) -> bool: ...

    def show_tiles(self, done: int, total: int) -> None: ...
