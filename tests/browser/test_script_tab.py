"""The Script tab's "Tile Sampler tools" in a real browser (see conftest.py; opt-in)."""
from __future__ import annotations

import os
import time

import pytest

from lib_tilesampler.tools import options as O
from page import Page

TABS = ("txt2img", "img2img")
TXT2IMG_HIDDEN = ("img2img_refine", "use_inpaint_mask")   # img2img only: hidden, no elem_id
STEPS = 2

# A Mask grid job as small as it gets (256 x 256, 2 steps, a 1 x 2 grid) with every cheap
# option of the tool changed from its default.
MASK_GRID_JOB = {"tool": "Mask grid", "rows": 1, "columns": 2, "mode": "Fork then Sample",
                 "add_noise": True, "seed_per_cell": True, "start_step": 0, "end_step": -1,
                 "leftover_noise": False, "feather": 8, "cells_per_batch": 2}

# Refine & upscale values, none of them a default, for an infotext as the tool writes it.
REFINE_UPSCALE_VALUES = {
    "tool": "refine_upscale", "img2img_refine": True, "base_steps": 20, "base_stop": 9,
    "base_cfg": 5.0, "base_sampler": "Euler", "base_scheduler": "Karras", "refiner_steps": 24,
    "refiner_start": 10, "refiner_cfg": 4.0, "refiner_sampler": "Euler a",
    "refiner_scheduler": "Uniform", "upscaler": "Lanczos", "upscale_by": 1.5,
    "tiler_denoise": 0.4, "tiler_model": "refiner", "tiler_mode": "fused", "tiler_tile_size": 512,
    "tiler_overlap": 64, "tiler_batch": 2, "tiler_steps": 12, "tiler_cfg": 5.5,
    "tiler_sampler": "Euler", "tiler_scheduler": "Karras", "tiled_only": True,
}


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-6
    return a == b


def shown_value(page: Page, tab: str, key: str):
    shown = page.read_id(page.tools_id(tab, key))
    return None if shown is None else shown["value"]


def open_tools(page: Page, tab: str) -> None:
    page.switch_to(tab)
    page.select_script(tab, O.TITLE)
    assert page.visible(page.tools_id(tab, "tool")), "the tool selector is not shown"


def shoot(page: Page, shots, tab: str, name: str) -> None:
    if shots:
        box = page.page.locator(f"#{tab}_script_container").first
        box.scroll_into_view_if_needed()
        box.screenshot(path=os.path.join(shots, name))


def expected_shown(field) -> object:
    return O.TOOL_LABELS[field.default] if field.key == "tool" else field.default


