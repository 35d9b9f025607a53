"""Host detection, in one place: Forge (2.x, and the Forge family) or A1111."""
from __future__ import annotations

import importlib.util
from functools import lru_cache

from .base import Host


def detect_host_name() -> str:
    """``"forge"`` when the WebUI is Forge (it ships ``modules_forge``), else ``"a1111"``."""
    return "forge" if importlib.util.find_spec("modules_forge") is not None else "a1111"


@lru_cache(maxsize=None)
def get_host() -> Host:
    """The adapter of the running WebUI (created once)."""
    if detect_host_name() == "forge":
        from .forge import ForgeHost
        return ForgeHost()
    from .a1111 import A1111Host
    return A1111Host()
