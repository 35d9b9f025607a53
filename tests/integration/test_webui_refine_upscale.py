"""The Script tab's Refine & upscale through the HTTP API of a real WebUI (A1111 1.10 or
Forge 2): base + refiner checkpoints, the upscaler model, the tiled pass, the outputs, the
user's checkpoint after success, error and interrupt, the 422s, infotext restore, named ==
positional args, progress.

Opt-in (TILESAMPLER_WEBUI_URL; a server with its UI for the infotext test). The refiner is
TILESAMPLER_RU_REFINER or the first checkpoint named "*refiner*" that is not SDXL (A1111:
tiny-refiner.safetensors, a copy of tiny.safetensors; Forge: sd15-random-refiner); the
upscaler is the fixture ``tiny-esrgan-4x`` (out = 255 - nearest4x(in), exactly). Images are
96x96 before the 4x upscale so that Forge on a CPU stays at about a minute a job.
"""
import base64
import copy
import io
import os
import threading
import time

import numpy as np
import pytest

from webui import TITLE

TOOL = "tile sampler tools"
UPSCALER = "tiny-esrgan-4x"
BASE = {"prompt": "a lighthouse, detailed", "negative_prompt": "blurry", "steps": 4, "width": 96,
        "height": 96, "seed": 4321, "sampler_name": "Euler", "cfg_scale": 5}
TOOL_ARGS = {"tool": "refine_upscale", "base_steps": 4, "base_stop": 2, "base_sampler": "Euler",
             "base_scheduler": "Automatic", "refiner_steps": 4, "refiner_start": 2,
             "refiner_sampler": "Euler", "refiner_scheduler": "Automatic", "upscaler": UPSCALER,
             "upscale_by": 4, "tiler_denoise": 0.5, "tiler_tile_size": 256, "tiler_overlap": 64,
             "tiler_steps": 4, "tiler_sampler": "Euler"}
TILES = 4                       # 384x384 from 256 px tiles with 64 px overlap: 2x2
TILER_STEPS = 2                 # 4 steps at denoise 0.5


def payload(args=None, **fields):
    body = copy.deepcopy(BASE)
    body.update(fields)
    body["script_name"] = TOOL
    body["script_args"] = [dict(TOOL_ARGS, **(args or {}))]
    return body


def pixels(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).copy()


def inverted_nearest_4x(image: np.ndarray) -> np.ndarray:
    return 255 - image.repeat(4, axis=0).repeat(4, axis=1)


def png_base64(image: np.ndarray) -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def models(webui):
    """(base title, refiner title, {title: sha256})."""
    listed = webui.call("/sdapi/v1/sd-models").body
    options = webui.call("/sdapi/v1/options").body
    base = options["sd_model_checkpoint"]
    wanted = os.environ.get("TILESAMPLER_RU_REFINER")
    names = [m["title"] for m in listed]
    refiner = next((n for n in names if wanted and wanted in n), None) if wanted else \
        next((n for n in names if "refiner" in n and "sdxl" not in n.lower() and n != base), None)
    if refiner is None:
        pytest.skip("no second SD1.x checkpoint to use as the refiner (set TILESAMPLER_RU_REFINER)")
    return base, refiner, {m["title"]: m.get("sha256") for m in listed}


def last_job(webui):
    answer = webui.call("/tilesampler/v1/jobs/last")
    assert answer.status == 200, answer.body
    return answer.body


def same_checkpoint(title_a, title_b):
    strip = lambda t: (t or "").split(" [")[0]  # noqa: E731 - the hash appears once computed
    return strip(title_a) == strip(title_b)


def assert_users_checkpoint(webui, models, before_options):
    base = models[0]
    job = last_job(webui)
    assert same_checkpoint(job.get("checkpoint_after"), base), job
    options = webui.call("/sdapi/v1/options").body
    assert options["sd_model_checkpoint"] == before_options["sd_model_checkpoint"]
    digests = models[2]
    if len({digests.get(t) for t in digests if same_checkpoint(t, base) or same_checkpoint(t, models[1])}) == 2:
        assert options.get("sd_checkpoint_hash") in (None, before_options.get("sd_checkpoint_hash")), \
            "another checkpoint is loaded after the job"


def watch_progress(webui, thread, until=None, timeout=1800):
    """Poll the progress while ``thread`` runs: (textinfos seen, job counts seen)."""
    texts, counts = [], set()
    deadline = time.time() + timeout
    while thread.is_alive() and time.time() < deadline:
        body = webui.call("/sdapi/v1/progress?skip_current_image=true").body
        state = body.get("state") or {}
        text = body.get("textinfo") or state.get("textinfo") or ""
        texts.append(text)
        if state.get("job_count", -1) > 0:
            counts.add(state["job_count"])
        if until is not None and until(text):
            break
        time.sleep(0.3)
    return texts, counts


