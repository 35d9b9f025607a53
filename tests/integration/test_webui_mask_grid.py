"""The Script tab's mask grid through the HTTP API of a real WebUI (A1111 1.10 or Forge 2):
both modes in img2img and txt2img on a 2x3 grid, every output equal to the source outside
its cell (exact pixels) and different inside, named == positional args, the 422s, the
KSamplerAdvanced controls, HyperTile inside, infotext restore, Interrupt.

Opt-in: TILESAMPLER_WEBUI_URL. 384x256 images, cells of 128x128 px, TILESAMPLER_IT_STEPS
steps (2 keeps Forge on a CPU at a few minutes per test). img2img answers depend on the
request before them (the WebUI's VAE encode draws from torch's global generator), so
requests compared with each other follow the same txt2img request.
"""
import base64
import copy
import io
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from lib_tilesampler.tools.options import TOOL_FIELDS
from webui import TITLE

TOOLS = "tile sampler tools"
STEPS = int(os.environ.get("TILESAMPLER_IT_STEPS", "4"))
WIDTH, HEIGHT, ROWS, COLUMNS = 384, 256, 2, 3
CELL_H, CELL_W = HEIGHT // ROWS, WIDTH // COLUMNS
MODES = ("Sample then Fork", "Fork then Sample")
BASE = {"prompt": "a lighthouse on a cliff", "negative_prompt": "blurry", "steps": STEPS,
        "width": WIDTH, "height": HEIGHT, "seed": 77, "sampler_name": "Euler", "cfg_scale": 5}


def png_base64(array, data_url=False) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, "PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + text if data_url else text


def cell_mask(size=(CELL_H, CELL_W)) -> np.ndarray:
    """White square in the middle of the cell (regenerate), black around it (keep)."""
    mask = np.zeros(size, np.uint8)
    h, w = size
    mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
    return mask


MASK = png_base64(cell_mask())


def named(**options):
    return dict({"tool": "mask_grid", "mask": MASK, "rows": ROWS, "columns": COLUMNS}, **options)


def payload(args, **overrides):
    body = copy.deepcopy(BASE)
    body.update(overrides)
    if args is not None:
        body.update(script_name=TOOLS, script_args=args)
    return body


def outputs(answer):
    """The cell images of an answer (after the grid, if the WebUI returned one)."""
    first = answer.info["index_of_first_image"]
    return list(range(first, len(answer.images)))


def in_cell(k: int) -> np.ndarray:
    inside = np.zeros((HEIGHT, WIDTH), bool)
    row, column = divmod(k % (ROWS * COLUMNS), COLUMNS)
    inside[row * CELL_H:(row + 1) * CELL_H, column * CELL_W:(column + 1) * CELL_W] = True
    return inside


def assert_forked(answer, source: np.ndarray, indexes) -> None:
    """Output k is the source outside cell k exactly, and differs from it inside."""
    assert len(indexes) % (ROWS * COLUMNS) == 0 and indexes, indexes
    for k, index in enumerate(indexes):
        pixels = answer.pixels(index)
        inside = in_cell(k)
        outside_diff = np.argwhere((pixels[~inside] != source[~inside]).any(axis=-1))
        assert outside_diff.size == 0, f"output {k}: {len(outside_diff)} pixels outside its cell differ"
        assert (pixels[inside] != source[inside]).any(), f"output {k}: nothing changed in its cell"
        row, column = divmod(k % (ROWS * COLUMNS), COLUMNS)
        infotext = answer.info["infotexts"][index]
        assert f"Mask grid cell: r{row + 1} c{column + 1} of {ROWS}×{COLUMNS}" in infotext, infotext
        assert "Script: Tile Sampler tools" in infotext and "Tile Sampler tool: mask_grid" in infotext


def pixels_of(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))) as image:
        return np.asarray(image.convert("RGB")).copy()


@pytest.fixture(scope="module")
def source(webui):
    answer = webui.call("/sdapi/v1/txt2img", payload(None, seed=5))
    assert answer.status == 200, answer.body
    return answer.body["images"][0]


def img2img(webui, source, args, **overrides):
    """An img2img request after the same txt2img request (see the module's docstring)."""
    webui.call("/sdapi/v1/txt2img", payload(None, width=64, height=64, steps=1))
    return webui.call("/sdapi/v1/img2img", payload(args, init_images=[source], denoising_strength=0.75,
                                                    **overrides))


def last_job(webui):
    answer = webui.call("/tilesampler/v1/jobs/last")
    assert answer.status == 200, answer.body
    return answer.body


@pytest.mark.parametrize("mode", MODES)
def test_img2img_gives_one_variation_per_cell_equal_to_the_source_outside_it(webui, source, mode):
    answer = img2img(webui, source, [named(mode=mode)])
    assert answer.status == 200, answer.body
    indexes = outputs(answer)
    assert len(indexes) == ROWS * COLUMNS
    assert_forked(answer, pixels_of(source), indexes)
    assert f"MG mode: {mode}" in answer.info["infotexts"][indexes[0]]


