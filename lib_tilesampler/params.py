"""The options of the always-on script: one table that fixes the UI order (= the API's
positional order), the named API keys, the infotext keys, the ranges and the defaults.

``parse_args`` accepts what the hosts hand a script: the positional values of the UI
controls, or a single dict of named values (``{"hypertile": true, ...}``) from the API.
Nothing is silently replaced: a wrong type, a value out of range or an unknown key is an
error with a message meant for the user.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

Number = Union[int, float]


class ParamError(ValueError):
    """Bad script arguments; the message is shown to the user as it is."""


@dataclass(frozen=True)
class Field:
    key: str                    # named API key, also the X/Y/Z attribute suffix
    label: str                  # UI label (also shown by /sdapi/v1/script-info)
    infotext: str               # infotext key
    kind: type                  # bool, int, float or str
    default: Any
    minimum: Optional[Number] = None
    maximum: Optional[Number] = None
    step: Optional[Number] = None
    choices: tuple = ()
    group: str = ""             # "hypertile", "resample": written only when that group is on
    info: str = ""              # tooltip / README text
    xyz: bool = False           # offered as an X/Y/Z plot axis

    def check(self, value: Any) -> Any:
        """``value`` converted to ``kind`` if it is that kind already in another spelling
        (``"256"``, ``256.0``, ``"True"``); otherwise ``ParamError``."""
        value = _coerce(self, value)
        if self.choices and value not in self.choices:
            raise ParamError(f"{self.key} must be one of {', '.join(map(repr, self.choices))}, not {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ParamError(f"{self.key} must be at least {self.minimum}, not {value}")
        if self.maximum is not None and value > self.maximum:
            raise ParamError(f"{self.key} must be at most {self.maximum}, not {value}")
        return value


def _coerce(f: Field, value: Any) -> Any:
    bad = ParamError(f"{f.key} must be {f.kind.__name__}, not {value!r} ({type(value).__name__})")
    if f.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad
    if f.kind in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        if f.kind is int:
            if float(value) != int(value):
                raise ParamError(f"{f.key} must be a whole number, not {value!r}")
            return int(value)
        return float(value)
    if f.kind is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


MASTER = Field("enabled", "Tile Sampler", "Tile Sampler", bool, False,
               info="Master switch of the extension: HyperTile and the latent tile resample "
                    "run only while it is on.")

# Labels are unique within the script: the WebUI's ui-config.json keys a control by script
# file, tab and label, so two controls with one label would share their saved value and
# range (the resample tile size once showed HyperTile's 256 px and 2048 px maximum). A
# label never used before also leaves a ui-config.json of an older release behind.
HYPERTILE_FIELDS: tuple[Field, ...] = (
    Field("hypertile", "HyperTile", "HyperTile", bool, False, group="hypertile",
          info="Split U-Net self-attention into windows of the token grid: large images "
               "sample faster.", xyz=True),
    Field("hypertile_tile_size", "HyperTile tile (px)", "HyperTile tile size", int, 256, 64, 2048,
          16, group="hypertile", xyz=True,
          info="Smallest window side in image pixels (a latent cell is 8 px). A side with no "
               "divisor leaving windows this large stays whole."),
    Field("hypertile_swap_size", "Swap size", "HyperTile swap size", int, 2, 1, 16, 1,
          group="hypertile", xyz=True,
          info="The window count per axis is drawn among this many of the best divisors at "
               "every step, so window borders move (1 = fixed borders, which can show)."),
    Field("hypertile_max_depth", "Max depth", "HyperTile max depth", int, 0, 0, 3, 1,
          group="hypertile", xyz=True,
          info="Deepest U-Net level tiled: 0 = full latent resolution, 1 = half, ... (SDXL has "
               "no attention at level 0: use 1 or more)."),
    Field("hypertile_scale_depth", "Scale depth", "HyperTile scale depth", bool, False,
          group="hypertile", info="Double the window side at each deeper level."),
    Field("hypertile_vae", "VAE attention", "HyperTile VAE", bool, False, group="hypertile",
          info="Also tile the VAE's mid-block attention (windows of at least 128 px)."),
)

SAME = "same as main"
RESAMPLE_MODES = ("independent", "fused", "moving")
RESAMPLE_WHERE = ("after", "during")
RESAMPLE_WEIGHTS = ("gaussian", "uniform")
RESAMPLE_SIZE_COND = ("tile", "image")

RESAMPLE_FIELDS: tuple[Field, ...] = (
    Field("resample", "Latent tile resample", "Resample", bool, False, group="resample",
          info="Re-denoise a latent larger than the tile, tile by tile, at partial denoise, "
               "and put it back together without seams."),
    Field("resample_mode", "Mode", "Resample mode", str, "fused", choices=RESAMPLE_MODES,
          group="resample", xyz=True,
          info="independent: each tile sampled on its own, then crossfaded over the overlap; "
               "fused: one sampling whose every step is split into overlapping tiles "
               "(MultiDiffusion); moving: no overlap, the tile grid moves every step "
               "(SpotDiffusion)."),
    Field("resample_where", "Where", "Resample where", str, "after", choices=RESAMPLE_WHERE,
          group="resample",
          info="after: one resample pass on the final latent (after the hires pass); during: "
               "that pass, and the main and hires sampling are tiled too when their latent is "
               "larger than the tile (large images in little memory)."),
    Field("resample_weights", "Tile weights", "Resample weights", str, "gaussian",
          choices=RESAMPLE_WEIGHTS, group="resample",
          info="Fused mode's blend: gaussian (Mixture of Diffusers) or uniform, the plain "
               "average (MultiDiffusion)."),
    Field("resample_tile_size", "Resample tile (px)", "Resample tile size", int, 1024, 256, 4096,
          64, group="resample", xyz=True,
          info="Largest tile side in image pixels (what fits in memory); tiles are as few as "
               "it allows, shrunk to the least side that keeps the overlap."),
    Field("resample_overlap", "Overlap (px)", "Resample overlap", int, 128, 0, 2048, 8,
          group="resample", xyz=True,
          info="Least overlap between neighbouring tiles. Unused in moving mode."),
    Field("resample_batch", "Tile batch", "Resample tile batch", int, 1, 1, 32, 1,
          group="resample",
          info="Tiles per U-Net call: faster with more, needs more memory; the result does "
               "not depend on it."),
    Field("resample_denoise", "Denoise", "Resample denoise", float, 0.25, 0.0, 1.0, 0.01,
          group="resample", xyz=True,
          info="The pass runs the last steps x denoise steps of its schedule; 0 leaves the "
               "latent unchanged."),
    Field("resample_steps", "Steps (0 = main)", "Resample steps", int, 30, 0, 150, 1,
          group="resample", info="Length of the pass's schedule; 0 = the main pass's steps."),
    Field("resample_cfg", "CFG (0 = main)", "Resample CFG", float, 5.0, 0.0, 30.0, 0.5,
          group="resample", info="CFG scale of the pass; 0 = the main pass's CFG."),
    Field("resample_sampler", "Sampler", "Resample sampler", str, SAME, group="resample",
          info="A sampler of the WebUI, or 'same as main'."),
    Field("resample_scheduler", "Schedule", "Resample scheduler", str, SAME, group="resample",
          info="A schedule type of the WebUI, or 'same as main'."),
    Field("resample_seed", "Seed (-1 = image's)", "Resample seed", int, -1, -1,
          2 ** 32 - 1, 1, group="resample",
          info="-1 = each image's own seed; otherwise image i of the job gets this seed + i."),
    Field("resample_size_cond", "SDXL size conditioning", "Resample SDXL size", str, "tile",
          choices=RESAMPLE_SIZE_COND, group="resample",
          info="SDXL only. tile: each tile is told its size and its place in the image (SDXL's "
               "crop conditioning), as the crop of the image it is; image: every tile gets the "
               "whole image's size and crop values."),
)

FIELDS: tuple[Field, ...] = (MASTER,) + HYPERTILE_FIELDS + RESAMPLE_FIELDS
FIELDS_BY_KEY: dict[str, Field] = {f.key: f for f in FIELDS}
GROUP_SWITCH = {"hypertile": "hypertile", "resample": "resample"}


def defaults() -> dict[str, Any]:
    return {f.key: f.default for f in FIELDS}


def parse_args(args: Sequence[Any], fields: Sequence[Field] = FIELDS,
               merge_tail: bool = False) -> dict[str, Any]:
    """Values of ``fields`` from positional values or from one dict of named values.

    A lone dict turns the extension on unless it says ``"enabled": false``; keys left
    out keep their defaults. With ``merge_tail`` (inside a job) the values after the dict
    are the base the dict's keys override: the WebUI fills those positions with the UI's
    defaults, or with what it pasted from the request's ``infotext`` field. Without it (a
    request as the caller sent it) a dict followed by other values is an error.
    """
    args = list(args)
    values = {f.key: f.default for f in fields}
    if args and isinstance(args[0], Mapping):
        if merge_tail:
            for f, value in zip(fields[1:], args[1:]):
                if value is not None:
                    values[f.key] = f.check(value)
        elif any(a is not None for a in args[1:]) and not _all_defaults(args[1:], fields[1:]):
            raise ParamError("give either one dict of named args or positional args, not both")
        named = dict(args[0])
        unknown = sorted(set(named) - {f.key for f in fields})
        if unknown:
            known = ", ".join(f.key for f in fields)
            raise ParamError(f"unknown key(s) {', '.join(map(repr, unknown))}; known keys: {known}")
        values[fields[0].key] = True
        for f in fields:
            if f.key in named:
                values[f.key] = f.check(named[f.key])
        return values
    if len(args) > len(fields):
        raise ParamError(f"got {len(args)} positional args, expected at most {len(fields)} "
                         f"({', '.join(f.key for f in fields)})")
    for f, value in zip(fields, args):
        values[f.key] = f.check(value)
    return values


def _all_defaults(values: Sequence[Any], fields: Sequence[Field]) -> bool:
    """True when trailing positional values are just the hosts' defaults (the API fills
    the positions after a dict with the UI defaults)."""
    return all(f.check(v) == f.default for v, f in zip(values, fields) if v is not None)


def group_enabled(values: Mapping[str, Any], group: str) -> bool:
    return bool(values.get(MASTER.key)) and bool(values.get(GROUP_SWITCH[group]))


def to_infotext(values: Mapping[str, Any], fields: Iterable[Field] = FIELDS) -> dict[str, Any]:
    """Infotext entries (flat scalars) for the groups that are on."""
    out: dict[str, Any] = {}
    for f in fields:
        if f.group and group_enabled(values, f.group):
            out[f.infotext] = values[f.key]
    return out


def from_infotext(params: Mapping[str, str], fields: Iterable[Field] = FIELDS) -> dict[str, Any]:
    """Values restored from parsed infotext; ``{}`` when none of our keys is there.
    Keys of a group that is present but lack a value fall back to the defaults."""
    fields = list(fields)
    if not any(f.infotext in params for f in fields if f.group):
        return {}
    out = {f.key: f.default for f in fields}
    out[MASTER.key] = True
    for f in fields:
        if f.group and f.infotext in params:
            try:
                out[f.key] = f.check(params[f.infotext])
            except ParamError:
                pass
    return out


_WHOLE_NUMBER = re.compile(r"[+-]?\d+")


def infotext_values(params: Mapping[str, Any], fields: Iterable[Field] = FIELDS) -> dict[str, Any]:
    """Like ``from_infotext``, but strict: a value of ours that does not check out is a
    ``ParamError`` naming its infotext key. A whole-number option must be written as one
    (``30``, not ``30.0``): the hosts convert pasted values with ``int(text)``."""
    fields = list(fields)
    if not any(f.infotext in params for f in fields if f.group):
        return {}
    out = {f.key: f.default for f in fields}
    out[MASTER.key] = True
    for f in fields:
        if not f.group or f.infotext not in params:
            continue
        raw = params[f.infotext]
        try:
            out[f.key] = f.check(raw)
            if f.kind is int and isinstance(raw, str) and not _WHOLE_NUMBER.fullmatch(raw.strip()):
                raise ParamError(f"{f.key} must be a whole number, not {raw!r}")
        except ParamError as e:
            raise ParamError(f"infotext key {f.infotext!r}: {e}") from None
    return out


def override_from(obj: Any, values: dict[str, Any], prefix: str = "tilesampler_") -> dict[str, Any]:
    """Values with X/Y/Z plot overrides applied: an attribute ``<prefix><key>`` on ``obj``
    (the processing object) wins over the script argument."""
    out = dict(values)
    for f in FIELDS:
        attr = prefix + f.key
        if hasattr(obj, attr):
            out[f.key] = f.check(getattr(obj, attr))
            if f.group:
                out[MASTER.key] = True
    return out


def resample_fit_error(values: Mapping[str, Any], width: int, height: int) -> Optional[str]:
    """Why the resample settings cannot work on a ``width x height`` image, or None.

    A tile covering the whole image would make the 'tiled' pass a plain img2img pass,
    which is not what the user asked for: that is reported instead of done silently.
    """
    if not group_enabled(values, "resample"):
        return None
    tile, overlap = values["resample_tile_size"], values["resample_overlap"]
    if values["resample_mode"] != "moving" and overlap >= tile:
        return f"resample_overlap ({overlap} px) must be smaller than resample_tile_size ({tile} px)"
    if tile >= width and tile >= height:
        return (f"resample_tile_size ({tile} px) is not smaller than the image ({width}x{height}): "
                f"nothing to tile; choose a tile below {max(width, height)} px or turn resample off")
    return None


ADAPTIVE_SAMPLERS = ("dpm adaptive",)


def moving_sampler_error(values: Mapping[str, Any], main_sampler: Optional[str]) -> Optional[str]:
    """Why the moving mode cannot run with the job's samplers, or None.

    An adaptive step-size sampler (DPM adaptive) estimates its error from U-Net calls at
    several noise levels inside one step; moving mode shifts its seams at every noise level,
    so the estimate sees the seams move, rejects step after step (6.5 times the U-Net calls of
    fused mode at 512x256 on A1111) and the accepted path follows float noise: the image then
    changes with the tile batch. ``main_sampler`` counts too when it runs the pass (the
    resample's "same as main") or the main sampling is tiled (``during``)."""
    if not group_enabled(values, "resample") or values.get("resample_mode") != "moving":
        return None
    why = ("its step-size control sees the moving seams at every U-Net call: many times the "
           "calls, and an image that changes with the tile batch")
    chosen = values.get("resample_sampler")
    runs = main_sampler if chosen == SAME else chosen
    if runs and runs.lower() in ADAPTIVE_SAMPLERS:
        return (f"resample_sampler {runs} cannot run the moving mode ({why}): choose the fused or "
                "independent mode, or another sampler")
    if values.get("resample_where") == "during" and main_sampler and main_sampler.lower() in ADAPTIVE_SAMPLERS:
        return (f"the sampler {main_sampler} cannot run the main sampling in moving tiles ({why}): "
                "choose resample_where after, the fused or independent mode, or another sampler")
    return None


def final_size(width: int, height: int, enable_hr: bool = False, hr_scale: float = 1.0,
               hr_resize_x: int = 0, hr_resize_y: int = 0) -> tuple[int, int]:
    """The size of the last sampling pass: the hires target when hires fix is on (as the
    WebUI computes it: a given resize wins, one missing side keeps the aspect ratio)."""
    if not enable_hr:
        return int(width), int(height)
    if not hr_resize_x and not hr_resize_y:
        return int(width * hr_scale) // 8 * 8, int(height * hr_scale) // 8 * 8
    if not hr_resize_y:
        return int(hr_resize_x), int(hr_resize_x * height / width) // 8 * 8
    if not hr_resize_x:
        return int(hr_resize_y * width / height) // 8 * 8, int(hr_resize_y)
    return int(hr_resize_x), int(hr_resize_y)
