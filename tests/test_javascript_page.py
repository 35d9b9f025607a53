"""javascript/tilesampler.js on a static page in headless Chromium: it gathers the tab's
values (the WebUI's own controls and ours, by elem_id) into the request that
``preview.plan_job`` takes, puts it in the hidden request box and clicks the hidden
button, debounced; the same for the Script tab's "Tile Sampler tools" while it is shown,
whose answer (``tool_preview_html``) is the preview line. Skipped without Playwright or a system Chromium (tests/run_tests.sh
installs both in CI)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from lib_tilesampler import params as P
from lib_tilesampler.preview import plan_job
from lib_tilesampler.preview_text import tool_preview_html
from lib_tilesampler.tools import options as O

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chromium() -> str:
    path = os.environ.get("TILESAMPLER_BROWSER_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.skip(f"no Chromium at {path} (apt-get install -y chromium)")
    return path


def control(elem_id: str, field: P.Field) -> str:
    """The DOM the WebUI makes of one of our controls (the parts the script reads)."""
    if field.key in ("enabled", "hypertile", "resample"):
        return (f'<div id="{elem_id}"><span><input type="checkbox" id="{elem_id}-visible-checkbox"'
                f'{" checked" if field.key != "hypertile" else ""}></span></div>')
    if field.kind is bool:
        return f'<div id="{elem_id}"><input type="checkbox"></div>'
    if field.kind is str:
        return f'<div id="{elem_id}"><input value="{field.default}"></div>'
    return (f'<div id="{elem_id}"><input type="number" value="{field.default}">'
            f'<input type="range" value="{field.default}"></div>')


def tool_control(elem_id: str, field: P.Field) -> str:
    """The DOM of a control of the Script's tools: the tool's radio, or as ``control``."""
    if field.key == "tool":
        radios = "".join(f'<label><input type="radio" name="tool" value="{label}"'
                         f'{" checked" if key == field.default else ""}>{label}</label>'
                         for key, label in O.TOOL_LABELS.items())
        return f'<div id="{elem_id}">{radios}</div>'
    return control(elem_id, field)


def tools_section(tab: str) -> str:
    """The Script tab's tools, hidden (another Script is chosen) until a test shows them.
    On txt2img the img2img-only checkboxes have no elem_id (hidden by the script)."""
    start = f"script_{tab}_tile_sampler_tools_"
    fields = [f for f in O.TOOL_FIELDS if f.key != "mask"
              and not (tab == "txt2img" and f.key in ("img2img_refine", "use_inpaint_mask"))]
    keys = " ".join(f.key for f in O.TOOL_FIELDS if f.key != "mask")
    return (f'<div id="tools_section" style="display: none">'
            + "".join(tool_control(start + f.key, f) for f in fields)
            + f'<div id="{start}plan_preview"></div>'
            f'<div id="{start}plan_spec"><div data-keys="{keys}"></div></div>'
            f'<div id="{start}plan_request"><textarea></textarea></div>'
            f'<button id="{start}plan_button">plan</button></div>')


def static_page(tab: str = "txt2img") -> str:
    prefix = f"script_{tab}_tile_sampler_"
    tools = f"script_{tab}_tile_sampler_tools_"
    ours = "".join(control(prefix + f.key, f) for f in P.FIELDS)
    host = "".join(f'<div id="{tab}_{k}"><input type="number" value="{v}"></div>'
                   for k, v in (("width", 1536), ("height", 1024), ("steps", 20),
                                ("batch_size", 1), ("batch_count", 2), ("hr_scale", 2),
                                ("hr_resize_x", 0), ("hr_resize_y", 0), ("hires_steps", 0),
                                ("denoising_strength", 0.7)))
    keys = " ".join(f.key for f in P.FIELDS)
    with open(os.path.join(ROOT, "javascript", "tilesampler.js"), encoding="utf-8") as f:
        script = f.read()
    return f"""<!doctype html><html><body>
{host}<div id="{tab}_hr"><span><input type="checkbox" id="{tab}_hr-visible-checkbox"></span></div>
{ours}
<div id="{prefix}plan_spec"><div data-keys="{keys}"></div></div>
<div id="{prefix}plan_request"><textarea></textarea></div>
<button id="{prefix}plan_button">plan</button>
{tools_section(tab)}
<script>
  window.loaded = []; window.updated = []; window.clicks = []; window.inputs = 0;
  window.toolClicks = [];
  function gradioApp() {{ return document; }}
  function onUiLoaded(f) {{ window.loaded.push(f); }}
  function onAfterUiUpdate(f) {{ window.updated.push(f); }}
  function updateInput(target) {{ window.inputs += 1; }}
  document.getElementById("{prefix}plan_button").addEventListener("click", () =>
      window.clicks.push(document.querySelector("#{prefix}plan_request textarea").value));
  document.getElementById("{tools}plan_button").addEventListener("click", () =>
      window.toolClicks.push(document.querySelector("#{tools}plan_request textarea").value));