@pytest.mark.parametrize("tab", TABS)
def test_every_tool_control_shows_its_documented_default_and_range(page, tab):
    open_tools(page, tab)
    wrong = []
    for f in O.TOOL_FIELDS:
        if tab == "txt2img" and f.key in TXT2IMG_HIDDEN:
            continue
        shown = page.read_id(page.tools_id(tab, f.key))
        if shown is None:
            wrong.append(f"{f.key}: not on the page")
            continue
        if f.key == "mask":
            continue                    # an empty image upload
        if not same(shown["value"], expected_shown(f)):
            wrong.append(f"{f.key}: shows {shown['value']!r}, default {expected_shown(f)!r}")
        if shown["kind"] == "slider" and (shown["min"], shown["max"], shown["step"]) != \
                (f.minimum, f.maximum, f.step):
            wrong.append(f"{f.key}: range {shown['min']}-{shown['max']} step {shown['step']}, "
                         f"documented {f.minimum}-{f.maximum} step {f.step}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("tab", TABS)
def test_switching_the_tool_shows_its_group(page, tab, shots):
    open_tools(page, tab)
    group = {tool: page.tools_id(tab, f"{tool}_group") for tool in O.TOOLS}
    assert page.visible(group["refine_upscale"]) and not page.visible(group["mask_grid"])
    shoot(page, shots, tab, f"script-refine-upscale-{tab}.png")
    page.set_radio(page.tools_id(tab, "tool"), O.TOOL_LABELS["mask_grid"])
    assert page.visible(group["mask_grid"]) and not page.visible(group["refine_upscale"])
    assert page.visible(page.tools_id(tab, "mask"))
    shoot(page, shots, tab, f"script-mask-grid-{tab}.png")
    page.set_radio(page.tools_id(tab, "tool"), O.TOOL_LABELS["refine_upscale"])
    assert page.visible(group["refine_upscale"]) and not page.visible(group["mask_grid"])


def infotext_line(values: dict) -> str:
    """The parameters line of an image the tool made (the host's own keys, then the tool's)."""
    entries = {"Steps": 4, "Sampler": "Euler", "CFG scale": 7, "Seed": 1, "Size": "256x256",
               "Script": O.TITLE, **O.tool_infotext({**O.tool_defaults(), **values})}
    return "a tiled test\n" + ", ".join(f"{k}: {v}" for k, v in entries.items())


@pytest.mark.parametrize("tab", TABS)
def test_read_generation_parameters_restores_refine_and_upscale(page, tab):
    page.switch_to(tab)
    assert page.script_shown(tab) == "None"
    page.paste(tab, infotext_line(REFINE_UPSCALE_VALUES))
    assert page.script_shown(tab) == O.TITLE
    wrong = {}
    for key, value in REFINE_UPSCALE_VALUES.items():
        if tab == "txt2img" and key in TXT2IMG_HIDDEN:
            continue
        expected = O.TOOL_LABELS[value] if key == "tool" else value
        shown = shown_value(page, tab, key)
        if not same(shown, expected):
            wrong[key] = (shown, expected)
    assert not wrong, f"(shown, in the infotext) {wrong}"
    assert page.visible(page.tools_id(tab, "refine_upscale_group"))


def mask_png(path: str) -> str:
    from PIL import Image, ImageDraw
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    mask.save(path)
    return path


def set_mask_grid_job(page: Page, tab: str, mask: str) -> None:
    page.set_number(f"{tab}_width", 256)
    page.set_number(f"{tab}_height", 256)
    page.set_number(f"{tab}_steps", STEPS)
    open_tools(page, tab)
    page.set_radio(page.tools_id(tab, "tool"), MASK_GRID_JOB["tool"])
    for key, value in MASK_GRID_JOB.items():
        elem_id = page.tools_id(tab, key)
        if key == "tool":
            continue
        field = O.TOOL_FIELDS_BY_KEY[key]
        if field.kind is bool:
            page.set_checkbox(elem_id, value)
        elif field.choices:
            page.set_dropdown(elem_id, value)
        else:
            page.set_number(elem_id, value)
    page.upload(page.tools_id(tab, "mask"), mask)
    wrong = {k: (shown_value(page, tab, k), v) for k, v in MASK_GRID_JOB.items()
             if not same(shown_value(page, tab, k), v)}
    assert not wrong, wrong


def test_generate_with_mask_grid_returns_a_cell_each_and_paste_restores_it(page, shots, tmp_path):
    tab = "txt2img"
    set_mask_grid_job(page, tab, mask_png(str(tmp_path / "mask.png")))
    shoot(page, shots, tab, "script-mask-grid-job.png")
    before = set(page.gallery(tab))
    texts, image = page.generate(tab, timeout=600)
    time.sleep(1)
    new = [src for src in page.gallery(tab) if src not in before]
    assert len(new) >= MASK_GRID_JOB["columns"], new     # one output per cell (and a grid)
    infotext = page.infotext_of(image)
    assert f"Script: {O.TITLE}" in infotext and "MG columns: 2" in infotext, infotext
    if shots:
        with open(os.path.join(shots, "mask-grid-infotext.txt"), "w") as f:
            f.write(infotext + "\n")

    # Read generation parameters of that image on a fresh page: the tool comes back.
    page.page.reload()
    page.open()
    assert page.script_shown(tab) == "None"
    page.paste(tab, infotext)
    assert page.script_shown(tab) == O.TITLE
    wrong = {k: (shown_value(page, tab, k), v) for k, v in MASK_GRID_JOB.items()
             if not same(shown_value(page, tab, k), v)}
    assert not wrong, f"(shown, in the infotext) {wrong}"
    assert page.visible(page.tools_id(tab, "mask_grid_group"))
