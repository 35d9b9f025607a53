"""Tile Sampler in the host's HTTP API (the FastAPI app both hosts run; fastapi 0.94 with
pydantic 1 in A1111 1.10, fastapi 0.104 with pydantic 2 in Forge 2).

Request checks: the endpoint functions of the host's ``POST /sdapi/v1/txt2img`` and
``/sdapi/v1/img2img`` routes are wrapped, so a check runs where FastAPI calls the endpoint:
after the route's dependencies (the host's ``--api-auth`` check, 401) and after the body
was parsed and validated into the host's request model (the host's own 422), and before
the endpoint itself (which pastes the ``infotext`` field and starts the job). The checks
get that parsed model: the body is read once, by the host.

Rewrites: after every check passed, a rewrite may set fields of the parsed request before
the endpoint sees it (the Script tab's script puts its args in the exact positional form the
host's slice assignment of ``script_args`` needs, restored from the ``infotext`` field when
the caller gave none).

Our own routes: ``add_api_route`` gives them the dependencies of the host's own API routes,
which hold ``Depends(Api.auth)`` when the WebUI runs with ``--api-auth``.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterator, Mapping, Optional

from ..api_check import ApiRequest, Check, error_body, first_error

CHECKED_ROUTES = {"/sdapi/v1/txt2img": "txt2img", "/sdapi/v1/img2img": "img2img"}
AUTH_REFERENCE_ROUTE = "/sdapi/v1/txt2img"
STATE_KEY = "tilesampler_request_checks"
MARK = "__tilesampler_request_checks__"

ParseInfotext = Callable[[str], Mapping[str, Any]]
Rewrite = Callable[[ApiRequest], Optional[Mapping[str, Any]]]


class RequestChecks:
    """The checks of one app's txt2img/img2img requests, run in the order added; the
    first message answers the request with HTTP 422."""

    def __init__(self, parse_infotext: Optional[ParseInfotext] = None) -> None:
        self.checks: dict[str, Check] = {}
        self.rewrites: dict[str, Rewrite] = {}
        self.parse_infotext = parse_infotext

    def add(self, name: str, check: Check) -> None:
        """Run ``check`` on every request; a check added again under the same ``name``
        replaces the earlier one (scripts are reloaded with the UI)."""
        self.checks[name] = check

    def add_rewrite(self, name: str, rewrite: Rewrite) -> None:
        """After the checks passed, set the fields ``rewrite(request)`` returns (a mapping of
        field name to value, or None for no change) on the parsed request; replaced by
        ``name`` as ``add``."""
        self.rewrites[name] = rewrite

    def error(self, request: ApiRequest) -> Optional[str]:
        return first_error(request, list(self.checks.values()))

    def changes(self, request: ApiRequest) -> dict[str, Any]:
        """The fields the rewrites set. A rewrite that fails is reported on the console and
        skipped, as a failing check is."""
        out: dict[str, Any] = {}
        for name, rewrite in self.rewrites.items():
            try:
                out.update(rewrite(request) or {})
            except Exception as e:  # noqa: BLE001
                print(f"[Tile Sampler] API rewrite {name!r} failed: {type(e).__name__}: {e}")
        return out

    def request(self, tab: str, model: Any) -> ApiRequest:
        """The checks' view of a parsed request model (its ``infotext`` parsed too)."""
        fields = ModelFields(model)
        text = fields.get("infotext")
        infotext: Mapping[str, Any] = {}
        if isinstance(text, str) and text.strip() and self.parse_infotext is not None:
            try:
                infotext = dict(self.parse_infotext(text))
            except Exception as e:  # noqa: BLE001 - the host's endpoint meets it again
                print(f"[Tile Sampler] could not parse the request's infotext: {type(e).__name__}: {e}")
        return ApiRequest(tab, fields, fields.given(), infotext)


