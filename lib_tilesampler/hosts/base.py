"""The one interface the scripts call. Each host adapter (one file per host) implements it;
all imports of a host's own modules live inside those adapter files."""
from __future__ import annotations

from typing import Any, Optional, Protocol

from ..hypertile import HyperTileConfig, HyperTilePlanner


class Host(Protocol):
    name: str

    def install_hypertile(self, p: Any, config: HyperTileConfig, seed: int,
                          vae: bool) -> HyperTilePlanner:
        """Tile the self-attention of the U-Net that will sample ``p`` next (and the VAE
        mid attention when ``vae``). Called before every sampling pass; idempotent: a
        second call replaces what the first installed."""

    def restore(self) -> None:
        """Remove everything this extension installed in the host. Safe to call often."""

    def last_planner(self) -> Optional[HyperTilePlanner]:
        """The planner of the latest install, for its statistics."""
