"""X/Y/Z plot axes for the Tile Sampler options (those marked ``xyz`` in the params table).

An axis sets ``p.tilesampler_<key>``; the always-on script reads it over its own argument.
"""
from __future__ import annotations

from typing import Any, Optional

from modules import script_callbacks, scripts

from lib_tilesampler import params as P

AXIS_PREFIX = "[Tile Sampler] "


def _xyz_module() -> Optional[Any]:
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") and hasattr(data, "module"):
            return data.module
    return None


def _axis(xyz: Any, field: P.Field) -> Any:
    apply = xyz.apply_field("tilesampler_" + field.key)
    label = AXIS_PREFIX + (field.infotext if field.kind is not bool else field.infotext + " on/off")
    if field.kind is bool:
        return xyz.AxisOption(label, str, apply, choices=xyz.boolean_choice(reverse=True))
    if field.choices:
        return xyz.AxisOption(label, str, apply, choices=lambda: list(field.choices))
    kind = int if field.kind is int else float
    confirm = xyz.confirm_range(field.minimum, field.maximum, label) if hasattr(xyz, "confirm_range") else None
    return xyz.AxisOption(label, kind, apply, confirm=confirm)


def add_axes() -> None:
    xyz = _xyz_module()
    if xyz is None:
        return
    if any(getattr(a, "label", "").startswith(AXIS_PREFIX) for a in xyz.axis_options):
        return  # UI reload: already there
    xyz.axis_options.extend(_axis(xyz, f) for f in P.FIELDS if f.xyz)


# Now, when the WebUI's own scripts (xyz_grid.py among them) are already loaded: Forge's
# API-only mode builds the scripts' UI, and so the X/Y/Z plot's axis list, before it runs
# the before-UI callbacks. Again before the UI, for a host that loaded us first.
add_axes()
script_callbacks.on_before_ui(add_axes)
