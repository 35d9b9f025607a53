"""A small HTTP client for a running WebUI (A1111 1.10 or Forge 2) started with --api."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

import pytest

URL_VAR = "TILESAMPLER_WEBUI_URL"
BASELINE_VAR = "TILESAMPLER_BASELINE_URL"
TITLE = "tile sampler"


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

    def digest(self, index: int = 0) -> str:
        """A hash of the image's pixels (not of the PNG file, whose text chunk holds the
        infotext, which differs whenever the options written there differ)."""
        from PIL import Image
        with Image.open(io.BytesIO(self.images[index])) as image:
            pixels = image.convert("RGB")
            return hashlib.sha256(repr(pixels.size).encode() + pixels.tobytes()).hexdigest()


class WebUI:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(self, path: str, payload: Optional[dict] = None, timeout: float = 1800) -> Answer:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})
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


def webui_from_env(var: str = URL_VAR) -> WebUI:
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"set {var}=http://127.0.0.1:PORT to run tests against a running WebUI "
                    "(started with --api and this extension installed; see tests/integration/README.md)")
    try:
        urllib.request.urlopen(url.rstrip("/") + "/sdapi/v1/sd-models", timeout=10).read()
    except OSError as e:
        pytest.fail(f"{var}={url} does not answer: {e}")
    return WebUI(url)
