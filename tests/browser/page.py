"""Driving the WebUI page: the accordion's controls by their elem_ids (the same on A1111
1.10 with gradio 3 and Forge 2 with gradio 4), the preview, Generate, paste."""
from __future__ import annotations

import html
import io
import json
import time
from typing import Any, Optional

from lib_tilesampler import params as P

ACCORDIONS = ("enabled", "hypertile", "resample")

READ_JS = """(id) => {
    const root = gradioApp();
    const header = root.getElementById(id + "-visible-checkbox");
    if (header) return {kind: "accordion", value: header.checked};
    const el = root.getElementById(id);
    if (!el) return null;
    const radios = el.querySelectorAll("input[type=radio]");
    if (radios.length) {
        const on = el.querySelector("input[type=radio]:checked");
        return {kind: "radio", value: on ? on.value : null};
    }
    const box = el.querySelector("input[type=checkbox]");
    if (box) return {kind: "checkbox", value: box.checked};
    const range = el.querySelector("input[type=range]");
    const number = el.querySelector("input[type=number]");
    if (number) return {kind: range ? "slider" : "number", value: Number(number.value),
                        min: range ? Number(range.min) : null, max: range ? Number(range.max) : null,
                        step: range ? Number(range.step) : null};
    const text = el.querySelector("textarea, input");
    return text ? {kind: "text", value: text.value} : null;
}"""


