"""ControlNet per tile through the HTTP API of a running WebUI: Forge 2's built-in
ControlNet, or A1111 1.10 with sd-webui-controlnet. Opt-in: TILESAMPLER_WEBUI_URL and
TILESAMPLER_CN_MODEL (a control model of that WebUI, e.g. the random ones of
``tests/fixtures/make_controlnet.py``); see tests/integration/README.md.

The pass under test is the latent-tile resample after an img2img at denoising strength 0
(which samples nothing), so the ControlNet unit acts only inside the tiled pass and two
jobs that differ only in the unit's hint differ only there. 512 x 256 with 256 px tiles
and 64 px of overlap is three tiles: cells 0-31, 16-47 and 32-63 of the 64-cell-wide
latent, so the left quarter of the image is sampled by the left tile alone and the right
quarter by the right tile alone.
"""
from __future__ import annotations

import base64
import copy
import io
import os

import pytest

from webui import TITLE

STEPS = int(os.environ.get("TILESAMPLER_IT_STEPS", "2"))
MODEL_VAR, LLLITE_VAR, LOG_VAR = "TILESAMPLER_CN_MODEL", "TILESAMPLER_CN_LLLITE", "TILESAMPLER_WEBUI_LOG"
WIDTH, HEIGHT = 512, 256
RESAMPLE = {"resample": True, "resample_mode": "independent", "resample_tile_size": 256,
            "resample_overlap": 64, "resample_batch": 1, "resample_denoise": 1.0,
            "resample_steps": STEPS, "resample_cfg": 1.5, "resample_sampler": "Euler"}


def png(array) -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def hint(seed: int):
    """A random pattern, the same for every seed except in the third quarter of the width
    (pixels 256-383), which the right tile alone sees and the left tile does not."""
    import numpy
    array = numpy.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=numpy.uint8)
    quarter = WIDTH // 4
    array[:, 2 * quarter:3 * quarter] = numpy.random.default_rng(seed).integers(
        0, 256, size=(HEIGHT, quarter, 3), dtype=numpy.uint8)
    return array


def init_image() -> str:
    import numpy
    rng = numpy.random.default_rng(5)
    return png(rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=numpy.uint8))


@pytest.fixture(scope="module")
def host(webui):
    wanted = os.environ.get(MODEL_VAR)
    if not wanted:
        pytest.skip(f"set {MODEL_VAR} to a control model of the WebUI (see tests/integration/README.md)")
    answer = webui.call("/controlnet/model_list")
    if answer.status != 200:
        pytest.skip(f"{webui.url} has no ControlNet API ({answer.status})")
    models = answer.body.get("model_list", [])

    def model(name):
        found = [m for m in models if m == name or m.split(" [")[0] == name]
        assert found, f"{name!r} is not among the WebUI's control models {models}"
        return found[0]
    forge = webui.is_forge()
    return {"webui": webui, "model": model, "cn": model(wanted), "none": "None" if forge else "none",
            "forge": forge}


