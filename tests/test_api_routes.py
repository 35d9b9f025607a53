"""The request checks inside a real FastAPI app shaped like the hosts' API: HTTP Basic auth
on the routes (as ``--api-auth`` adds it), request models like the hosts', an endpoint that
pastes infotext as the hosts do (``int(text)``), and an exception handler that answers 500.
Order: authentication (401), then the host's validation (its 422), then ours (our 422)."""
from __future__ import annotations

import secrets
from typing import Optional

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from fastapi.security import HTTPBasic, HTTPBasicCredentials  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydantic import BaseModel, model_validator  # noqa: E402

from lib_tilesampler.api_check import check_alwayson_args, check_infotext, request_fit_error  # noqa: E402
from lib_tilesampler.hosts.api_routes import ModelFields, add_api_route, request_checks  # noqa: E402

TITLE = "Tile Sampler"
USER = ("user", "password")
BUILT = {"count": 0}


class Txt2ImgRequest(BaseModel):
    prompt: str = ""
    steps: int = 20
    width: int = 512
    height: int = 512
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    script_name: Optional[str] = None
    script_args: list = []
    alwayson_scripts: dict = {}
    infotext: Optional[str] = None

    @model_validator(mode="after")
    def count(self):
        BUILT["count"] += 1
        return self


class Img2ImgRequest(Txt2ImgRequest):
    init_images: Optional[list] = None
    denoising_strength: float = 0.75


def parse_infotext(text: str) -> dict:
    """The last line's ``key: value`` pairs (the hosts' parser does more; enough here)."""
    pairs = (part.split(":", 1) for part in text.strip().split("\n")[-1].split(","))
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2)}


