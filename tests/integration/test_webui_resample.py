"""Latent-tile resampling through the HTTP API of a real, running WebUI (A1111 1.10 or
Forge 2). Opt-in like the HyperTile tests (TILESAMPLER_WEBUI_URL, TILESAMPLER_BASELINE_URL)."""
import copy
import os
import re
import threading
import time

import pytest

from webui import TITLE

STEPS = int(os.environ.get("TILESAMPLER_IT_STEPS", "4"))
BASE = {"prompt": "a harbour town, detailed", "negative_prompt": "blurry", "steps": STEPS,
        "width": 1024, "height": 768, "seed": 77, "sampler_name": "Euler", "cfg_scale": 5}
RESAMPLE = {"resample": True, "resample_tile_size": 512, "resample_overlap": 64,
            "resample_batch": 2, "resample_denoise": 0.5, "resample_steps": STEPS,
            "resample_cfg": 5, "resample_sampler": "Euler"}


def payload(named=None, **overrides):
    body = copy.deepcopy(BASE)
    body.update(overrides)
    if named is not None:
        body["alwayson_scripts"] = {TITLE: {"args": [named]}}
    return body


@pytest.fixture(scope="module")
def plain(webui):
    answer = webui.call("/sdapi/v1/txt2img", payload())
    assert answer.status == 200, answer.body
    return answer


@pytest.mark.parametrize("where", ["after", "during"])
@pytest.mark.parametrize("mode", ["independent", "fused", "moving"])
def test_txt2img_1024x768_with_a_512_tile(webui, plain, mode, where):
    answer = webui.call("/sdapi/v1/txt2img", payload(dict(RESAMPLE, resample_mode=mode, resample_where=where)))
    assert answer.status == 200, answer.body
    text = answer.infotext
    for key in ("Resample: True", f"Resample mode: {mode}", f"Resample where: {where}",
                "Resample tile size: 512", "Resample overlap: 64", "Resample denoise: 0.5"):
        assert key in text, f"{key!r} not in {text!r}"
    assert "Tile Sampler note" not in text, text
    assert answer.digest() != plain.digest(), "the resample changed nothing"
    assert answer.info["width"] == 1024 and answer.info["height"] == 768


def test_denoise_zero_leaves_the_image_unchanged(webui, plain):
    answer = webui.call("/sdapi/v1/txt2img", payload(dict(RESAMPLE, resample_denoise=0.0)))
    assert answer.status == 200, answer.body
    assert answer.digest() == plain.digest()


def test_named_and_positional_args_give_the_same_image(webui):
    named = dict(RESAMPLE, resample_mode="fused")
    info = [s for s in webui.call("/sdapi/v1/script-info").body if s["name"] == TITLE][0]
    keys = ["enabled", "hypertile", "hypertile_tile_size", "hypertile_swap_size", "hypertile_max_depth",
            "hypertile_scale_depth", "hypertile_vae", "resample", "resample_mode", "resample_where",
            "resample_weights", "resample_tile_size", "resample_overlap", "resample_batch",
            "resample_denoise", "resample_steps", "resample_cfg", "resample_sampler",
            "resample_scheduler", "resample_seed", "resample_size_cond"]   # README's order
    assert len(info["args"]) == len(keys)
    positional = [named.get(k, a["value"]) for k, a in zip(keys, info["args"])]
    positional[0] = True
    small = dict(width=768, height=512)
    a = webui.call("/sdapi/v1/txt2img", payload(named, **small))
    b = webui.call("/sdapi/v1/txt2img", dict(payload(None, **small),
                                             alwayson_scripts={TITLE: {"args": positional}}))
    assert a.status == b.status == 200, (a.body, b.body)
    assert a.digest() == b.digest()


def test_infotext_restores_the_resample_settings(webui):
    """The API's `infotext` field goes through the paste fields of 'Read generation
    parameters': non-default resample options come back and give the same image."""
    named = dict(RESAMPLE, resample_mode="moving", resample_tile_size=384, resample_overlap=32,
                 resample_denoise=0.4, resample_seed=4321)
    first = webui.call("/sdapi/v1/txt2img", payload(named, width=768, height=512))
    assert first.status == 200, first.body
    keys = ("Resample: True", "Resample mode: moving", "Resample tile size: 384",
            "Resample overlap: 32", "Resample denoise: 0.4", "Resample seed: 4321")
    assert all(k in first.infotext for k in keys), first.infotext
    again = webui.call("/sdapi/v1/txt2img", {"infotext": first.infotext, "sampler_name": "Euler"})
    if again.status == 500 and "KeyError" in str(again.body):
        pytest.skip("this server runs --nowebui: the WebUI registers paste fields only when it "
                    "builds the UI, so its API cannot apply an infotext; start it with the UI")
    if again.status == 500 and "parameterized generic" in str(again.body):
        pytest.skip("this WebUI's API cannot apply an infotext at all (Forge 2: TypeError "
                    "'isinstance() argument 2 cannot be a parameterized generic' in apply_infotext)")
    assert again.status == 200, again.body
    assert all(k in again.infotext for k in keys), again.infotext
    assert again.digest() == first.digest()