class ModelFields(Mapping):
    """A read-only mapping over a pydantic model's fields (pydantic 1 or 2), no copy."""

    def __init__(self, model: Any) -> None:
        self.model = model
        names = getattr(type(model), "model_fields", None)  # pydantic 2
        if names is None:
            names = getattr(model, "__fields__", {})  # pydantic 1
        self.names = tuple(names)

    def __getitem__(self, name: str) -> Any:
        if name not in self.names:
            raise KeyError(name)
        return getattr(self.model, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def given(self) -> frozenset:
        given = getattr(self.model, "model_fields_set", None)  # pydantic 2
        if given is None:
            given = getattr(self.model, "__fields_set__", ())  # pydantic 1
        return frozenset(given)


def request_checks(app: Any, parse_infotext: Optional[ParseInfotext] = None) -> RequestChecks:
    """The request checks of ``app`` (made once, kept in ``app.state``), with the host's
    txt2img/img2img endpoints wrapped to run them. Call it after the host has added its
    API routes (from an ``on_app_started`` callback); without ``--api`` there are none and
    nothing is wrapped."""
    checks = getattr(app.state, STATE_KEY, None)
    if checks is None:
        checks = RequestChecks(parse_infotext)
        setattr(app.state, STATE_KEY, checks)
    elif parse_infotext is not None:
        checks.parse_infotext = parse_infotext
    for route in app.routes:
        tab = CHECKED_ROUTES.get(getattr(route, "path", None))
        if tab is not None and "POST" in (getattr(route, "methods", None) or ()):
            wrap_endpoint(route, tab, checks)
    return checks


def wrap_endpoint(route: Any, tab: str, checks: RequestChecks) -> bool:
    """Make FastAPI call ``checks`` before the endpoint of ``route`` (an ``APIRoute``).

    FastAPI calls ``route.dependant.call`` with the solved dependencies and the validated
    body once auth and validation passed; that callable is replaced by one that answers
    422 for a rejected request and calls the endpoint otherwise. It stays a coroutine
    function exactly when the endpoint is one (FastAPI runs plain functions in its thread
    pool). Returns False when the route is not one we can wrap, or already wrapped."""
    dependant = getattr(route, "dependant", None)
    inner = getattr(dependant, "call", None)
    if inner is None or getattr(inner, MARK, None) is not None:
        return False
    body_params = getattr(dependant, "body_params", None) or []
    body_name = getattr(body_params[0], "name", None) if len(body_params) == 1 else None
    if body_name is None:
        return False

    def rejected(values: dict) -> Any:
        model = values.get(body_name)
        if model is None:
            return None
        request = checks.request(tab, model)
        message = checks.error(request)
        if message is None:
            for name, value in checks.changes(request).items():
                setattr(model, name, value)
            return None
        from starlette.responses import JSONResponse
        return JSONResponse(status_code=422, content=error_body(message))

    if asyncio.iscoroutinefunction(inner):
        async def call(**values: Any) -> Any:
            answer = rejected(values)
            return answer if answer is not None else await inner(**values)
    else:
        def call(**values: Any) -> Any:
            answer = rejected(values)
            return answer if answer is not None else inner(**values)
    setattr(call, MARK, checks)
    call.__name__ = getattr(inner, "__name__", "endpoint")
    dependant.call = call
    return True


def auth_dependencies(app: Any) -> list:
    """The dependencies the host puts on its own API routes: ``[Depends(Api.auth)]`` when
    it runs with ``--api-auth`` (HTTP Basic, 401 otherwise), ``[]`` without it or without
    ``--api``. Read from the host's txt2img route, so both hosts' ways are followed."""
    for route in app.routes:
        if getattr(route, "path", None) == AUTH_REFERENCE_ROUTE:
            return list(getattr(route, "dependencies", None) or [])
    return []


def add_api_route(app: Any, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
    """``app.add_api_route`` behind the host's API authentication (see
    ``auth_dependencies``); ``dependencies`` of the caller's come after it."""
    dependencies = auth_dependencies(app) + list(kwargs.pop("dependencies", None) or [])
    app.add_api_route(path, endpoint, dependencies=dependencies, **kwargs)


PlanFunction = Callable[[Mapping[str, Any]], dict]


def plan_endpoint(plan: PlanFunction) -> Callable[..., Any]:
    """The endpoint of ``POST /tilesampler/v1/plan``: the JSON body is a txt2img / img2img
    request (its ``tab``, size, steps, hires fields and the Tile Sampler args, see
    ``preview.plan_job``); the answer is ``plan(body)``, or HTTP 422 naming the bad field."""
    from fastapi import Body
    from starlette.responses import JSONResponse

    from ..params import ParamError
    from ..preview import PlanRequestError

    def endpoint(request: dict = Body(...)) -> Any:
        try:
            return plan(request)
        except (ParamError, PlanRequestError) as e:
            message = str(e) if str(e).startswith("Tile Sampler") else f"Tile Sampler: {e}"
            return JSONResponse(status_code=422, content=error_body(message))
    endpoint.__name__ = "tilesampler_plan"
    return endpoint