class HostLikeApi:
    """Routes added as the hosts' ``Api.add_api_route`` does: with an auth dependency when
    credentials are configured."""

    def __init__(self, app: FastAPI, credentials: Optional[tuple] = USER, async_img2img=False):
        self.app, self.credentials, self.received = app, credentials, []
        self.add("/sdapi/v1/txt2img", self.txt2img, methods=["POST"])
        img2img = self.img2img_async if async_img2img else self.img2img
        self.add("/sdapi/v1/img2img", img2img, methods=["POST"])
        self.add("/sdapi/v1/sd-models", lambda: [], methods=["GET"])

    def add(self, path, endpoint, **kwargs):
        if self.credentials:
            kwargs["dependencies"] = [Depends(self.auth)]
        self.app.add_api_route(path, endpoint, **kwargs)

    def auth(self, credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        user, password = self.credentials
        if credentials.username == user and secrets.compare_digest(credentials.password, password):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    def paste(self, request: Txt2ImgRequest) -> None:
        for key, value in parse_infotext(request.infotext or "").items():
            if key in ("Resample tile size", "Steps"):
                int(value)  # as the hosts convert pasted values: a bad one raises (500)

    def txt2img(self, txt2imgreq: Txt2ImgRequest):
        self.paste(txt2imgreq)
        self.received.append(txt2imgreq)
        return {"images": [], "info": "ok"}

    def img2img(self, img2imgreq: Img2ImgRequest):
        self.received.append(img2imgreq)
        return {"images": [], "info": "ok"}

    async def img2img_async(self, img2imgreq: Img2ImgRequest):
        self.received.append(img2imgreq)
        return {"images": [], "info": "ok"}


def make_app(credentials=USER, checked=True, async_img2img=False):
    app = FastAPI()

    @app.exception_handler(Exception)
    async def crash(_request: Request, e: Exception):
        return JSONResponse(status_code=500, content={"error": type(e).__name__, "errors": str(e)})

    api = HostLikeApi(app, credentials, async_img2img)
    if checked:
        def extra(values, request):
            return request_fit_error(values, request)
        checks = request_checks(app, parse_infotext)
        checks.add("args", check_alwayson_args(TITLE, extra=extra))
        checks.add("infotext", check_infotext(TITLE))
    return app, api


def ours(args):
    return {"tile sampler": {"args": args}}


BAD_ARGS = {"prompt": "x", "alwayson_scripts": ours([{"hypertile_tile_size": 4096}])}
BAD_MESSAGE = "Tile Sampler: hypertile_tile_size must be at most 2048, not 4096"


@pytest.fixture()
def client():
    app, api = make_app()
    with TestClient(app, raise_server_exceptions=False) as c:
        c.api = api
        yield c


@pytest.mark.parametrize("auth", [None, ("user", "wrong"), ("nobody", "password")])
@pytest.mark.parametrize("body", [BAD_ARGS, {"prompt": "x"}, {"width": "abc", "alwayson_scripts": ours([{"resample": True}])},
                                  {"infotext": "p\nSteps: 2, Resample: True, Resample tile size: huge"}])
def test_without_good_credentials_every_request_is_401(client, auth, body):
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        answer = client.post(path, json=body, auth=auth)
        assert answer.status_code == 401, answer.text
    assert client.api.received == []


def test_bad_args_get_our_422_with_the_message(client):
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        answer = client.post(path, json=BAD_ARGS, auth=USER)
        assert answer.status_code == 422
        body = answer.json()
        assert body["detail"] == body["errors"] == body["message"] == BAD_MESSAGE
        assert body["error"] == "TileSamplerArgumentError"
    assert client.api.received == []


@pytest.mark.parametrize("fields", [{"width": "abc"}, {"enable_hr": True, "hr_scale": "x"},
                                    {"alwayson_scripts": "x"}, {"height": None}])
def test_a_bad_field_of_the_host_next_to_our_args_gets_the_hosts_422(client, fields):
    body = dict(fields, alwayson_scripts=fields.get("alwayson_scripts", ours([{"resample": True}])))
    answer = client.post("/sdapi/v1/txt2img", json=body, auth=USER)
    assert answer.status_code == 422, answer.text
    assert isinstance(answer.json()["detail"], list)  # the host's validation errors


def test_a_bad_infotext_value_of_ours_gets_a_422_naming_the_key():
    infotext = {"prompt": "", "infotext": "a cat\nSteps: 2, Resample: True, Resample tile size: huge"}
    unchecked, _ = make_app(checked=False)
    with TestClient(unchecked, raise_server_exceptions=False) as c:
        assert c.post("/sdapi/v1/txt2img", json=infotext, auth=USER).status_code == 500
    app, _ = make_app()
    with TestClient(app, raise_server_exceptions=False) as c:
        answer = c.post("/sdapi/v1/txt2img", json=infotext, auth=USER)
    assert answer.status_code == 422
    assert "infotext key 'Resample tile size'" in answer.json()["detail"]


def test_good_requests_reach_the_endpoint_parsed_once(client):
    body = {"prompt": "x", "width": 1024, "height": 768,
            "alwayson_scripts": ours([{"resample": True, "resample_tile_size": 512}]),
            "infotext": "x\nSteps: 2, Sampler: Euler, Resample: True, Resample tile size: 512"}
    before = BUILT["count"]
    answer = client.post("/sdapi/v1/txt2img", json=body, auth=USER)
    assert answer.status_code == 200, answer.text
    assert BUILT["count"] - before == 1
    assert client.api.received[-1].width == 1024
    assert client.post("/sdapi/v1/img2img", json={"init_images": []}, auth=USER).status_code == 200


def test_the_fit_check_sees_the_parsed_size(client):
    body = {"width": 512, "height": 512, "alwayson_scripts": ours([{"resample": True, "resample_tile_size": 1024}])}
    answer = client.post("/sdapi/v1/txt2img", json=body, auth=USER)
    assert answer.status_code == 422 and "not smaller than the image (512x512)" in answer.json()["detail"]


def test_an_async_endpoint_is_checked_too():
    app, api = make_app(async_img2img=True)
    with TestClient(app) as c:
        assert c.post("/sdapi/v1/img2img", json=BAD_ARGS, auth=USER).status_code == 422
        assert c.post("/sdapi/v1/img2img", json={"prompt": "x"}, auth=USER).status_code == 200
    assert len(api.received) == 1


def test_checks_are_installed_once_and_replaced_by_name():
    app, _ = make_app()
    calls = []
    for _ in range(2):
        request_checks(app, parse_infotext).add("count", lambda r: calls.append(r.tab))
    with TestClient(app) as c:
        c.post("/sdapi/v1/txt2img", json={"prompt": "x"}, auth=USER)
    assert calls == ["txt2img"]


def test_without_api_auth_requests_are_checked_without_credentials():
    app, _ = make_app(credentials=None)
    with TestClient(app) as c:
        assert c.post("/sdapi/v1/txt2img", json=BAD_ARGS).status_code == 422
        assert c.post("/sdapi/v1/txt2img", json={"prompt": "x"}).status_code == 200


@pytest.mark.parametrize("credentials", [USER, None])
def test_our_routes_get_the_hosts_auth(credentials):
    app, _ = make_app(credentials=credentials)
    add_api_route(app, "/tilesampler/v1/ping", lambda: {"ok": True}, methods=["GET"])
    with TestClient(app) as c:
        assert c.get("/tilesampler/v1/ping", auth=USER).json() == {"ok": True}
        assert c.get("/tilesampler/v1/ping").status_code == (401 if credentials else 200)
        assert c.get("/tilesampler/v1/ping", auth=("user", "no")).status_code == (401 if credentials else 200)


def test_model_fields_reads_pydantic_1_and_2_models():
    from pydantic import v1

    class Old(v1.BaseModel):
        width: int = 512
        infotext: Optional[str] = None

    for model in (Old(width=64), Txt2ImgRequest(width=64)):
        fields = ModelFields(model)
        assert fields["width"] == 64 and fields.get("infotext") is None
        assert fields.given() == {"width"} and "alwayson_scripts" not in fields.given()
        with pytest.raises(KeyError):
            fields["nope"]


def test_a_rewrite_changes_the_parsed_request_before_the_checks_and_the_endpoint():
    app, api = make_app()
    seen = []
    checks = request_checks(app, parse_infotext)

    def whole(request):
        if request.fields.get("script_name") != "tools":
            return None
        return {"script_args": [request.infotext.get("Rows", "1"), *request.fields["script_args"]]}
    checks.add_rewrite("whole", whole)
    checks.add("sees", lambda r: seen.append(list(r.fields["script_args"])))
    checks.add_rewrite("broken", lambda r: 1 / 0)          # reported, skipped
    with TestClient(app) as c:
        body = {"script_name": "tools", "script_args": [{"mask": "x"}], "infotext": "p\nRows: 2"}
        assert c.post("/sdapi/v1/txt2img", json=body, auth=USER).status_code == 200
        assert c.post("/sdapi/v1/txt2img", json={"prompt": "x"}, auth=USER).status_code == 200
    assert seen == [["2", {"mask": "x"}], []]
    assert api.received[0].script_args == ["2", {"mask": "x"}] and api.received[1].script_args == []