@pytest.mark.parametrize("mode", MODES)
def test_txt2img_returns_the_source_first_then_its_variations(webui, mode):
    answer = webui.call("/sdapi/v1/txt2img", payload([named(mode=mode, seed_per_cell=True)]))
    assert answer.status == 200, answer.body
    indexes = outputs(answer)
    assert len(indexes) == 1 + ROWS * COLUMNS
    source = answer.pixels(indexes[0])
    assert "Mask grid source: True" in answer.info["infotexts"][indexes[0]]
    assert_forked(answer, source, indexes[1:])
    seeds = answer.info["all_seeds"]
    if mode == "Fork then Sample":     # a seed per cell; Sample then Fork samples once
        assert seeds == [77] + [77 + c for c in range(ROWS * COLUMNS)]
    else:
        assert seeds == [77] * (1 + ROWS * COLUMNS)


def positional(webui, tab, values):
    """All the script's args in the UI order, from the WebUI's own script-info defaults."""
    info = [s for s in webui.call("/sdapi/v1/script-info").body
            if s["name"] == TOOLS and s["is_img2img"] == (tab == "img2img")]
    assert len(info) == 1
    args = [a["value"] for a in info[0]["args"]]
    assert [a["label"] for a in info[0]["args"]][:len(TOOL_FIELDS)] == [f.label for f in TOOL_FIELDS] \
        or len(args) == len(TOOL_FIELDS)
    for i, f in enumerate(TOOL_FIELDS):
        if f.key in values:
            args[i] = values[f.key]
    return args


def test_named_and_positional_args_give_the_same_images(webui, source):
    options = named(mode="Fork then Sample", cells_per_batch=3, feather=4)
    by_name = img2img(webui, source, [options])
    by_position = img2img(webui, source, positional(webui, "img2img", dict(options, tool="Mask grid")))
    assert by_name.status == by_position.status == 200, (by_name.body, by_position.body)
    assert len(by_name.images) == len(by_position.images)
    for index in outputs(by_name):
        assert by_name.digest(index) == by_position.digest(index)


BIG = io.BytesIO()
Image.new("1", (20000, 8)).save(BIG, "PNG")


