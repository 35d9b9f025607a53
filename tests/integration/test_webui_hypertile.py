"""HyperTile through the HTTP API of a real, running WebUI (A1111 1.10 or Forge 2).

Opt-in: TILESAMPLER_WEBUI_URL=http://127.0.0.1:PORT (and TILESAMPLER_BASELINE_URL for a
server without the extension). The checkpoint loaded there decides how the images look;
the tests only compare images of that server with each other.
"""
import copy
import os

import pytest

from lib_tilesampler import params as P
from webui import TITLE

STEPS = int(os.environ.get("TILESAMPLER_IT_STEPS", "4"))
BASE = {"prompt": "a lighthouse on a cliff", "negative_prompt": "blurry", "steps": STEPS,
        "width": 512, "height": 768, "seed": 1234, "sampler_name": "Euler", "cfg_scale": 5,
        "batch_size": 1}
ON_NAMED = {"hypertile": True, "hypertile_tile_size": 256, "hypertile_swap_size": 2,
            "hypertile_max_depth": 1}
ON_POSITIONAL = [True, True, 256, 2, 1, False, False]
OFF_POSITIONAL = [False, False, 256, 2, 0, False, False]
INFOTEXT_KEYS = ("HyperTile: True", "HyperTile tile size: 256", "HyperTile swap size: 2",
                 "HyperTile max depth: 1", "HyperTile scale depth: False", "HyperTile VAE: False")


def payload(args=None, **overrides):
    body = copy.deepcopy(BASE)
    body.update(overrides)
    if args is not None:
        body["alwayson_scripts"] = {TITLE: {"args": args}}
    return body


@pytest.fixture(scope="module")
def results(webui):
    """The requests several tests compare, each made once."""
    out = {}
    out["plain"] = webui.call("/sdapi/v1/txt2img", payload())
    out["on_named"] = webui.call("/sdapi/v1/txt2img", payload([ON_NAMED]))
    out["off"] = webui.call("/sdapi/v1/txt2img", payload(OFF_POSITIONAL))
    out["on_positional"] = webui.call("/sdapi/v1/txt2img", payload(ON_POSITIONAL))
    out["plain_again"] = webui.call("/sdapi/v1/txt2img", payload())
    for name, answer in out.items():
        assert answer.status == 200, f"{name}: {answer.status} {answer.body}"
    return out


def test_the_script_is_listed_with_readable_labels(webui):
    scripts = webui.call("/sdapi/v1/scripts").body
    assert TITLE in scripts["txt2img"] and TITLE in scripts["img2img"]
    info = [s for s in webui.call("/sdapi/v1/script-info").body if s["name"] == TITLE]
    assert len(info) == 2 and all(s["is_alwayson"] for s in info)
    labels = [a["label"] for a in info[0]["args"]]
    assert labels == [f.label for f in P.FIELDS]
    assert len(set(labels)) == len(labels)      # ui-config.json keys controls by label
    tile = info[0]["args"][2]
    assert (tile["value"], tile["minimum"], tile["maximum"]) == (256, 64, 2048)


def test_hypertile_on_gives_an_image_and_writes_its_infotext(results):
    on = results["on_named"]
    assert len(on.images) == 1 and on.images[0][:4] == b"\x89PNG"
    for key in INFOTEXT_KEYS:
        assert key in on.infotext, f"{key!r} missing from {on.infotext!r}"
    assert on.digest() != results["plain"].digest(), "HyperTile on changed nothing"


def test_off_gives_the_same_image_as_without_the_extension_args(results):
    assert results["off"].digest() == results["plain"].digest()
    assert "HyperTile" not in results["off"].infotext


def test_named_and_positional_args_give_the_same_image(results):
    assert results["on_named"].digest() == results["on_positional"].digest()


def test_nothing_leaks_into_the_next_job(results):
    assert results["plain_again"].digest() == results["plain"].digest()


def test_off_equals_a_server_without_the_extension(results, baseline):
    plain = baseline.call("/sdapi/v1/txt2img", payload())
    assert plain.status == 200
    assert plain.digest() == results["off"].digest()


def test_infotext_restores_the_settings(webui, results):
    """The API's `infotext` field goes through the same paste fields as the UI's
    'Read generation parameters'."""
    answer = webui.call("/sdapi/v1/txt2img", {"infotext": results["on_named"].infotext,
                                              "sampler_name": "Euler"})
    if answer.status == 500 and "txt2img" in str(answer.body) and "KeyError" in str(answer.body):
        pytest.skip("this server runs --nowebui: the WebUI registers paste fields only when it "
                    "builds the UI, so its API cannot apply an infotext; start it with the UI")
    if answer.status == 500 and "parameterized generic" in str(answer.body):
        pytest.skip("this WebUI's API cannot apply an infotext at all (Forge 2: TypeError "
                    "'isinstance() argument 2 cannot be a parameterized generic' in apply_infotext, "
                    "also for requests without this extension's keys)")
    assert answer.status == 200, answer.body
    for key in INFOTEXT_KEYS:
        assert key in answer.infotext
    assert answer.digest() == results["on_named"].digest()


@pytest.mark.parametrize("args,needle", [
    ([{"hypertile": True, "hypertile_tile": 256}], "unknown key(s) 'hypertile_tile'"),
    ([{"hypertile_tile_size": 4096}], "hypertile_tile_size must be at most 2048"),
    ([True, True, "big"], "hypertile_tile_size must be int"),
    ([False, False, 256, 2, 0, False, False] + [None] * 30, "positional args, expected at most"),
])
def test_bad_args_get_an_http_error_with_the_reason(webui, args, needle):
    answer = webui.call("/sdapi/v1/txt2img", payload(args))
    assert answer.status == 422
    assert needle in str(answer.body)


def test_hires_fix_with_hypertile(webui):
    hires = dict(hr_additional_modules=["Use same choices"],  # Forge 2 needs it (A1111 ignores it)
                 width=256, height=384, enable_hr=True, hr_scale=2, hr_second_pass_steps=2,
                 denoising_strength=0.5, hr_upscaler="Latent", hr_cfg=5)
    answer = webui.call("/sdapi/v1/txt2img", payload([ON_NAMED], **hires))
    assert answer.status == 200, answer.body
    assert "HyperTile: True" in answer.infotext and "Hires upscale: 2" in answer.infotext
    plain = webui.call("/sdapi/v1/txt2img", payload(None, **hires))
    assert plain.status == 200 and plain.digest() != answer.digest()


def test_img2img_with_hypertile_and_vae(webui, results):
    body = payload([dict(ON_NAMED, hypertile_vae=True)], init_images=[results["plain"].body["images"][0]],
                   denoising_strength=0.5, width=256, height=384)
    answer = webui.call("/sdapi/v1/img2img", body)
    assert answer.status == 200, answer.body
    assert "HyperTile VAE: True" in answer.infotext and len(answer.images) == 1
