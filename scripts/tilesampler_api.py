"""API glue: bad Tile Sampler args (``alwayson_scripts``) or infotext keys of ours (the
``infotext`` field) in /sdapi/v1/txt2img and img2img requests get an HTTP 422 with a
readable message instead of a job that runs without the extension. The checks run after
the host's authentication and its own validation of the request (see
``lib_tilesampler/hosts/api_routes.py``)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from modules import script_callbacks

from lib_tilesampler.api_check import ApiRequest, check_alwayson_args, check_infotext, \
    request_fit_error
from lib_tilesampler.hosts import get_host

TITLE = "Tile Sampler"


def _args_extra(values: Mapping[str, Any], request: ApiRequest) -> Optional[str]:
    return get_host().name_error(values) or request_fit_error(values, request)


def _infotext_extra(values: Mapping[str, Any], request: ApiRequest) -> Optional[str]:
    if request.alwayson_args(TITLE) is not None:  # the args given win over the infotext's
        return get_host().name_error(values)
    return _args_extra(values, request)


def _install(_demo: Any, app: Any) -> None:
    checks = get_host().api_request_checks(app)
    checks.add("tile sampler args", check_alwayson_args(TITLE, extra=_args_extra))
    checks.add("tile sampler infotext", check_infotext(TITLE, extra=_infotext_extra))


script_callbacks.on_app_started(_install, name="tilesampler_api_check")
