"""API glue: bad Tile Sampler args in /sdapi/v1/txt2img and img2img requests get an HTTP 422
with a readable message instead of a job that runs without the extension."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from modules import script_callbacks

from lib_tilesampler.api_check import RequestCheck, check_alwayson_args, request_fit_error
from lib_tilesampler.hosts import get_host


def _extra(values: Mapping[str, Any], body: Mapping[str, Any]) -> Optional[str]:
    return get_host().name_error(values) or request_fit_error(values, body)


def _install(_demo: Any, app: Any) -> None:
    if getattr(app.state, "tilesampler_request_check", False):
        return
    from starlette.middleware import Middleware

    app.middleware_stack = None  # rebuilt on the next request, with ours outermost
    app.user_middleware.insert(0, Middleware(RequestCheck, checks=[check_alwayson_args("Tile Sampler", extra=_extra)]))
    app.state.tilesampler_request_check = True


script_callbacks.on_app_started(_install, name="tilesampler_api_check")