class Page:
    def __init__(self, browser: Any, base_url: str, width: int = 1400, height: int = 1800) -> None:
        self.base_url = base_url
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self) -> "Page":
        self.page.goto(self.base_url + "/")
        self.page.wait_for_selector("#txt2img_prompt textarea", timeout=300_000)
        self.page.wait_for_selector("#script_txt2img_tile_sampler_enabled", state="attached",
                                    timeout=60_000)
        time.sleep(3)        # gradio wires its events after the page shows
        return self

    def close(self) -> None:
        self.page.close()

    # ------------------------------------------------------------------ controls
    @staticmethod
    def elem_id(tab: str, key: str) -> str:
        return f"script_{tab}_tile_sampler_{key}"

    def switch_to(self, tab: str) -> None:
        self.page.evaluate(f"switch_to_{tab}()")
        time.sleep(1)

    def read(self, tab: str, key: str) -> Optional[dict]:
        return self.page.evaluate(READ_JS, self.elem_id(tab, key))

    def read_id(self, elem_id: str) -> Optional[dict]:
        return self.page.evaluate(READ_JS, elem_id)

    def values(self, tab: str) -> dict:
        return {f.key: (self.read(tab, f.key) or {}).get("value") for f in P.FIELDS}

    def open_accordion(self, tab: str, key: str) -> None:
        """Click the accordion's header, as a user opens it."""
        header = self.page.locator(f"#{self.elem_id(tab, key)} .label-wrap").first
        header.scroll_into_view_if_needed()
        header.click()
        time.sleep(0.7)

    def set_number(self, elem_id: str, value: Any) -> None:
        box = self.page.locator(f"#{elem_id} input[type=number]").first
        box.scroll_into_view_if_needed()
        box.fill(str(value))
        box.press("Tab")
        time.sleep(0.3)

    def set_checkbox(self, elem_id: str, value: bool) -> None:
        box = self.page.locator(f"#{elem_id} input[type=checkbox]").first
        box.scroll_into_view_if_needed()
        box.set_checked(bool(value))
        time.sleep(0.2)

    def set_dropdown(self, elem_id: str, value: str) -> None:
        box = self.page.locator(f"#{elem_id} input").first
        box.scroll_into_view_if_needed()
        box.click()
        option = self.page.locator(f'#{elem_id} li[aria-label="{value}"]').first
        option.click()
        time.sleep(0.3)

    def set_option(self, tab: str, key: str, value: Any) -> None:
        field = P.FIELDS_BY_KEY[key]
        elem_id = self.elem_id(tab, key)
        if key in ACCORDIONS:
            if bool((self.read(tab, key) or {}).get("value")) != bool(value):
                self.open_accordion(tab, key)
        elif field.kind is bool:
            self.set_checkbox(elem_id, value)
        elif field.kind is str:
            self.set_dropdown(elem_id, value)
        else:
            self.set_number(elem_id, value)

    # ------------------------------------------------------------------ Script tab
    @staticmethod
    def tools_id(tab: str, key: str) -> str:
        return f"script_{tab}_tile_sampler_tools_{key}"

    def select_script(self, tab: str, title: str) -> None:
        """Pick ``title`` in the tab's Script dropdown (its id is the same on both tabs)."""
        box = self.page.locator(f"#{tab}_script_container #script_list input").first
        box.scroll_into_view_if_needed()
        box.click()
        self.page.locator(f'#{tab}_script_container #script_list li[aria-label="{title}"]').first.click()
        time.sleep(1)

    def script_shown(self, tab: str) -> Optional[str]:
        return self.page.locator(f"#{tab}_script_container #script_list input").first.input_value()

    def set_radio(self, elem_id: str, value: str) -> None:
        radio = self.page.locator(f'#{elem_id} input[type=radio][value="{value}"]').first
        radio.scroll_into_view_if_needed()
        radio.check()
        time.sleep(0.7)

    def visible(self, elem_id: str) -> bool:
        return self.page.locator(f"#{elem_id}").first.is_visible()

    def upload(self, elem_id: str, path: str) -> None:
        self.page.locator(f"#{elem_id} input[type=file]").first.set_input_files(path)
        time.sleep(1.5)

    def gallery(self, tab: str) -> list[str]:
        return self.page.eval_on_selector_all(f"#{tab}_gallery img", "els => els.map(e => e.src)")

    # ------------------------------------------------------------------ preview
    def shown_plan(self, tab: str) -> Optional[dict]:
        """The plan the cost line shows (its ``data-plan``), or None."""
        data = self.page.evaluate(
            "(id) => { const el = gradioApp().querySelector('#' + id + ' [data-plan]');"
            " return el ? el.getAttribute('data-plan') : null; }",
            self.elem_id(tab, "cost_preview"))
        return json.loads(data) if data else None

    def preview_text(self, tab: str, group: str) -> str:
        return self.page.locator(f"#{self.elem_id(tab, group + '_preview')}").last.inner_text()

    def plan_request(self, tab: str) -> dict:
        return json.loads(self.page.evaluate(f"tilesamplerPlanRequest('{tab}')"))

    def wait_for_plan(self, tab: str, check, timeout: float = 30) -> dict:
        end = time.time() + timeout
        plan = None
        while time.time() < end:
            plan = self.shown_plan(tab)
            if plan is not None and check(plan):
                return plan
            time.sleep(0.3)
        raise AssertionError(f"the preview did not show the expected plan in {timeout} s: {plan}")

    # ------------------------------------------------------------------ jobs
    def generate(self, tab: str, timeout: float = 1200) -> tuple[list[str], str]:
        """Click Generate; return the progress texts seen and the image's URL."""
        gallery = f"#{tab}_gallery img"
        before = set(self.page.eval_on_selector_all(gallery, "els => els.map(e => e.src)"))
        self.page.locator(f"#{tab}_generate").click()
        texts: list[str] = []
        end = time.time() + timeout
        while time.time() < end:
            text = self.page.evaluate(
                "() => Array.from(gradioApp().querySelectorAll('.progressDiv')).map(e => e.innerText).join(' | ')")
            if text and (not texts or texts[-1] != text):
                texts.append(text)
            srcs = self.page.eval_on_selector_all(gallery, "els => els.map(e => e.src)")
            busy = self.page.evaluate("() => gradioApp().querySelectorAll('.progressDiv').length")
            new = [s for s in srcs if s not in before]
            if new and not busy:
                return texts, new[0]
            time.sleep(0.2)
        raise AssertionError(f"no image after {timeout} s; progress seen: {texts}")

    def infotext_of(self, url: str) -> str:
        """The 'parameters' text of the PNG at ``url``."""
        from PIL import Image
        body = self.page.request.get(url).body()
        return Image.open(io.BytesIO(body)).info.get("parameters", "")

    def paste(self, tab: str, infotext: str) -> None:
        """Put ``infotext`` in the prompt box and click *Read generation parameters*."""
        prompt = self.page.locator(f"#{tab}_prompt textarea")
        prompt.fill(infotext)
        button = self.page.locator(f"#{tab}_tools #paste")
        (button if button.count() else self.page.locator("#paste")).first.click()
        time.sleep(4)


def unescape(value: str) -> str:
    return html.unescape(value)