def unit(host, model, image, **more):
    return {"enabled": True, "module": host["none"], "model": model, "image": png(image),
            "weight": 1.0, "resize_mode": "Just Resize", "processor_res": 512, "pixel_perfect": False,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", **more}


def img2img(host, units, named=RESAMPLE):
    """The same warm-up txt2img first: img2img's VAE encode draws from torch's global
    generator, so two img2img jobs compare only after the same preceding request."""
    webui = host["webui"]
    warm = webui.call("/sdapi/v1/txt2img", {"prompt": "warm-up", "steps": 1, "width": 64,
                                            "height": 64, "seed": 1, "sampler_name": "Euler"})
    assert warm.status == 200, warm.body
    body = {"prompt": "a harbour town", "negative_prompt": "blurry", "init_images": [init_image()],
            "denoising_strength": 0.0, "steps": STEPS, "width": WIDTH, "height": HEIGHT, "seed": 11,
            "sampler_name": "Euler", "cfg_scale": 1.5,
            "alwayson_scripts": {TITLE: {"args": [copy.deepcopy(named)]}}}
    if units:
        body["alwayson_scripts"]["controlnet"] = {"args": units}
    log = os.environ.get(LOG_VAR)
    start = os.path.getsize(log) if log and os.path.exists(log) else None
    answer = webui.call("/sdapi/v1/img2img", body)
    assert answer.status == 200, answer.body
    if start is not None:
        with open(log, errors="replace") as f:
            f.seek(start)
            new = f.read()
        assert "could not be applied" not in new, new[-2000:]
        assert "Traceback" not in new, new[-4000:]
    return answer


@pytest.fixture(scope="module")
def runs(host):
    """The unit with two hints that differ in the third quarter only, and no unit."""
    return {"p": img2img(host, [unit(host, host["cn"], hint(1))]),
            "q": img2img(host, [unit(host, host["cn"], hint(2))]),
            "none": img2img(host, [])}


def region_difference(a, b, left: int, right: int) -> float:
    import numpy
    return float(numpy.abs(a.pixels()[:, left:right].astype(int) - b.pixels()[:, left:right].astype(int)).mean())


def test_unit_runs_in_the_tiles_without_a_note_and_changes_the_image(runs):
    for answer in (runs["p"], runs["q"]):
        text = answer.infotext
        assert "Resample: True" in text and "Tile Sampler note" not in text, text
    assert runs["p"].digest() != runs["none"].digest(), "the ControlNet unit changed nothing"


def test_each_tile_gets_its_own_part_of_the_hint(runs):
    """The two hints differ in pixels 256-383 only. A tile given its part of the hint changes
    the image there (and a few cells around: the U-Net's and the VAE decoder's reach), so
    the images differ much inside those pixels and little at 112-159 px and at the left
    edge. A tile given the whole hint squeezed into it would see the difference at half its
    place in the tile: the left tile (0-255 px) at 128-191 px; a tile given no hint, nowhere.
    (Measured on A1111's tiny checkpoint: 9 grey levels inside, 0.2-0.6 outside.)"""
    inside = region_difference(runs["p"], runs["q"], 288, 352)
    outside = max(region_difference(runs["p"], runs["q"], 0, 64),
                  region_difference(runs["p"], runs["q"], 112, 160))
    assert inside > 1.0, f"the hint did not reach the tiles under it (difference {inside:.3f})"
    assert inside > 4 * outside, f"the hint's difference shows away from it (inside {inside:.3f}, outside {outside:.3f})"


def test_fused_mode_runs_with_the_unit(host, runs):
    answer = img2img(host, [unit(host, host["cn"], hint(1))], dict(RESAMPLE, resample_mode="fused",
                                                                   resample_batch=2))
    assert "Tile Sampler note" not in answer.infotext, answer.infotext
    assert answer.digest() != runs["none"].digest()


def test_a_unit_that_cannot_be_tiled_is_named_and_runs_on_the_whole_image(host):
    name = os.environ.get(LLLITE_VAR)
    if not name:
        pytest.skip(f"set {LLLITE_VAR} to a ControlLLLite model of the WebUI (make_controlnet.py --kind lllite-*)")
    answer = img2img(host, [unit(host, host["model"](name), hint(1))])
    text = answer.infotext
    assert "Tile Sampler note" in text and "ControlLLLite" in text, text
    assert "latent tile resample is off" in text, text


def test_hires_pass_tiled_during_with_the_unit(host):
    """txt2img 256 x 128 with a hires pass to 512 x 256, the hires sampling itself tiled
    (fused, "during") and the resample after it: the unit's hires hint goes to the tiles."""
    webui = host["webui"]
    body = {"prompt": "a harbour town", "negative_prompt": "blurry", "steps": STEPS, "seed": 12,
            "width": WIDTH // 2, "height": HEIGHT // 2, "sampler_name": "Euler", "cfg_scale": 1.5,
            "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": STEPS,
            "denoising_strength": 0.5, "hr_cfg": 1.5,
            "hr_additional_modules": ["Use same choices"],  # Forge 2 needs it (A1111 ignores it)
            "alwayson_scripts": {TITLE: {"args": [dict(RESAMPLE, resample_mode="fused", resample_where="during")]},
                                 "controlnet": {"args": [unit(host, host["cn"], hint(1))]}}}
    answer = webui.call("/sdapi/v1/txt2img", body)
    assert answer.status == 200, answer.body
    assert "Tile Sampler note" not in answer.infotext, answer.infotext
    assert answer.pixels().shape[:2] == (HEIGHT, WIDTH)