</script>
<script>{script}</script>
</body></html>"""


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    path = chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_content(static_page())
        yield page
        browser.close()


def test_the_request_has_the_pages_values_and_the_plan_takes_it(page):
    request = json.loads(page.evaluate("tilesamplerPlanRequest('txt2img')"))
    assert request["tab"] == "txt2img"
    assert (request["width"], request["height"], request["steps"], request["n_iter"]) == (1536, 1024, 20, 2)
    assert request["enable_hr"] is False
    assert set(request["args"]) == {f.key for f in P.FIELDS}
    assert request["args"]["resample_tile_size"] == 1024 and request["args"]["hypertile"] is False
    plan = plan_job(request)
    assert plan["resample"]["tiles"] == 2 and plan["images"] == 2


def test_a_change_sends_one_debounced_request_through_the_hidden_button(page):
    page.evaluate("window.loaded.forEach(f => f())")
    page.wait_for_function("window.clicks.length === 1", timeout=5000)
    box = page.locator("#script_txt2img_tile_sampler_resample_tile_size input[type=number]")
    for value in ("600", "700", "512"):          # typing: one request after the last change
        box.fill(value)
    page.wait_for_function("window.clicks.length === 2", timeout=5000)
    page.wait_for_timeout(600)
    clicks = page.evaluate("window.clicks")
    assert len(clicks) == 2 and page.evaluate("window.inputs") == 2
    assert json.loads(clicks[-1])["args"]["resample_tile_size"] == 512
    page.evaluate("window.updated.forEach(f => f())")   # nothing changed: nothing sent
    page.wait_for_timeout(600)
    assert len(page.evaluate("window.clicks")) == 2


def test_the_script_tools_preview_asks_only_while_the_tools_are_shown_and_shows_the_answer(page):
    page.evaluate("window.loaded.forEach(f => f())")
    page.wait_for_timeout(600)
    assert page.evaluate("tilesamplerToolPlanRequest('txt2img')") is None     # another Script
    assert page.evaluate("window.toolClicks") == []
    page.evaluate("document.getElementById('tools_section').style.display = 'block'")
    factor = page.locator("#script_txt2img_tile_sampler_tools_upscale_by input[type=number]")
    factor.fill("2")
    page.wait_for_function("window.toolClicks.length === 1", timeout=5000)
    request = json.loads(page.evaluate("window.toolClicks[0]"))
    assert request["script_name"] == "Tile Sampler tools" and request["tab"] == "txt2img"
    args = request["script_args"][0]
    assert args["tool"] == "Refine & upscale" and args["upscale_by"] == 2
    assert set(args) == {f.key for f in O.TOOL_FIELDS} - {"mask", "img2img_refine", "use_inpaint_mask"}
    assert set(request["args"]) == {f.key for f in P.FIELDS}       # the accordion's too
    # the server's answer (the hidden button's output) is what the preview shows
    plan = plan_job(request, seconds_per_unit=0.02)
    page.evaluate("([id, html]) => { document.getElementById(id).innerHTML = html; }",
                  ["script_txt2img_tile_sampler_tools_plan_preview", tool_preview_html(plan)])
    text = page.inner_text("#script_txt2img_tile_sampler_tools_plan_preview")
    assert "Refine & upscale: base 14 + refiner 16 steps at 1536×1024 → upscale to 3072×2048" in text
    assert "U-Net calls" in text and "a plain run" in text and "ETA" in text
    page.locator("#script_txt2img_tile_sampler_tools_tool input[value='Mask grid']").check()
    page.wait_for_function("window.toolClicks.length === 2", timeout=5000)
    grid = json.loads(page.evaluate("window.toolClicks[1]"))
    assert grid["script_args"][0]["tool"] == "Mask grid"
    assert plan_job(grid)["tool"]["name"] == "mask_grid"
