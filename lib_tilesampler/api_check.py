"""Checks of a txt2img/img2img API request's script arguments: a bad argument is answered
with a clear HTTP 422 before the WebUI starts the job (inside a job, script errors only
reach the console).

A check is a function ``ApiRequest -> message or None``. It sees the request as the host
parsed and validated it (after authentication), with the ``infotext`` field parsed by the
host's own parser; ``hosts/api_routes.py`` runs the checks inside the host's endpoints.
Nothing here imports a web framework or the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from .params import FIELDS, Field, ParamError, final_size, infotext_values, parse_args, \
    resample_fit_error

# infotext keys the host's paste turns into request fields that set the size sampled at last
INFOTEXT_SIZE_FIELDS = {"Size-1": "width", "Size-2": "height", "Hires upscale": "hr_scale",
                        "Hires resize-1": "hr_resize_x", "Hires resize-2": "hr_resize_y",
                        "Denoising strength": "enable_hr"}


@dataclass(frozen=True)
class ApiRequest:
    """One txt2img/img2img API request, as the checks see it."""

    tab: str                                    # "txt2img" or "img2img"
    fields: Mapping[str, Any]                   # the request's fields, parsed by the host
    given: frozenset = frozenset()              # the names of the fields the caller set
    infotext: Mapping[str, Any] = field(default_factory=dict)  # its `infotext`, parsed

    def alwayson_args(self, title: str) -> Any:
        """The ``args`` given for the always-on script ``title`` (matched
        case-insensitively, as the WebUI does); None when the request does not name it;
        a ``ParamError`` when the entry is not ``{"args": [...]}``."""
        scripts = self.fields.get("alwayson_scripts") or {}
        if not isinstance(scripts, Mapping):
            return None
        for name, entry in scripts.items():
            if isinstance(name, str) and name.lower() == title.lower():
                if not isinstance(entry, Mapping) or not isinstance(entry.get("args", []), list):
                    return ParamError(f'alwayson_scripts["{name}"] must be {{"args": [...]}}')
                return entry.get("args", [])
        return None

    def script_args(self, title: str) -> Any:
        """``script_args`` when ``script_name`` names the selectable script ``title``
        (case-insensitively), else None; a ``ParamError`` when they are not a list."""
        name = self.fields.get("script_name")
        if not isinstance(name, str) or name.lower() != title.lower():
            return None
        args = self.fields.get("script_args")
        if args is None:
            return []
        return args if isinstance(args, list) else ParamError("script_args must be a list")

    def last_size(self) -> Optional[tuple[int, int]]:
        """The size of the last sampling pass; None when the ``infotext`` field will set a
        part of it (the host pastes it into fields the caller left out) or it is no size."""
        for key, name in INFOTEXT_SIZE_FIELDS.items():
            if key in self.infotext and name not in self.given \
                    and (name != "enable_hr" or self.tab == "txt2img"):
                return None
        f = self.fields
        try:
            return final_size(int(f.get("width") or 512), int(f.get("height") or 512),
                              bool(f.get("enable_hr")), float(f.get("hr_scale") or 2.0),
                              int(f.get("hr_resize_x") or 0), int(f.get("hr_resize_y") or 0))
        except (TypeError, ValueError, OverflowError):
            return None


Check = Callable[[ApiRequest], Optional[str]]
Extra = Callable[[Mapping[str, Any], ApiRequest], Optional[str]]
Parse = Callable[[Sequence[Any]], Mapping[str, Any]]


def _args_check(title: str, find: Callable[[ApiRequest], Any], parse: Parse,
                extra: Optional[Extra]) -> Check:
    def check(request: ApiRequest) -> Optional[str]:
        args = find(request)
        if args is None:
            return None
        try:
            if isinstance(args, ParamError):
                raise args
            values = parse(args)
        except ParamError as e:
            return f"{title}: {e}"
        error = extra(values, request) if extra is not None else None
        return f"{title}: {error}" if error else None
    return check


def check_alwayson_args(title: str, fields: Optional[Sequence[Field]] = None,
                        extra: Optional[Extra] = None) -> Check:
    """A check of the always-on script's ``alwayson_scripts`` args with ``parse_args``,
    then ``extra(values, request)`` for what needs the request (image size) or the host
    (names)."""
    return _args_check(title, lambda r: r.alwayson_args(title),
                       lambda args: parse_args(args, FIELDS if fields is None else fields), extra)


def check_script_args(title: str, parse: Parse, extra: Optional[Extra] = None) -> Check:
    """The same for a selectable (Script tab) script: ``script_args`` when ``script_name``
    is ``title``, parsed by ``parse`` (which raises ``ParamError``)."""
    return _args_check(title, lambda r: r.script_args(title), parse, extra)


def script_values(request: ApiRequest, title: str, fields: Sequence[Field], parse: Parse,
                  from_infotext: Callable[[Mapping[str, Any]], Optional[Mapping[str, Any]]]
                  ) -> Optional[dict[str, Any]]:
    """The values a Script-tab script runs with for a request that names it (None when it
    does not): a named dict's keys over the values pasted from the request's ``infotext``
    (over the defaults); positional args as given; no args: the infotext's values or the
    defaults. ``ParamError`` for a bad value."""
    args = request.script_args(title)
    if args is None:
        return None
    if isinstance(args, ParamError):
        raise args
    pasted = from_infotext(request.infotext)
    values = dict(pasted) if pasted else {f.key: f.default for f in fields}
    if args and isinstance(args[0], Mapping):
        named = parse(args)
        values.update({k: named[k] for k in args[0]})
        return values
    return dict(parse(args)) if args else values


def script_args_in_full(title: str, fields: Sequence[Field], parse: Parse,
                        from_infotext: Callable[[Mapping[str, Any]], Optional[Mapping[str, Any]]]
                        ) -> Callable[[ApiRequest], Optional[dict[str, Any]]]:
    """A request rewrite (``RequestChecks.add_rewrite``) that gives a Script-tab script its
    ``script_values`` as the full positional list. The hosts write ``script_args`` over
    exactly the script's slice of their argument list, so fewer values (a named dict, or
    none with an ``infotext``) would shift what follows and drop the pasted values."""
    def rewrite(request: ApiRequest) -> Optional[dict[str, Any]]:
        try:
            values = script_values(request, title, fields, parse, from_infotext)
        except ParamError:
            return None
        return None if values is None else {"script_args": [values[f.key] for f in fields]}
    return rewrite


def check_infotext(title: str, fields: Optional[Sequence[Field]] = None,
                   extra: Optional[Extra] = None) -> Check:
    """A check of our keys in the request's ``infotext`` (already parsed by the host)."""
    def check(request: ApiRequest) -> Optional[str]:
        try:
            values = infotext_values(request.infotext, FIELDS if fields is None else fields)
        except ParamError as e:
            return f"{title}: {e}"
        error = extra(values, request) if values and extra is not None else None
        return f"{title}: {error}" if error else None
    return check


def request_fit_error(values: Mapping[str, Any], request: ApiRequest) -> Optional[str]:
    """``resample_fit_error`` for the size the request will sample at last (None when
    that size is only known once the host has pasted the infotext: the job says it)."""
    size = request.last_size()
    return resample_fit_error(values, *size) if size is not None else None


def first_error(request: ApiRequest, checks: Sequence[Check]) -> Optional[str]:
    """The message of the first check that rejects ``request``. A check that fails
    itself is reported on the console and skipped: a bug of ours never blocks a job."""
    for check in checks:
        try:
            error = check(request)
        except Exception as e:  # noqa: BLE001 - see the docstring
            print(f"[Tile Sampler] API check {getattr(check, '__name__', check)!r} failed: "
                  f"{type(e).__name__}: {e}")
            continue
        if error:
            return error
    return None


def error_body(message: str) -> dict[str, str]:
    """The JSON of a 422 answer: the keys of both hosts' error answers (A1111 ``errors``,
    Forge ``message``) with the message in each."""
    return {"error": "TileSamplerArgumentError", "detail": message, "body": "",
            "errors": message, "message": message}
