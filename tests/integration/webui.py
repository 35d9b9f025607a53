"""A small HTTP client for a running WebUI (A1111 1.10 or Forge 2) started with --api."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

import pytest

URL_VAR = "TILESAMPLER_WEBUI_URL"
BASELINE_VAR = "TILESAMPLER_BASELINE_URL"
AUTH_URL_VAR = "TILESAMPLER_AUTH_WEBUI_URL"
AUTH_VAR = "TILESAMPLER_AUTH"
TITLE = "tile sampler"
SAME_AUTH = object()  # call(): use the WebUI's credentials


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def images(self) -> list[bytes]:
        return [base64.b64decode(i.split(",", 1)[-1]) for i in self.body.get("images", [])]

    @property
    def info(self) -> dict:
        return json.loads(self.body["info"])

    @property
    def infotext(self) -> str:
        return self.info["infotexts"][0]

    def pixels(self, index: int = 0) -> "numpy.ndarray":
        """The image's RGB pixels, (H, W, 3) uint8."""
        import numpy
        from PIL import Image
        with Image.open(io.BytesIO(self.images[index])) as image:
            return numpy.asarray(image.convert("RGB")).copy()

    def digest(self, index: int = 0) -> str:
        """A hash of the image's pixels (not of the PNG file, whose text chunk holds the
        infotext, which differs whenever the options written there differ)."""
        from PIL import Image
        with Image.open(io.BytesIO(self.images[index])) as image:
            pixels = image.convert("RGB")
            return hashlib.sha256(repr(pixels.size).encode() + pixels.tobytes()).hexdigest()


class WebUI:
    def __init__(self, url: str, auth: Optional[tuple[str, str]] = None) -> None:
        self.url = url.rstrip("/")
        self.auth = auth

    def call(self, path: str, payload: Optional[dict] = None, timeout: float = 1800,
             auth: Any = SAME_AUTH) -> Answer:
        """``auth``: (user, password) for HTTP Basic, None for no credentials; by default
        the WebUI's own."""
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        auth = self.auth if auth is SAME_AUTH else auth
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, json.load(response))
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                return Answer(e.code, json.loads(text))
            except ValueError:
                return Answer(e.code, text)

    def is_forge(self) -> bool:
        options = self.call("/sdapi/v1/options").body
        return any(str(k).startswith("forge_") for k in options)

    def reload_ui(self, timeout: float = 600) -> None:
        """Press Settings > Reload UI (the button's gradio function, as the page calls it),
        then wait until the reloaded server answers with the extension's API check."""
        config = self.call("/config").body
        if not isinstance(config, dict):
            pytest.skip("this WebUI serves no gradio page (--nowebui): it has no Reload UI")
        button = {c["id"] for c in config.get("components", [])
                  if (c.get("props") or {}).get("elem_id") == "settings_restart_gradio"}
        fn_index = None
        for index, dependency in enumerate(config.get("dependencies", [])):
            targets = [t[0] if isinstance(t, (list, tuple)) else t for t in dependency.get("targets", [])]
            if button & set(targets):
                fn_index = dependency.get("id", index)
                break
        if fn_index is None:
            pytest.fail("no Reload UI button in this WebUI's page")
        try:
            self.call("/run/predict", {"fn_index": fn_index, "data": [], "session_hash": "tilesampler"},
                      timeout=30)
        except OSError:
            pass
        deadline = time.time() + 60
        while time.time() < deadline:   # wait until the old server is gone
            try:
                urllib.request.urlopen(self.url + "/sdapi/v1/sd-models", timeout=5).read()
            except OSError:
                break
            time.sleep(0.5)
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/sdapi/v1/sd-models", timeout=10).read()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"{self.url} did not come back within {timeout:.0f} s of Reload UI")
                time.sleep(1)
        wait_until_checked(self)


PROBE = {"prompt": "probe", "steps": 1, "width": 64, "height": 64,
         "script_name": "tilesampler readiness probe",
         "alwayson_scripts": {TITLE: {"args": [{"readiness_probe": 1}]}}}


def wait_until_checked(webui: WebUI, timeout: float = 180) -> None:
    """Wait until the extension's API check answers. A WebUI serves its API a moment before
    it calls the extensions' ``on_app_started`` callbacks, where the check is installed; a
    request in between runs unchecked. The probe never starts a job: unchecked, the WebUI
    refuses its unknown script itself."""
    deadline = time.time() + timeout
    while True:
        answer = webui.call("/sdapi/v1/txt2img", PROBE, timeout=30)
        if answer.status == 422 and "readiness_probe" in str(answer.body):
            return
        if time.time() > deadline:
            pytest.fail(f"{webui.url}: the Tile Sampler API check did not answer within {timeout:.0f} s "
                        f"(last answer {answer.status} {str(answer.body)[:200]})")
        time.sleep(1)


def webui_from_env(var: str = URL_VAR) -> WebUI:
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"set {var}=http://127.0.0.1:PORT to run tests against a running WebUI "
                    "(started with --api and this extension installed; see tests/integration/README.md)")
    try:
        urllib.request.urlopen(url.rstrip("/") + "/sdapi/v1/sd-models", timeout=10).read()
    except OSError as e:
        pytest.fail(f"{var}={url} does not answer: {e}")
    webui = WebUI(url)
    if var != BASELINE_VAR:
        wait_until_checked(webui)
    return webui


def auth_webui_from_env() -> WebUI:
    """The WebUI started with ``--api-auth user:password`` (TILESAMPLER_AUTH_WEBUI_URL) and
    its credentials (TILESAMPLER_AUTH=user:password)."""
    url, credentials = os.environ.get(AUTH_URL_VAR), os.environ.get(AUTH_VAR)
    if not url or not credentials or ":" not in credentials:
        pytest.skip(f"set {AUTH_URL_VAR}=http://127.0.0.1:PORT and {AUTH_VAR}=user:password to run "
                    "tests against a WebUI started with --api --api-auth user:password and this "
                    "extension installed (see tests/integration/README.md)")
    user, _, password = credentials.partition(":")
    webui = WebUI(url, auth=(user, password))
    try:
        answer = webui.call("/sdapi/v1/sd-models", timeout=10)
        unauthenticated = webui.call("/sdapi/v1/sd-models", timeout=10, auth=None)
    except OSError as e:
        pytest.fail(f"{AUTH_URL_VAR}={url} does not answer: {e}")
    if answer.status != 200:
        pytest.fail(f"{AUTH_URL_VAR}={url} refuses {AUTH_VAR}: {answer.status} {answer.body}")
    if unauthenticated.status != 401:
        pytest.fail(f"{AUTH_URL_VAR}={url} answers without credentials ({unauthenticated.status}): "
                    "start it with --api-auth")
    wait_until_checked(webui)
    return webui
