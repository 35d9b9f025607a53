"""Malformed requests against a real WebUI: no answer is a 5xx, each names its problem,
and the server still runs a normal job afterwards.

Opt-in: TILESAMPLER_FUZZ=N (the number of requests, 200 or more for a real run; seed
TILESAMPLER_FUZZ_SEED, default 0) with TILESAMPLER_AUTH_WEBUI_URL + TILESAMPLER_AUTH (a
server started with --api-auth, called with its credentials) or else TILESAMPLER_WEBUI_URL.
Every request is malformed, so nothing samples until the last, tiny job."""
from __future__ import annotations

import base64
import io
import os
import random
from typing import Any, Callable

import pytest

from lib_tilesampler.params import FIELDS, Field
from webui import AUTH_URL_VAR, TITLE, WebUI, auth_webui_from_env, webui_from_env

FUZZ_VAR, SEED_VAR = "TILESAMPLER_FUZZ", "TILESAMPLER_FUZZ_SEED"
COUNT = int(os.environ.get(FUZZ_VAR) or 240)
SEED = int(os.environ.get(SEED_VAR) or 0)
TINY = {"prompt": "a small boat", "steps": 1, "width": 256, "height": 256, "seed": 3,
        "sampler_name": "Euler", "cfg_scale": 5}
INFOTEXT_LINE = "a small boat\nSteps: 1, Sampler: Euler, CFG scale: 5, Seed: 3"
SWITCH = {"hypertile": ("hypertile", "HyperTile"), "resample": ("resample", "Resample")}
GROUP_FIELDS = [f for f in FIELDS if f.group]
NAME_FIELDS = ("resample_sampler", "resample_scheduler")
VALID_OURS = ([{"hypertile": True}], [True, True, 64], [{"hypertile": True, "hypertile_max_depth": 1, "resample": False}])


@pytest.fixture(scope="module")
def server() -> WebUI:
    if not os.environ.get(FUZZ_VAR):
        pytest.skip(f"set {FUZZ_VAR}=240 (and {AUTH_URL_VAR} or TILESAMPLER_WEBUI_URL) to fuzz a "
                    "running WebUI with malformed requests (see tests/integration/README.md)")
    return auth_webui_from_env() if os.environ.get(AUTH_URL_VAR) else webui_from_env()


def _png() -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bad_values(f: Field) -> list:
    """JSON values the option ``f`` must refuse."""
    if f.kind is bool:
        out = ["maybe", 2, [], {"a": 1}, "1"]
    elif f.kind is str:
        out = [3, [], {"a": 1}, True] + (["bogus", "Fused"] if f.choices else [])
    else:
        out = ["abc", [1], {"a": 1}, True, "nan", "1e400"] + ([1.5] if f.kind is int else [])
    if f.minimum is not None:
        out.append(f.minimum - 1)
    if f.maximum is not None:
        out.append(f.maximum + 1)
    return out


def bad_texts(f: Field) -> list[str]:
    """Infotext values (no commas or quotes: they survive the hosts' parser) ``f`` refuses."""
    if f.kind is bool:
        out = ["maybe", "yes", "1", "on"]
    elif f.kind is str:
        out = ["bogus", "Fused"] if f.choices else []
    else:
        out = ["abc", "nan", "inf", "1e400"] + (["1.5", f"{f.default}.0"] if f.kind is int else [])
    if f.minimum is not None:
        out.append(str(f.minimum - 1))
    if f.maximum is not None:
        out.append(str(f.maximum + 1))
    return out


# Each maker: (rng) -> (fields of the body, what the answer must name)
def named_bad_value(rng: random.Random) -> tuple[dict, str]:
    f = rng.choice(FIELDS)
    if f.key in NAME_FIELDS and rng.random() < 0.5:
        return {"alwayson_scripts": {TITLE: {"args": [{"resample": True, f.key: "No Such One"}]}}}, f.key
    return {"alwayson_scripts": {TITLE: {"args": [{f.key: rng.choice(bad_values(f))}]}}}, f.key


def positional_bad_value(rng: random.Random) -> tuple[dict, str]:
    i = rng.randrange(len(FIELDS))
    args = [f.default for f in FIELDS[:i]] + [rng.choice(bad_values(FIELDS[i]))]
    return {"alwayson_scripts": {TITLE: {"args": args}}}, FIELDS[i].key


def argument_shapes(rng: random.Random) -> tuple[dict, str]:
    return rng.choice([
        ({"alwayson_scripts": {TITLE: {"args": [{"resample_tile": 512}]}}}, "resample_tile"),
        ({"alwayson_scripts": {TITLE: {"args": [{"hypertile": True, "hypertile_size": 256}]}}}, "hypertile_size"),
        ({"alwayson_scripts": {TITLE: {"args": [False] * (len(FIELDS) + rng.randint(1, 9))}}}, "positional args"),
        ({"alwayson_scripts": {TITLE: {"args": [{"hypertile": True}, True]}}}, "not both"),
        ({"alwayson_scripts": {TITLE: [True]}}, 'alwayson_scripts["'),
        ({"alwayson_scripts": {TITLE: {"args": "x"}}}, 'alwayson_scripts["'),
        ({"alwayson_scripts": {TITLE: {"args": {"hypertile": True}}}}, 'alwayson_scripts["'),
        ({"alwayson_scripts": {"TILE SAMPLER": 5}}, 'alwayson_scripts["'),
        ({"alwayson_scripts": {TITLE: {"args": [{"resample": True, "resample_tile_size": 1024}]}}},
         "not smaller than the image"),
        ({"width": 512, "alwayson_scripts": {TITLE: {"args": [{"resample": True, "resample_tile_size": 256,
                                                                "resample_overlap": 256}]}}}, "resample_overlap"),
    ])


