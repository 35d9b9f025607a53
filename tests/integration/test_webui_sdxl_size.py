"""SDXL's size and crop conditioning per tile, through the HTTP API of a real WebUI (A1111 1.10
or Forge 2). Opt-in: TILESAMPLER_WEBUI_URL and TILESAMPLER_SDXL_BASE (an SDXL checkpoint of
that server), TILESAMPLER_SDXL_REFINER optional (see tests/integration/README.md).

With "SDXL size conditioning: tile" (the default) every tile call gets its crop corner and
size in the model's vector. The extension first checks that the vector holds the WebUI's
crop setting where SDXL keeps it (for the base model and the refiner, whose layouts
differ); when it does not, the job says so in a note. So: no note, and an image that
differs from the one with the whole image's values ("image").
"""
import os

import pytest

from test_webui_sdxl import BASE_VAR, REFINER_VAR, STEPS, listed
from webui import TITLE

RESAMPLE = {"resample": True, "resample_mode": "fused", "resample_tile_size": 256,
            "resample_overlap": 64, "resample_denoise": 0.5, "resample_steps": STEPS}


def job(webui, base, named, **more):
    body = {"prompt": "a lighthouse on a cliff", "negative_prompt": "blurry", "steps": STEPS,
            "seed": 4243, "sampler_name": "Euler", "cfg_scale": 5, "width": 512, "height": 256,
            "override_settings": {"sd_model_checkpoint": base},
            "alwayson_scripts": {TITLE: {"args": [named]}}, **more}
    answer = webui.call("/sdapi/v1/txt2img", body)
    assert answer.status == 200, answer.body
    return answer


@pytest.fixture(scope="module")
def base(webui):
    name = os.environ.get(BASE_VAR)
    if not name:
        pytest.skip(f"set {BASE_VAR} to an SDXL checkpoint of the server (see tests/integration/README.md)")
    assert listed(webui, name), f"{BASE_VAR}={name} is not in the server's /sdapi/v1/sd-models"
    return name


def test_tiles_get_their_size_and_crop_and_the_option_keeps_the_whole_images(webui, base):
    per_tile = job(webui, base, dict(RESAMPLE))
    whole = job(webui, base, dict(RESAMPLE, resample_size_cond="image"))
    for answer, value in ((per_tile, "tile"), (whole, "image")):
        assert f"Resample SDXL size: {value}" in answer.infotext, answer.infotext
        assert "Tile Sampler note" not in answer.infotext, answer.infotext
    assert per_tile.digest() != whole.digest(), "the tiles' sizes changed nothing"


def test_refiner_layout_is_recognised_too(webui, base):
    refiner = os.environ.get(REFINER_VAR)
    if not refiner:
        pytest.skip(f"set {REFINER_VAR} to run the refiner's layout")
    answer = job(webui, base, dict(RESAMPLE), refiner_checkpoint=refiner, refiner_switch_at=0.5)
    assert "Tile Sampler note" not in answer.infotext, answer.infotext
