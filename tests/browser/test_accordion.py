"""The Tile Sampler accordion in a real browser (see conftest.py; opt-in)."""
from __future__ import annotations

import json
import os
import time

import pytest

from lib_tilesampler import params as P
from page import ACCORDIONS, Page

TABS = ("txt2img", "img2img")
STEPS = int(os.environ.get("TILESAMPLER_BROWSER_STEPS", "4"))

# A job that every option of ours changes from its default (and that a tiny CPU model runs
# in seconds, Forge's full-size SD1.5 in a few minutes): 384 x 256 from 256 px tiles.
JOB_SIZE = (384, 256)
JOB_OPTIONS = {
    "enabled": True, "hypertile": True, "hypertile_tile_size": 128, "hypertile_swap_size": 3,
    "hypertile_max_depth": 1, "hypertile_scale_depth": True, "hypertile_vae": True,
    "resample": True, "resample_mode": "independent", "resample_where": "after",
    "resample_weights": "uniform", "resample_tile_size": 256, "resample_overlap": 64,
    "resample_batch": 2, "resample_denoise": 0.5, "resample_steps": 2 * STEPS, "resample_cfg": 6.5,
    "resample_sampler": "Euler", "resample_scheduler": "Karras", "resample_seed": 7,
}


def shoot(page: Page, shots, tab: str, name: str) -> None:
    if shots:
        accordion = page.page.locator(f"#{page.elem_id(tab, 'enabled')}").first
        accordion.scroll_into_view_if_needed()
        accordion.screenshot(path=os.path.join(shots, name))


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-6
    return a == b


@pytest.mark.parametrize("tab", TABS)
def test_every_control_shows_its_documented_default_and_range(page, tab):
    page.switch_to(tab)
    wrong = []
    for f in P.FIELDS:
        shown = page.read(tab, f.key)
        if shown is None:
            wrong.append(f"{f.key}: not on the page")
            continue
        if not same(shown["value"], f.default):
            wrong.append(f"{f.key}: shows {shown['value']!r}, default {f.default!r}")
        if shown["kind"] == "slider" and (shown["min"], shown["max"], shown["step"]) != \
                (f.minimum, f.maximum, f.step):
            wrong.append(f"{f.key}: range {shown['min']}-{shown['max']} step {shown['step']}, "
                         f"documented {f.minimum}-{f.maximum} step {f.step}")
        if f.key in ACCORDIONS and shown["kind"] != "accordion":
            wrong.append(f"{f.key}: not an accordion")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("tab", TABS)
def test_opening_the_accordions_turns_them_on(page, tab, shots):
    page.switch_to(tab)
    for key in ACCORDIONS:
        assert page.read(tab, key)["value"] is False
        page.open_accordion(tab, key)
        assert page.read(tab, key)["value"] is True, key
        hidden = page.page.evaluate(
            "(id) => gradioApp().querySelector('#' + id + '-checkbox input').checked",
            page.elem_id(tab, key))
        assert hidden is True, f"{key}: the script's own checkbox did not follow"
    assert page.plan_request(tab)["args"]["resample"] is True
    page.wait_for_plan(tab, lambda plan: plan["resample"]["enabled"])
    shoot(page, shots, tab, f"accordion-{tab}.png")


def test_the_preview_follows_size_and_tile_and_equals_the_route(page, shots):
    tab = "txt2img"
    for key in ACCORDIONS:
        page.open_accordion(tab, key)
    page.set_number("txt2img_width", 1536)
    page.set_number("txt2img_height", 1024)
    page.set_number(page.elem_id(tab, "resample_tile_size"), 512)
    page.set_number(page.elem_id(tab, "hypertile_max_depth"), 1)
    shown = page.wait_for_plan(tab, lambda p: (p["width"], p["height"]) == (1536, 1024)
                               and p["resample"].get("tile", [0])[0] <= 512
                               and len(p["hypertile"]["stages"][0]["levels"]) == 2)
    request = page.plan_request(tab)
    assert request["width"] == 1536 and request["args"]["resample_tile_size"] == 512
    answer = page.page.request.post(page.base_url + "/tilesampler/v1/plan",
                                    data=json.dumps(request),
                                    headers={"Content-Type": "application/json"})
    assert answer.status == 200, answer.text()
    route = answer.json()
    for plan in (shown, route):
        plan["total"].pop("eta_seconds"), plan["total"].pop("seconds_per_unit")
    assert shown == route
    text = page.preview_text(tab, "resample")
    ny, nx = route["resample"]["grid"]
    tw, th = route["resample"]["tile"]
    assert f"{ny}\u00d7{nx} tiles of {tw}\u00d7{th} px" in text
    assert "level 1:" in page.preview_text(tab, "hypertile")
    shoot(page, shots, tab, "accordion-preview-1536x1024.png")


def set_job(page: Page, tab: str) -> None:
    page.switch_to(tab)
    page.set_number(f"{tab}_width", JOB_SIZE[0])
    page.set_number(f"{tab}_height", JOB_SIZE[1])
    page.set_number(f"{tab}_steps", STEPS)
    for key, value in JOB_OPTIONS.items():
        page.set_option(tab, key, value)
    shown = page.values(tab)
    assert {k: shown[k] for k in JOB_OPTIONS} == pytest.approx(JOB_OPTIONS), shown


def assert_restored(page: Page, tab: str) -> None:
    shown = page.values(tab)
    wrong = {k: (shown[k], v) for k, v in JOB_OPTIONS.items() if not same(shown[k], v)}
    assert not wrong, f"{tab}: (shown, in the infotext) {wrong}"


def test_generate_shows_tiles_and_every_option_comes_back_from_the_infotext(page, shots):
    tab = "txt2img"
    set_job(page, tab)
    page.wait_for_plan(tab, lambda p: p["resample"].get("tiles") == 2)
    shoot(page, shots, tab, "accordion-job.png")
    texts, image = page.generate(tab)
    assert any("tile" in t for t in texts), f"progress texts seen: {texts}"
    infotext = page.infotext_of(image)
    for field in P.FIELDS:
        if field.group:
            assert f"{field.infotext}: " in infotext, (field.infotext, infotext)
    if shots:
        with open(os.path.join(shots, "progress-texts.txt"), "w") as f:
            f.write("\n".join(texts) + "\n\n" + infotext + "\n")

    # Send to img2img: the img2img tab gets every option.
    page.page.locator(f"#{tab}_send_to_img2img").first.click()
    time.sleep(5)
    assert_restored(page, "img2img")

    # Read generation parameters on a fresh page (defaults everywhere).
    page.page.reload()
    page.open()
    assert page.values(tab)["resample"] is False
    page.paste(tab, infotext)
    assert_restored(page, tab)
    shoot(page, shots, tab, "accordion-pasted.png")
