"""Reject bad Tile Sampler arguments of an API request with a clear HTTP 422, before the
WebUI starts the job (inside a job, script errors only reach the console).

``RequestCheck`` is a plain ASGI middleware (no web-framework import): it reads the JSON
body of ``POST /sdapi/v1/txt2img`` and ``/sdapi/v1/img2img``, runs the checks, and either
answers 422 or replays the body to the app unchanged.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

from .params import FIELDS, ParamError, final_size, parse_args, resample_fit_error

Check = Callable[[Mapping[str, Any]], Optional[str]]
CHECKED_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def find_alwayson_args(body: Mapping[str, Any], title: str) -> Optional[Any]:
    """The ``args`` given for the always-on script ``title`` (matched case-insensitively,
    as the WebUI does), or None when the request does not name it."""
    scripts = body.get("alwayson_scripts") or {}
    if not isinstance(scripts, Mapping):
        return None
    for name, entry in scripts.items():
        if isinstance(name, str) and name.lower() == title.lower():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("args", []), list):
                return ParamError(f'alwayson_scripts["{name}"] must be {{"args": [...]}}')
            return entry.get("args", [])
    return None


Extra = Callable[[Mapping[str, Any], Mapping[str, Any]], Optional[str]]


def check_alwayson_args(title: str, fields: Optional[Sequence[Any]] = None,
                        extra: Optional[Extra] = None) -> Check:
    """A check of the named always-on script's args with ``parse_args``, then
    ``extra(values, body)`` for what needs the request (image size) or the host (names)."""
    def check(body: Mapping[str, Any]) -> Optional[str]:
        args = find_alwayson_args(body, title)
        if args is None:
            return None
        try:
            if isinstance(args, ParamError):
                raise args
            values = parse_args(args, FIELDS if fields is None else fields)
        except ParamError as e:
            return f"{title}: {e}"
        error = extra(values, body) if extra is not None else None
        return f"{title}: {error}" if error else None
    return check


def request_fit_error(values: Mapping[str, Any], body: Mapping[str, Any]) -> Optional[str]:
    """``resample_fit_error`` for the size a txt2img/img2img request will sample at last."""
    width, height = final_size(int(body.get("width") or 512), int(body.get("height") or 512),
                               bool(body.get("enable_hr")), float(body.get("hr_scale") or 2.0),
                               int(body.get("hr_resize_x") or 0), int(body.get("hr_resize_y") or 0))
    return resample_fit_error(values, width, height)


class RequestCheck:
    """ASGI middleware running ``checks`` on JSON bodies posted to ``paths``."""

    def __init__(self, app: Callable[..., Awaitable[None]], checks: Sequence[Check],
                 paths: Sequence[str] = CHECKED_PATHS) -> None:
        self.app = app
        self.checks = list(checks)
        self.paths = tuple(paths)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" \
                or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        error = self._error(body)
        if error is not None:
            payload = json.dumps({"error": "TileSamplerArgumentError", "detail": error,
                                  "body": "", "errors": error, "message": error}).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _error(self, body: bytes) -> Optional[str]:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return None  # not ours to judge: the WebUI answers malformed JSON itself
        if not isinstance(data, Mapping):
            return None
        for check in self.checks:
            error = check(data)
            if error:
                return error
        return None