@pytest.mark.parametrize("options,fields,needle", [
    ({"mask": "not base64 at all!"}, {}, "not valid base64"),
    ({"mask": "data:image/png,abc"}, {}, "not base64"),
    ({"mask": base64.b64encode(b"plain text").decode()}, {}, "not an image"),
    ({"mask": base64.b64encode(BIG.getvalue()).decode()}, {}, "too large (20000×8 px)"),
    ({"mask": ""}, {}, "no cell mask"),
    ({"rows": 17}, {}, "rows must be at most 16"),
    ({"columns": 0}, {}, "columns must be at least 1"),
    ({"columns": 5}, {}, "does not split into 5 columns"),
    ({"feather": 100}, {}, "feather of 100 px does not fit"),
    ({"start_step": 1, "end_step": 1}, {}, "must be after start at step"),
    ({"start_step": 1}, {"sampler_name": "DDIM"}, "takes a sigma schedule"),
    ({"mode": "Fork"}, {}, "mode must be one of"),
    ({"rows": 1.5}, {}, "rows must be a whole number"),
], ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_a_request_that_cannot_run_gets_a_422_with_a_sentence_before_any_work(webui, source, tab,
                                                                              options, fields, needle):
    extra = {"init_images": [source]} if tab == "img2img" else {}
    before = started(webui)
    answer = webui.call(f"/sdapi/v1/{tab}", payload([named(**options)], **extra, **fields))
    assert answer.status == 422, answer.body
    assert needle in answer.body["detail"] and answer.body["detail"].startswith("Tile Sampler tools: ")
    assert started(webui) == before   # no job started


def started(webui):
    """When the WebUI last started a job (its state's timestamp, set as a job begins)."""
    return webui.call("/sdapi/v1/progress?skip_current_image=true").body["state"]["job_timestamp"]


def test_the_step_controls_run_exactly_their_steps_and_leftover_noise_shows(webui, source):
    """Start 1, end 3: 2 denoiser calls per sampling (counted by the mask grid's job, with
    HyperTile's counts of the accordion's job inside it); Fork then Sample in 2 batches of
    3 cells makes it 4; leftover noise
    changes the cells, never what is outside them."""
    # A 4-step schedule whatever TILESAMPLER_IT_STEPS says: with 2, step 3 would be past the end.
    hypertile = {"alwayson_scripts": {TITLE: {"args": [{"hypertile": True, "hypertile_tile_size": 64}]}},
                 "steps": 4}
    steps = dict(start_step=1, end_step=3)
    clean = img2img(webui, source, [named(**steps)], **hypertile)
    assert clean.status == 200, clean.body
    assert last_job(webui)["stages"]["variations"]["evaluations"] == 2
    assert last_job(webui)["hypertile"]["tiled"] > 0
    noisy = img2img(webui, source, [named(leftover_noise=True, **steps)], **hypertile)
    assert noisy.status == 200, noisy.body
    assert_forked(noisy, pixels_of(source), outputs(noisy))
    assert any(clean.digest(i) != noisy.digest(i) for i in outputs(clean))
    batched = img2img(webui, source, [named(mode="Fork then Sample", cells_per_batch=3, **steps)], **hypertile)
    assert batched.status == 200, batched.body
    assert last_job(webui)["stages"]["variations"]["evaluations"] == 4
    quiet = img2img(webui, source, [named(add_noise=False)], **hypertile)
    assert quiet.status == 200, quiet.body
    assert_forked(quiet, pixels_of(source), outputs(quiet))


def test_the_accordions_resample_runs_on_the_source_only(webui):
    accordion = {"hypertile": True, "hypertile_tile_size": 64, "resample": True, "resample_tile_size": 256,
                 "resample_overlap": 64, "resample_denoise": 0.3, "resample_steps": STEPS}
    answer = webui.call("/sdapi/v1/txt2img", payload([named()], alwayson_scripts={TITLE: {"args": [accordion]}}))
    assert answer.status == 200, answer.body
    indexes = outputs(answer)
    texts = [answer.info["infotexts"][i] for i in indexes]
    assert "Resample: True" in texts[0] and "HyperTile: True" in texts[0]
    assert all("Resample: True" not in t and "HyperTile: True" in t for t in texts[1:])
    assert_forked(answer, answer.pixels(indexes[0]), indexes[1:])


def test_a_mask_of_another_size_is_resized_and_the_infotext_says_so(webui, source):
    answer = img2img(webui, source, [named(mask=png_base64(cell_mask((50, 70)), data_url=True))])
    assert answer.status == 200, answer.body
    assert "MG mask resized: 70×50 to 128×128" in answer.info["infotexts"][outputs(answer)[0]]
    assert_forked(answer, pixels_of(source), outputs(answer))


def test_the_infotext_restores_the_options(webui, source):
    """A cell's infotext in the API's `infotext` field, with the mask (never in the infotext)
    as the only named arg, runs the same job: our options, the seed, steps and sampler come
    from the infotext. (The WebUI's img2img API restores only the fields its paste table
    marks for the API, which leaves out prompt, CFG, size and denoise: they are sent.)"""
    probe = webui.call("/sdapi/v1/txt2img", payload(None, width=64, height=64, steps=1,
                                                    infotext="probe\nSteps: 1, Seed: 1"))
    if probe.status == 500 and "parameterized generic" in str(probe.body):
        pytest.skip("this WebUI's API cannot apply an infotext at all (Forge 2: TypeError "
                    "'isinstance() argument 2 cannot be a parameterized generic' in apply_infotext, "
                    "also for requests without this extension's keys)")
    options = named(mode="Fork then Sample", cells_per_batch=2, start_step=1, feather=3, seed_per_cell=True)
    first = img2img(webui, source, [options], seed=91)
    assert first.status == 200, first.body
    infotext = first.info["infotexts"][outputs(first)[0]]    # cell 1: the job's first seed
    webui.call("/sdapi/v1/txt2img", payload(None, width=64, height=64, steps=1))
    not_restored = {k: BASE[k] for k in ("prompt", "negative_prompt", "cfg_scale", "width", "height")}
    again = webui.call("/sdapi/v1/img2img", dict(not_restored, infotext=infotext, init_images=[source],
                                                 denoising_strength=0.75, script_name=TOOLS,
                                                 script_args=[{"mask": MASK}]))
    if again.status == 500 and "parameterized generic" in str(again.body):
        pytest.skip("this WebUI's API cannot apply an infotext at all (Forge 2: TypeError "
                    "'isinstance() argument 2 cannot be a parameterized generic' in apply_infotext, "
                    "also for requests without this extension's keys)")
    if again.status == 500 and "KeyError" in str(again.body):
        pytest.skip("this server runs --nowebui: the WebUI registers paste fields only when it "
                    "builds the UI, so its API cannot apply an infotext; start it with the UI")
    assert again.status == 200, again.body
    assert [first.info["infotexts"][i] for i in outputs(first)] == \
        [again.info["infotexts"][i] for i in outputs(again)]
    assert [first.digest(i) for i in outputs(first)] == [again.digest(i) for i in outputs(again)]


def test_interrupt_returns_the_finished_cells(webui, source):
    """Fork then Sample one cell per batch; Interrupt after the second batch started: what
    came back is whole cells, each the source outside it."""
    result = {}

    def run():
        result["answer"] = img2img(webui, source, [named(mode="Fork then Sample", cells_per_batch=1)],
                                   steps=max(STEPS, 4))
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 1800
    while time.time() < deadline and thread.is_alive():
        state = webui.call("/sdapi/v1/progress?skip_current_image=true").body.get("state", {})
        if state.get("job_count", 0) == ROWS * COLUMNS and state.get("job_no", 0) >= 1:
            webui.call("/sdapi/v1/interrupt", {})
            break
        time.sleep(0.2)
    thread.join()
    answer = result["answer"]
    assert answer.status == 200, answer.body
    indexes = outputs(answer)
    assert 1 <= len(indexes) < ROWS * COLUMNS, len(indexes)
    src = pixels_of(source)
    for k, index in enumerate(indexes):
        pixels = answer.pixels(index)
        assert (pixels[~in_cell(k)] == src[~in_cell(k)]).all()