def test_img2img_with_a_mask(webui, plain):
    import base64
    import io
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        pytest.skip("Pillow is needed to draw the mask")
    mask = Image.new("L", (1024, 768), 0)
    ImageDraw.Draw(mask).rectangle((300, 200, 800, 600), fill=255)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    body = payload(dict(RESAMPLE, resample_mode="fused"), init_images=[plain.body["images"][0]],
                   mask=base64.b64encode(buffer.getvalue()).decode(), denoising_strength=0.6,
                   inpainting_fill=1, mask_blur=0, inpaint_full_res=False)
    answer = webui.call("/sdapi/v1/img2img", body)
    assert answer.status == 200, answer.body
    assert "Resample: True" in answer.infotext
    out = Image.open(io.BytesIO(answer.images[0])).convert("RGB")
    init = Image.open(io.BytesIO(plain.images[0])).convert("RGB")
    # outside the mask the WebUI pastes the original back: unchanged far from the mask
    assert out.crop((0, 0, 200, 150)).tobytes() == init.crop((0, 0, 200, 150)).tobytes()
    assert out.crop((400, 300, 700, 500)).tobytes() != init.crop((400, 300, 700, 500)).tobytes()


def test_hires_fix_then_resample(webui):
    hires = dict(hr_additional_modules=["Use same choices"],  # Forge 2 needs it (A1111 ignores it)
                 width=512, height=384, enable_hr=True, hr_scale=2, hr_second_pass_steps=2,
                 denoising_strength=0.5, hr_upscaler="Latent", hr_cfg=5)
    plain = webui.call("/sdapi/v1/txt2img", payload(None, **hires))
    answer = webui.call("/sdapi/v1/txt2img", payload(dict(RESAMPLE, resample_mode="moving"), **hires))
    assert plain.status == answer.status == 200, answer.body
    assert "Hires upscale: 2" in answer.infotext and "Resample mode: moving" in answer.infotext
    assert answer.digest() != plain.digest()


def test_hypertile_and_resample_together(webui):
    named = dict(RESAMPLE, resample_mode="fused", hypertile=True, hypertile_tile_size=256, hypertile_max_depth=1)
    answer = webui.call("/sdapi/v1/txt2img", payload(named, width=768, height=512))
    assert answer.status == 200, answer.body
    assert "HyperTile: True" in answer.infotext and "Resample: True" in answer.infotext


@pytest.mark.parametrize("named,needle", [
    (dict(RESAMPLE, resample_tile_size=1024), "is not smaller than the image (1024x768)"),
    (dict(RESAMPLE, resample_overlap=512), "resample_overlap (512 px) must be smaller"),
    (dict(RESAMPLE, resample_sampler="No Such Sampler"), "resample_sampler 'No Such Sampler' is not one of"),
    (dict(RESAMPLE, resample_mode="tiled"), "resample_mode must be one of"),
])
def test_bad_resample_args_get_an_http_error(webui, named, needle):
    answer = webui.call("/sdapi/v1/txt2img", payload(named))
    assert answer.status == 422, answer.body
    assert needle in str(answer.body)


TILE_PROGRESS = re.compile(r"Tile Sampler [a-z ]+: tile \d+/\d+")   # "Tile Sampler resample: tile 2/6, step 3/10"


def test_interrupt_between_tiles_then_a_clean_job(webui, baseline):
    small = dict(width=768, height=512, seed=5)
    reference = webui.call("/sdapi/v1/txt2img", payload(None, **small))
    long_job = dict(RESAMPLE, resample_mode="independent", resample_tile_size=256,
                    resample_overlap=32, resample_batch=1, resample_denoise=1.0)
    result, texts = {}, []
    thread = threading.Thread(target=lambda: result.setdefault(
        "answer", webui.call("/sdapi/v1/txt2img", payload(long_job, **small))))
    thread.start()
    deadline = time.time() + 600
    while time.time() < deadline and thread.is_alive():
        progress = webui.call("/sdapi/v1/progress?skip_current_image=true").body
        text = progress.get("textinfo") or (progress.get("state") or {}).get("textinfo") or ""
        texts.append(text)
        if TILE_PROGRESS.search(text):
            break
        time.sleep(0.5)
    webui.call("/sdapi/v1/interrupt", {})
    thread.join(900)
    assert any(TILE_PROGRESS.search(t) for t in texts), [t for t in texts if t][-5:]
    assert result["answer"].status == 200, result["answer"].body
    after = webui.call("/sdapi/v1/txt2img", payload(None, **small))
    assert after.status == 200 and after.digest() == reference.digest()
    fresh = baseline.call("/sdapi/v1/txt2img", payload(None, **small))
    assert fresh.digest() == after.digest()
