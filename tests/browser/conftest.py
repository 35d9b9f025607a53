"""Browser tests of the WebUI page (opt-in): Playwright for Python driving a system
Chromium against a running A1111 1.10 or Forge 2 built with its UI (no ``--nowebui``),
started with ``--api`` and this extension, from a fresh ``ui-config.json``.

    TILESAMPLER_BROWSER_URL=http://127.0.0.1:7860 python -m pytest -v tests/browser

See tests/browser/README.md for the other variables."""
from __future__ import annotations

import os
import shutil

import pytest

URL_VAR = "TILESAMPLER_BROWSER_URL"


def chromium_path() -> str:
    return os.environ.get("TILESAMPLER_BROWSER_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def base_url() -> str:
    url = os.environ.get(URL_VAR)
    if not url:
        pytest.skip(f"{URL_VAR} is not set: the browser tests need a running WebUI with its UI "
                    "(see tests/browser/README.md)")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def browser(base_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    path = chromium_path()
    if not os.path.exists(path):
        pytest.skip(f"no Chromium at {path} (apt-get install -y chromium, or set "
                    "TILESAMPLER_BROWSER_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def shots():
    """Where screenshots go (TILESAMPLER_BROWSER_SHOTS), or None."""
    folder = os.environ.get("TILESAMPLER_BROWSER_SHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture()
def page(request, browser, base_url, shots):
    """A fresh page of the WebUI; its last state is saved as ``last-page-<test file>.png``."""
    from page import Page
    p = Page(browser, base_url).open()
    yield p
    if shots:
        name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
        p.page.screenshot(path=os.path.join(shots, f"last-page-{name}.png"), full_page=True)
    p.close()
