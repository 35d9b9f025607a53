"""The always-on scripts of a job, found by title: how the glue reaches other
extensions' scripts (ControlNet, Tiled Diffusion, ...) without importing them."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence


def scripts_titled(p: Any, titles: Sequence[str]) -> Iterator[Any]:
    """The always-on scripts of the job ``p`` whose title is one of ``titles``
    (case-insensitive), in the host's order; a script whose ``title()`` fails is skipped."""
    wanted = {t.lower() for t in titles}
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or []:
        try:
            title = script.title()
        except Exception:
            continue
        if isinstance(title, str) and title.lower() in wanted:
            yield script


def script_titled(p: Any, title: str) -> Optional[Any]:
    """The first always-on script of the job titled ``title``, or None."""
    return next(scripts_titled(p, [title]), None)
