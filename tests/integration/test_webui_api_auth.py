"""The API argument check behind the host's authentication, on a real WebUI started with
``--api --api-auth user:password`` (A1111 1.10 or Forge 2). Opt-in:
TILESAMPLER_AUTH_WEBUI_URL=http://127.0.0.1:PORT TILESAMPLER_AUTH=user:password.

Order: authentication (401) first, then the host's validation of its request (the host's
422), then ours (our 422 with the message); a valid job still runs."""
import base64
import io
import os

import pytest

from webui import TITLE

STEPS = int(os.environ.get("TILESAMPLER_IT_STEPS", "2"))
TINY = {"prompt": "a small boat", "steps": STEPS, "width": 256, "height": 256, "seed": 3,
        "sampler_name": "Euler", "cfg_scale": 5}
INFOTEXT_LINE = "a small boat\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 3"


def tiny_png() -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 120, 150)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def body(args=None, path="/sdapi/v1/txt2img", **fields):
    out = dict(TINY, **fields)
    if args is not None:
        out["alwayson_scripts"] = {TITLE: {"args": args}}
    if path.endswith("img2img"):
        out.setdefault("init_images", [tiny_png()])
        out.setdefault("denoising_strength", 0.5)
    return out


PATHS = ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"]
BODIES = {
    "valid job with our args": lambda p: body([{"hypertile": True, "hypertile_tile_size": 64}], p),
    "no args": lambda p: body(None, p),
    "bad named args": lambda p: body([{"hypertile_tile_size": 4096}], p),
    "bad positional args": lambda p: body([True, True, "big"], p),
    "bad host field next to ours": lambda p: body([{"resample": True}], p, width="abc"),
    "bad infotext of ours": lambda p: body(None, p, infotext=INFOTEXT_LINE + ", Resample: True, Resample tile size: huge"),
    "empty": lambda p: {},
}


@pytest.mark.parametrize("credentials", [None, ("user", "wrong-password"), ("nobody", "password")],
                         ids=["none", "wrong password", "unknown user"])
@pytest.mark.parametrize("name", list(BODIES))
@pytest.mark.parametrize("path", PATHS)
def test_without_good_credentials_every_request_is_401(authed, path, name, credentials):
    if credentials is not None and credentials[0] == authed.auth[0] and credentials[1] == authed.auth[1]:
        pytest.skip("these are the server's credentials")
    answer = authed.call(path, BODIES[name](path), auth=credentials)
    assert answer.status == 401, answer.body


def test_script_info_needs_credentials_too(authed):
    assert authed.call("/sdapi/v1/script-info", auth=None).status == 401
    assert authed.call("/sdapi/v1/script-info").status == 200


HYPERTILE_BASE = dict(TINY, width=512, height=768)
RESAMPLE = {"resample": True, "resample_tile_size": 512, "resample_overlap": 64,
            "resample_batch": 2, "resample_denoise": 0.5, "resample_steps": STEPS,
            "resample_cfg": 5, "resample_sampler": "Euler"}
RESAMPLE_BASE = dict(TINY, width=1024, height=768)


@pytest.mark.parametrize("base,args,needle", [
    (HYPERTILE_BASE, [{"hypertile": True, "hypertile_tile": 256}], "unknown key(s) 'hypertile_tile'"),
    (HYPERTILE_BASE, [{"hypertile_tile_size": 4096}], "hypertile_tile_size must be at most 2048"),
    (HYPERTILE_BASE, [True, True, "big"], "hypertile_tile_size must be int"),
    (HYPERTILE_BASE, [False, False, 256, 2, 0, False, False] + [None] * 30, "positional args, expected at most"),
    (RESAMPLE_BASE, [dict(RESAMPLE, resample_tile_size=1024)], "is not smaller than the image (1024x768)"),
    (RESAMPLE_BASE, [dict(RESAMPLE, resample_overlap=512)], "resample_overlap (512 px) must be smaller"),
    (RESAMPLE_BASE, [dict(RESAMPLE, resample_sampler="No Such Sampler")], "resample_sampler 'No Such Sampler' is not one of"),
    (RESAMPLE_BASE, [dict(RESAMPLE, resample_mode="tiled")], "resample_mode must be one of"),
], ids=["unknown key", "tile size range", "wrong type", "too many", "tile not smaller",
        "overlap", "sampler", "mode"])
def test_with_credentials_bad_args_get_our_422_with_the_message(authed, base, args, needle):
    answer = authed.call("/sdapi/v1/txt2img", dict(base, alwayson_scripts={TITLE: {"args": args}}))
    assert answer.status == 422, answer.body
    assert needle in str(answer.body)
    assert answer.body["detail"].startswith("Tile Sampler: ")


@pytest.mark.parametrize("fields,name", [
    ({"width": "abc"}, "width"),
    ({"enable_hr": True, "hr_scale": "x"}, "hr_scale"),
    ({"steps": [2]}, "steps"),
    ({"seed": {"a": 1}}, "seed"),
])
@pytest.mark.parametrize("path", PATHS)
def test_a_bad_host_field_next_to_our_args_gets_the_hosts_own_422(authed, path, fields, name):
    if path.endswith("img2img") and "hr_scale" in fields:
        pytest.skip("img2img has no hires fields")
    without = authed.call(path, body(None, path, **fields))
    for args in ([{"resample": True}], [{"hypertile_tile_size": 4096}], [True, True, "big"]):
        answer = authed.call(path, body(args, path, **fields))
        assert answer.status == without.status == 422, answer.body
        assert isinstance(answer.body["detail"], list) and name in str(answer.body["detail"])
        assert answer.body["detail"] == without.body["detail"]


@pytest.mark.parametrize("pairs,needle", [
    ("Resample: True, Resample tile size: huge", "infotext key 'Resample tile size'"),
    ("Resample: True, Resample steps: 30.0", "infotext key 'Resample steps'"),
    ("Resample: True, Resample denoise: 2", "infotext key 'Resample denoise'"),
    ("Resample: True, Resample mode: sideways", "infotext key 'Resample mode'"),
    ("Resample: True, Resample sampler: No Such Sampler", "resample_sampler 'No Such Sampler' is not one of"),
    ("HyperTile: maybe", "infotext key 'HyperTile'"),
    ("HyperTile: True, HyperTile tile size: 4096", "infotext key 'HyperTile tile size'"),
    ("HyperTile: True, HyperTile max depth: -1", "infotext key 'HyperTile max depth'"),
])
@pytest.mark.parametrize("path", PATHS)
def test_bad_infotext_keys_of_ours_get_a_422_naming_the_key(authed, path, pairs, needle):
    answer = authed.call(path, body(None, path, infotext=f"{INFOTEXT_LINE}, {pairs}"))
    assert answer.status == 422, answer.body
    assert needle in answer.body["detail"]


def test_a_valid_job_with_our_args_runs(authed):
    answer = authed.call("/sdapi/v1/txt2img", body([{"hypertile": True, "hypertile_tile_size": 64}]))
    assert answer.status == 200, answer.body
    assert "HyperTile: True" in answer.infotext and len(answer.images) == 1
