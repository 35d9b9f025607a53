"""SDXL base + SDXL refiner through the HTTP API of a real WebUI (A1111 1.10 or Forge 2).

The point: after a refiner switch the U-Net is the refiner's, whose cross-attention and adm
inputs are narrower than the base's (SDXL: crossattn 2048 vs 1280, vector 2816 vs 2560; the
tiny A1111 pair of tests/fixtures/make_tiny_sdxl.py: 320 vs 256, 1792 vs 1536). HyperTile,
the resample after the main pass and the tiled ("during") sampling must all run on the
refiner with the refiner's conditioning: a mix-up is a shape error, i.e. an HTTP 500.

Opt-in: TILESAMPLER_WEBUI_URL and the two checkpoints on that server,
TILESAMPLER_SDXL_BASE and TILESAMPLER_SDXL_REFINER (names as in /sdapi/v1/sd-models, e.g.
``tiny-sdxl.safetensors`` / ``tiny-sdxl-refiner.safetensors`` on A1111,
``sdxl-random.safetensors`` / ``sdxl-random-refiner.safetensors`` on Forge). See
tests/integration/README.md, "SDXL base + refiner". TILESAMPLER_SDXL_STEPS (default 2):
sampling steps; the switch is by sampling steps, so with 2 steps at 0.5 the refiner runs the
second step.
"""
import copy
import os

import pytest

from webui import TITLE

BASE_VAR, REFINER_VAR = "TILESAMPLER_SDXL_BASE", "TILESAMPLER_SDXL_REFINER"
STEPS = int(os.environ.get("TILESAMPLER_SDXL_STEPS", "2"))
REQUEST = {"prompt": "a lighthouse on a cliff, (detailed:1.1)", "negative_prompt": "blurry",
           "steps": STEPS, "seed": 4242, "sampler_name": "Euler", "cfg_scale": 5,
           "width": 384, "height": 256, "refiner_switch_at": 0.5}
# SDXL has no attention at full latent resolution: at max depth 2 a 128 px tile (16 latent
# cells) splits the half-resolution grid only where it is at least 32 cells, i.e. 512 px.
# Swap size 1: at 512x256 the only split of that grid is 2 windows across, and with the
# default swap size 2 the draw is between 2 windows and 1 (whole), so a 2-step job can draw
# "whole" at both steps and tile nothing (the note then says so).
HYPERTILE = {"hypertile": True, "hypertile_tile_size": 128, "hypertile_max_depth": 2,
             "hypertile_swap_size": 1}
RESAMPLE = {"resample": True, "resample_tile_size": 256, "resample_overlap": 64,
            "resample_denoise": 0.5, "resample_steps": 2}


def listed(webui, name):
    for model in webui.call("/sdapi/v1/sd-models").body:
        names = {model.get("title"), model.get("model_name"), os.path.basename(model.get("filename") or "")}
        if name in names or name in {n.rsplit(".", 1)[0] for n in names if n}:
            return True
    return False


@pytest.fixture(scope="module")
def pair(webui):
    base, refiner = os.environ.get(BASE_VAR), os.environ.get(REFINER_VAR)
    if not base or not refiner:
        pytest.skip(f"set {BASE_VAR} and {REFINER_VAR} to an SDXL base and an SDXL refiner "
                    "checkpoint of the server at TILESAMPLER_WEBUI_URL (see tests/integration/README.md, "
                    "'SDXL base + refiner')")
    for var, name in ((BASE_VAR, base), (REFINER_VAR, refiner)):
        assert listed(webui, name), f"{var}={name} is not in the server's /sdapi/v1/sd-models"
    return base, refiner


def payload(pair, named=None, **overrides):
    base, refiner = pair
    body = copy.deepcopy(REQUEST)
    body.update(refiner_checkpoint=refiner,
                override_settings={"sd_model_checkpoint": base, "refiner_switch_by_sample_steps": True})
    body.update(overrides)
    if named is not None:
        body["alwayson_scripts"] = {TITLE: {"args": [named]}}
    return body


def assert_refined(answer):
    """HTTP 200, the refiner ran, and the extension had nothing to say (it says when it turns
    a part off or when HyperTile tiled nothing)."""
    assert answer.status == 200, answer.body
    text = answer.infotext
    assert "Refiner:" in text, f"the refiner did not run: {text}"
    assert "Tile Sampler note" not in text, text
    return text


def test_the_pair_runs_without_the_extension(webui, pair):
    """The host itself runs base -> refiner (so a failure below is the extension's)."""
    answer = webui.call("/sdapi/v1/txt2img", payload(pair))
    assert_refined(answer)


def test_hypertile_on_base_and_refiner(webui, pair):
    answer = webui.call("/sdapi/v1/txt2img", payload(pair, HYPERTILE, width=512, height=256))
    text = assert_refined(answer)
    # no note: HyperTile tiled at least one attention call (else the note says it tiled none)
    assert "HyperTile: True" in text and "HyperTile max depth: 2" in text, text


def test_resample_after_a_refiner_switch_uses_the_refiners_conditioning(webui, pair):
    answer = webui.call("/sdapi/v1/txt2img", payload(pair, dict(RESAMPLE, resample_where="after")))
    text = assert_refined(answer)
    assert "Resample: True" in text and "Resample where: after" in text, text


def test_fused_resample_during_base_and_refiner(webui, pair):
    answer = webui.call("/sdapi/v1/txt2img", payload(pair, dict(RESAMPLE, resample_mode="fused",
                                                                resample_where="during")))
    text = assert_refined(answer)
    assert "Resample mode: fused" in text and "Resample where: during" in text, text