def run_watched(webui, body, until=None, then=None):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "answer", webui.call("/sdapi/v1/txt2img", body)))
    thread.start()
    texts, counts = watch_progress(webui, thread, until)
    if then is not None:
        then()
    thread.join(1800)
    return result["answer"], texts, counts


# ------------------------------------------------------------------ txt2img
def test_base_then_refiner_then_upscaler_then_tiles_with_progress_and_the_checkpoint_restored(webui, models):
    before = webui.call("/sdapi/v1/options").body
    answer, texts, counts = run_watched(webui, payload({"refiner": models[1]}))
    assert answer.status == 200, answer.body
    assert len(answer.images) == 2, "the tiled image, then the upscaled image"
    tiled, upscaled = pixels(answer.images[0]), pixels(answer.images[1])
    assert tiled.shape == upscaled.shape == (384, 384, 3)
    blocks = upscaled.reshape(96, 4, 96, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all(), "the upscale is not the 4x nearest model's"
    assert not np.array_equal(tiled, upscaled)
    info = answer.info
    assert info["infotexts"][0] == info["infotexts"][1] and "Script: Tile Sampler tools" in info["infotexts"][0]
    for key in ("Tile Sampler tool: refine_upscale", "RU upscaler: tiny-esrgan-4x", "RU upscale by: 4",
                "RU base stop: 2", "RU refiner start: 2", "RU tiler tile size: 256"):
        assert key in info["infotexts"][0], key
    job = last_job(webui)
    assert same_checkpoint(job["stage_checkpoints"]["base"], models[0])
    assert same_checkpoint(job["stage_checkpoints"]["refiner"], models[1])
    assert same_checkpoint(job["tiler_checkpoint"], models[0])
    assert job["refine_upscale"] == {"images": 1, "tiles": TILES, "stopped": None}
    assert job["stages"]["base"]["evaluations"] == 2 and job["stages"]["refiner"]["evaluations"] == 2
    assert (job["stages"]["resample"]["runs"], job["stages"]["resample"]["evaluations"]) == (TILES, TILES * TILER_STEPS)
    assert_users_checkpoint(webui, models, before)
    seen = " | ".join(texts)
    # The base's two steps at 96 px take a few ms on the tiny checkpoint, less than one poll:
    # its evaluations are counted above; the later stages must show in the progress text.
    for stage in ("Refine & upscale: refiner", "Refine & upscale: upscale", "Refine & upscale: tile"):
        assert stage in seen, (stage, texts[-10:])
    assert counts <= {2 + 1 + TILES}, counts          # base, refiner, upscale, one run per tile


def test_the_upscaler_model_ran_on_the_stage_1_image_pixel_for_pixel(webui):
    """A base that runs its whole schedule with the job's own settings is the host's own
    txt2img image; the upscaled output is exactly the fixture model's inverted nearest 4x."""
    plain = webui.call("/sdapi/v1/txt2img", dict(BASE))
    assert plain.status == 200, plain.body
    args = {"base_stop": 4, "base_sampler": "same as main", "base_scheduler": "same as main",
            "base_cfg": 0, "refiner": "None"}
    answer = webui.call("/sdapi/v1/txt2img", payload(args))
    assert answer.status == 200, answer.body
    upscaled = pixels(answer.images[1])
    assert np.array_equal(upscaled, inverted_nearest_4x(pixels(plain.images[0])))


def test_tiled_only_returns_one_image_and_denoise_0_returns_the_upscale(webui):
    answer = webui.call("/sdapi/v1/txt2img", payload({"tiled_only": True, "refiner": "None"}))
    assert answer.status == 200 and len(answer.images) == 1 and pixels(answer.images[0]).shape == (384, 384, 3)
    zero = webui.call("/sdapi/v1/txt2img", payload({"tiler_denoise": 0, "refiner": "None"}))
    assert zero.status == 200 and len(zero.images) == 1
    blocks = pixels(zero.images[0]).reshape(96, 4, 96, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()


def test_the_always_on_resample_does_not_run_again_and_hypertile_applies(webui):
    alwayson = {TITLE: {"args": [{"hypertile": True, "hypertile_tile_size": 64, "resample": True,
                                  "resample_tile_size": 256, "resample_overlap": 64}]}}
    answer = webui.call("/sdapi/v1/txt2img", dict(payload({"refiner": "None"}), alwayson_scripts=alwayson))
    assert answer.status == 200, answer.body
    text = answer.info["infotexts"][0]
    assert "HyperTile: True" in text and "Resample: True" not in text
    assert "latent tile resample is off in this job" in text
    job = last_job(webui)
    assert (job["stages"]["resample"]["runs"], job["stages"]["resample"]["evaluations"]) == (TILES, TILES * TILER_STEPS)


# ------------------------------------------------------------------ img2img
def test_img2img_upscales_the_input_and_tiles_it(webui):
    source = np.random.default_rng(0).integers(0, 256, (96, 112, 3), dtype=np.uint8)
    body = payload({"refiner": "None"}, init_images=[png_base64(source)], denoising_strength=0.75,
                   width=512, height=512)
    answer = webui.call("/sdapi/v1/img2img", body)
    assert answer.status == 200, answer.body
    assert len(answer.images) == 2
    tiled, upscaled = pixels(answer.images[0]), pixels(answer.images[1])
    assert tiled.shape == upscaled.shape == (384, 448, 3)
    assert np.array_equal(upscaled, inverted_nearest_4x(source))
    assert not np.array_equal(tiled, upscaled)
    job = last_job(webui)
    assert "base" not in job["stages"] and "refiner" not in job["stages"]
    assert job["stages"]["resample"]["runs"] == 4               # 384x448 from 256 px tiles: 2x2


def test_img2img_refine_runs_base_and_refiner_from_the_main_denoise_first(webui, models):
    source = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    body = payload({"refiner": models[1], "img2img_refine": True}, init_images=[png_base64(source)],
                   denoising_strength=0.75)
    answer = webui.call("/sdapi/v1/img2img", body)
    assert answer.status == 200, answer.body
    assert len(answer.images) == 2 and pixels(answer.images[1]).shape == (384, 384, 3)
    assert not np.array_equal(pixels(answer.images[1]), inverted_nearest_4x(source))
    job = last_job(webui)   # 4 base steps from int(4 - 4 x 0.75) = 1, stop at 2: one base step
    assert job["stages"]["base"]["evaluations"] == 1 and job["stages"]["refiner"]["evaluations"] == 2
    assert "RU refine input: True" in answer.info["infotexts"][0]
    assert "Denoising strength: 0.75" in answer.info["infotexts"][0]


def test_a_batch_gives_each_image_its_tiled_and_upscaled_image_with_its_own_seed(webui):
    answer = webui.call("/sdapi/v1/txt2img", payload({"refiner": "None"}, batch_size=2))
    assert answer.status == 200, answer.body
    assert len(answer.images) == 4
    assert answer.info["all_seeds"] == [BASE["seed"]] * 2 + [BASE["seed"] + 1] * 2
    assert answer.digest(0) != answer.digest(2) and answer.digest(1) != answer.digest(3)
    assert last_job(webui)["refine_upscale"]["images"] == 2


# ------------------------------------------------------------------ API forms
def test_named_and_positional_args_give_the_same_images(webui):
    named = dict(TOOL_ARGS, refiner="None")
    info = [s for s in webui.call("/sdapi/v1/script-info").body
            if s["name"] == TOOL and not s["is_img2img"]][0]
    labels = [a["label"] for a in info["args"]]
    defaults = [a["value"] for a in info["args"]]
    keys = ["tool", "img2img_refine", "base_steps", "base_stop", "base_cfg", "base_sampler",
            "base_scheduler", "refiner", "refiner_steps", "refiner_start", "refiner_cfg",
            "refiner_sampler", "refiner_scheduler", "upscaler", "upscale_by", "tiler_denoise",
            "tiler_model", "tiler_mode", "tiler_tile_size", "tiler_overlap", "tiler_batch",
            "tiler_steps", "tiler_cfg", "tiler_sampler", "tiler_scheduler", "tiled_only"]
    assert labels[0] == "Tool" and labels[1] == "Refine input first"
    positional = defaults[:]
    for i, key in enumerate(keys):
        if key in named:
            positional[i] = named[key]
    body = payload()
    body["script_args"] = [named]
    by_name = webui.call("/sdapi/v1/txt2img", body)
    body["script_args"] = positional
    by_position = webui.call("/sdapi/v1/txt2img", body)
    assert by_name.status == by_position.status == 200, (by_name.body, by_position.body)
    assert [by_name.digest(i) for i in range(2)] == [by_position.digest(i) for i in range(2)]


def test_the_infotext_field_restores_the_whole_job(webui):
    first = webui.call("/sdapi/v1/txt2img", payload({"refiner": "None", "tiler_mode": "fused"}))
    assert first.status == 200, first.body
    text = first.info["infotexts"][0]
    again = webui.call("/sdapi/v1/txt2img", {"infotext": text, "script_name": TOOL})
    if again.status == 500 and "parameterized generic" in str(again.body):
        pytest.skip("this WebUI's API cannot apply an infotext at all (Forge 2: TypeError "
                    "'isinstance() argument 2 cannot be a parameterized generic' in apply_infotext, "
                    "also for requests without this extension)")
    assert again.status == 200, again.body
    assert "RU tiler mode: fused" in again.info["infotexts"][0]
    assert [again.digest(i) for i in range(2)] == [first.digest(i) for i in range(2)]


@pytest.mark.parametrize("args,fields,words", [
    ({"refiner": "no-such-model"}, {}, "is not a checkpoint of this WebUI"),
    ({"upscaler": "4x-NoSuchUpscaler"}, {}, "upscaler '4x-NoSuchUpscaler' is not one of"),
    ({"upscale_by": 10}, {"width": 2048, "height": 2048}, "above this WebUI's maximum image size"),
    ({"upscale_by": 11}, {}, "upscale_by must be at most 10.0"),
    ({"upscale_by": 0.05}, {}, "upscale_by must be at least 0.1"),
    ({"upscale_by": "big"}, {}, "upscale_by must be float"),
    ({"base_sampler": "DDIM"}, {}, "'DDIM' does not"),
    ({"tiler_sampler": "UniPC", "tiler_steps": 10, "tiler_denoise": 0.1}, {}, "UniPC needs at least"),
    ({"no_such_key": 1}, {}, "unknown key(s) 'no_such_key'"),
])
def test_bad_args_are_a_422_with_a_sentence_before_any_work(webui, args, fields, words):
    before = last_job(webui)
    started = time.time()
    answer = webui.call("/sdapi/v1/txt2img", dict(payload(args), **fields))
    assert answer.status == 422, answer.body
    assert words in answer.body["detail"] and answer.body["detail"].startswith("Tile Sampler tools: ")
    assert last_job(webui) == before and time.time() - started < 30


# ------------------------------------------------------------------ errors and interrupts
def test_the_users_checkpoint_is_restored_after_an_error_in_the_middle(webui, models):
    """The request's settings make the host's img2img fail where it saves its init image (a
    folder it cannot create): in the tiler's img2img job, after the refiner stage and the
    upscale, with the tiler's checkpoint (the refiner) loaded."""
    before = webui.call("/sdapi/v1/options").body
    saved = {k: before[k] for k in ("save_init_img", "outdir_init_images")}
    # Both WebUIs put an overridden setting back only when their config file holds it:
    # write the current values first (a bool and a string: Forge 2 stores numbers it is
    # sent as floats, which its ESRGAN tiling cannot take, so no number is used here).
    assert webui.call("/sdapi/v1/options", saved).status == 200
    body = payload({"refiner": models[1], "tiler_model": "refiner"},
                   override_settings={"save_init_img": True, "outdir_init_images": "/proc/tilesampler-test"})
    try:
        answer = webui.call("/sdapi/v1/txt2img", body)
    finally:
        webui.call("/sdapi/v1/options", saved)
    assert answer.status == 500, answer.body
    assert "/proc/tilesampler-test" in str(answer.body), answer.body
    job = last_job(webui)
    assert same_checkpoint(job["stage_checkpoints"]["refiner"], models[1])
    assert_users_checkpoint(webui, models, before)
    after = webui.call("/sdapi/v1/txt2img", dict(BASE))
    assert after.status == 200 and f"Model: {models[0].split('.')[0]}," in after.infotext


def test_interrupt_while_tiling_returns_the_finished_upscale_and_restores_the_checkpoint(webui, models):
    before = webui.call("/sdapi/v1/options").body
    answer, texts, _ = run_watched(
        webui, payload({"refiner": models[1], "tiler_model": "refiner", "tiler_steps": 8, "tiler_denoise": 1.0}),
        until=lambda text: "Refine & upscale: tile 2/" in text,
        then=lambda: webui.call("/sdapi/v1/interrupt", {}))
    assert any("Refine & upscale: tile" in t for t in texts), texts[-10:]
    assert answer.status == 200, answer.body
    assert len(answer.images) == 1, "only the upscaled image was finished"
    blocks = pixels(answer.images[0]).reshape(96, 4, 96, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    job = last_job(webui)
    assert job["refine_upscale"]["stopped"] == "interrupted" and job["refine_upscale"]["images"] == 0
    assert_users_checkpoint(webui, models, before)
    clean = webui.call("/sdapi/v1/txt2img", payload({"refiner": "None", "tiled_only": True}))
    assert clean.status == 200 and len(clean.images) == 1