def infotext_bad_value(rng: random.Random) -> tuple[dict, str]:
    f = rng.choice(GROUP_FIELDS)
    switch_key, switch_text = SWITCH[f.group]
    pairs = [] if f.key == switch_key else [f"{switch_text}: True"]
    if f.key in NAME_FIELDS:
        return {"infotext": f"{INFOTEXT_LINE}, {', '.join(pairs + [f'{f.infotext}: No Such One'])}"}, f.key
    pairs.append(f"{f.infotext}: {rng.choice(bad_texts(f))}")
    return {"infotext": f"{INFOTEXT_LINE}, {', '.join(pairs)}"}, f"infotext key {f.infotext!r}"


HOST_FIELDS = [("width", "abc"), ("height", [64]), ("steps", "x"), ("seed", {"a": 1}),
               ("cfg_scale", "high"), ("batch_size", "two"), ("n_iter", []), ("restore_faces", "maybe"),
               ("alwayson_scripts", "x"), ("script_args", "x"), ("override_settings", "x")]


def host_field_bad_value(rng: random.Random, tab: str) -> tuple[dict, str]:
    choices = HOST_FIELDS + ([("enable_hr", "maybe"), ("hr_scale", "x")] if tab == "txt2img"
                             else [("init_images", "x"), ("denoising_strength", "half")])
    name, value = rng.choice(choices)
    fields: dict[str, Any] = {name: value}
    if name == "hr_scale":
        fields["enable_hr"] = True
    if name != "alwayson_scripts":
        ours = rng.choice(VALID_OURS + ([{"hypertile_tile_size": 4096}], [True, True, "big"]))
        fields["alwayson_scripts"] = {TITLE: {"args": ours}}
    return fields, name


def host_refusal_after_ours(rng: random.Random) -> tuple[dict, str]:
    """Our args are fine; the host itself refuses the request (in its endpoint)."""
    ours = {TITLE: {"args": rng.choice(VALID_OURS)}}
    return rng.choice([
        ({"script_name": "No Such Script", "alwayson_scripts": ours}, "No Such Script"),
        ({"alwayson_scripts": dict(ours, **{"no such script": {"args": []}})}, "no such script"),
    ])


MAKERS: list[Callable] = [named_bad_value, positional_bad_value, argument_shapes, infotext_bad_value,
                          host_field_bad_value, host_refusal_after_ours]


def cases(count: int = COUNT, seed: int = SEED) -> list[tuple[str, dict, str]]:
    """``count`` malformed requests: (path, body, what the answer must name)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        tab = "txt2img" if i % 2 == 0 else "img2img"
        maker = MAKERS[(i // 2) % len(MAKERS)]
        fields, needle = maker(rng, tab) if maker is host_field_bad_value else maker(rng)
        body = dict(TINY)
        if tab == "img2img":
            body.update(init_images=[_png()], denoising_strength=0.5)
        body.update(fields)
        out.append((f"/sdapi/v1/{tab}", body, needle))
    return out


def test_malformed_requests_get_4xx_naming_the_problem(server):
    failures = []
    for i, (path, body, needle) in enumerate(cases()):
        answer = server.call(path, body, timeout=300)
        if answer.status >= 500 or answer.status < 400 or needle not in str(answer.body):
            failures.append(f"#{i} {path} {answer.status}: wanted {needle!r} in {str(answer.body)[:300]} "
                            f"(request: {str({k: v for k, v in body.items() if k != 'init_images'})[:300]})")
    assert not failures, f"{len(failures)} of {COUNT} answers wrong:\n" + "\n".join(failures[:15])


def test_a_normal_job_runs_afterwards(server):
    answer = server.call("/sdapi/v1/txt2img", dict(TINY, alwayson_scripts={TITLE: {"args": [{"hypertile": True, "hypertile_tile_size": 64}]}}))
    assert answer.status == 200, answer.body
    assert "HyperTile: True" in answer.infotext and len(answer.images) == 1


def test_the_cases_cover_both_tabs_and_every_kind():
    drawn = cases(240, 0)
    assert len(drawn) == 240 and {p for p, _, _ in drawn} == {"/sdapi/v1/txt2img", "/sdapi/v1/img2img"}
    assert sum("infotext" in b for _, b, _ in drawn) >= 30
    assert sum(isinstance(b.get("alwayson_scripts", {}).get(TITLE, {}), dict)
               and isinstance(b.get("alwayson_scripts", {}).get(TITLE, {}).get("args"), list)
               and b["alwayson_scripts"][TITLE]["args"] and not isinstance(b["alwayson_scripts"][TITLE]["args"][0], dict)
               for _, b, _ in drawn if isinstance(b.get("alwayson_scripts"), dict)) >= 30
