"""The plan the accordion and ``POST /tilesampler/v1/plan`` show, checked against the code
the job runs (TilePlan, window_count_options), the speed book, the job's timing, and the
route's handler inside a FastAPI app with the hosts' auth."""
from __future__ import annotations

import json

import pytest

from lib_tilesampler import params as P
from lib_tilesampler.hypertile.geometry import window_count_options
from lib_tilesampler.job import Job
from lib_tilesampler.preview import (PlanRequestError, plan_job, stage_work_per_evaluation,
                                     tiling_of)
from lib_tilesampler.preview_text import duration, preview_html
from lib_tilesampler.speed import SpeedBook
from lib_tilesampler.tiling.independent import steps_to_run
from lib_tilesampler.tiling.passes import TilePlan
from lib_tilesampler.tiling.plan import batch_tiles


def request(width=2048, height=2048, **args):
    return {"tab": "txt2img", "width": width, "height": height, "steps": 20, "args": args}


def test_labels_are_unique_so_ui_config_keys_are_too():
    labels = [f.label for f in P.FIELDS]
    assert len(labels) == len(set(labels)), labels


def test_the_readme_example_is_3x3_tiles_of_768_px_and_1_27_the_work():
    plan = plan_job(request(resample=True, resample_mode="fused"))
    r = plan["resample"]
    assert (r["grid"], r["tile"], r["overlap"], r["tiles"]) == ([3, 3], [768, 768], 128, 9)
    assert r["work_per_step"] == pytest.approx(1.27, abs=0.01)
    assert r["steps_run"] == steps_to_run(30, 0.25) == 8


@pytest.mark.parametrize("mode", ["independent", "fused"])
@pytest.mark.parametrize("size", [(2048, 2048), (1536, 1024), (1000, 776)])
def test_resample_tiles_are_the_jobs_tiles(mode, size):
    width, height = size
    values = {**P.defaults(), "enabled": True, "resample": True, "resample_mode": mode,
              "resample_tile_size": 512, "resample_batch": 2}
    plan = plan_job(request(width, height, resample=True, resample_mode=mode,
                            resample_tile_size=512, resample_batch=2))
    tiles = TilePlan.from_values(values, 30).tiles(-(-height // 8), -(-width // 8))
    stage = plan["stages"][-1]
    assert stage["name"] == "resample"
    assert plan["resample"]["tiles"] == len(tiles)
    assert plan["resample"]["tile"] == [tiles[0].w * 8, tiles[0].h * 8]
    assert plan["resample"]["batches"] == len(batch_tiles(tiles, 2))
    if mode == "independent":       # one sampler run of 8 steps per tile batch
        assert stage["runs"] == stage["evaluations"] // 8 == len(batch_tiles(tiles, 2))
        assert stage["unet_calls"] == 8 * len(batch_tiles(tiles, 2))
    else:                           # one run; every step calls the U-Net per tile batch
        assert stage["evaluations"] == 8 and stage["unet_calls"] == 8 * len(batch_tiles(tiles, 2))
    area = sum(t.h * t.w for t in tiles) * 8 * 8
    assert stage["work"] == pytest.approx(8 * area / (512 * 512), rel=1e-3)


def test_hypertile_windows_are_the_jobs_window_options():
    plan = plan_job(request(1024, 768, hypertile=True, hypertile_max_depth=2,
                            hypertile_scale_depth=True))
    levels = plan["hypertile"]["stages"][0]["levels"]
    assert [lv["tokens"] for lv in levels] == [[96, 128], [48, 64], [24, 32]]
    for lv in levels:
        least = 32 * 2 ** lv["depth"]
        assert lv["windows_h"] == window_count_options(lv["tokens"][0], least, 2)
        assert lv["windows_w"] == window_count_options(lv["tokens"][1], least, 2)


def test_hires_is_a_stage_at_the_final_size_and_the_resample_follows_it():
    body = {**request(512, 512, resample=True, resample_tile_size=512, hypertile=True),
            "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 10}
    plan = plan_job(body)
    assert [(s["name"], s["width"], s["height"], s["steps"]) for s in plan["stages"]] == [
        ("main", 512, 512, 20), ("hires", 1024, 1024, 10), ("resample", 1024, 1024, 8)]
    assert [s["name"] for s in plan["hypertile"]["stages"]] == ["main", "hires"]
    resized = plan_job({**body, "hr_resize_x": 1536, "hr_resize_y": 0})
    assert (resized["width"], resized["height"]) == (1536, 1536)


def test_during_tiles_the_main_pass_too():
    plan = plan_job(request(1024, 1024, resample=True, resample_tile_size=512,
                            resample_where="during", resample_mode="independent"))
    main = plan["stages"][0]
    assert main["tiling"]["mode"] == "fused"          # per-step tiles with a crossfade
    assert main["unet_calls"] == 20 * main["tiling"]["batches"]


def test_total_work_and_eta_from_the_measured_speed():
    plan = plan_job(request(512, 512), seconds_per_unit=0.5)
    assert plan["total"]["work"] == 20.0              # 20 evaluations of 512 x 512
    assert plan["total"]["eta_seconds"] == 10.0
    assert plan_job(request(512, 512))["total"]["eta_seconds"] is None
    batch = plan_job({**request(512, 512), "batch_size": 2, "n_iter": 3})
    assert batch["total"]["work"] == 120.0


def test_a_tile_too_large_is_said_not_raised():
    plan = plan_job(request(512, 512, resample=True))
    assert "not smaller than the image" in plan["resample"]["error"]
    assert [s["name"] for s in plan["stages"]] == ["main"]


@pytest.mark.parametrize("body, message", [
    ({"args": {"hypertile_tile_size": 4096}}, "hypertile_tile_size must be at most 2048"),
    ({"args": {"nope": 1}}, "unknown key"),
    ({"width": "wide"}, "width must be a number"),
    ({"tab": "extras"}, "tab must be"),
])
def test_bad_requests_raise_a_readable_error(body, message):
    with pytest.raises((P.ParamError, PlanRequestError), match=message):
        plan_job(body)


def test_alwayson_scripts_args_as_the_txt2img_api_takes_them():
    body = {"width": 2048, "height": 2048,
            "alwayson_scripts": {"Tile Sampler": {"args": [True, False, 256, 2, 0, False, False, True]}}}
    assert plan_job(body)["resample"]["tiles"] == 9


def test_preview_html_carries_the_plan_and_says_tiles():
    plan = plan_job(request(resample=True, hypertile=True), seconds_per_unit=0.01)
    hypertile, resample, cost = preview_html(plan)
    assert "3\u00d73 tiles of 768\u00d7768 px" in resample
    assert "level 0: 256\u00d7256 tokens" in hypertile
    assert "ETA" in cost
    data = cost.split('data-plan="', 1)[1].split('"', 1)[0]
    import html
    assert json.loads(html.unescape(data)) == json.loads(json.dumps(plan, sort_keys=True))
    assert duration(65) == "1 min 05 s" and duration(7) == "7 s"


def test_speed_book_averages_recent_jobs_per_model():
    book = SpeedBook(keep=2)
    assert book.seconds_per_unit("m") is None
    book.record("m", 10.0, 20.0)
    book.record("m", 30.0, 20.0)
    book.record("m", 2.0, 20.0)       # the first is forgotten
    assert book.seconds_per_unit("m") == pytest.approx(32 / 40)
    book.record(None, 1.0, 1.0)
    book.record("x", 0.0, 5.0)
    assert book.seconds_per_unit("x") is None


def test_job_times_evaluations_within_a_sampler_run_only():
    job = Job({})
    job.set_work(2.0)
    for t in (0.0, 1.0, 2.0):         # 3 evaluations: 2 timed intervals of 1 s
        job.count(now=t)
    job.new_run()                      # decode, upscale, ...: not timed
    job.stage = "resample"
    job.set_work(4.0)
    for t in (10.0, 13.0):
        job.count(now=t)
    assert job.measured() == (2.0 + 3.0, 2 * 2.0 + 1 * 4.0)
    assert job.stages["main"].evaluations == 3


def test_stage_work_per_evaluation_matches_the_plan():
    values = {**P.defaults(), "enabled": True, "resample": True, "resample_mode": "independent",
              "resample_tile_size": 512, "resample_batch": 2}
    plan = plan_job(request(1024, 1024, resample=True, resample_mode="independent",
                            resample_tile_size=512, resample_batch=2))
    stage = plan["stages"][-1]
    tile_plan = TilePlan.from_values(values, 30)
    per = stage_work_per_evaluation(1024, 1024, 1, tiling_of(tile_plan, 1024, 1024, after=True))
    assert per == pytest.approx(stage["work_per_evaluation"])
    assert stage_work_per_evaluation(512, 512, 2) == 2.0


fastapi = pytest.importorskip("fastapi")


def test_the_plan_route_is_behind_the_hosts_auth_and_answers_the_plan():
    from fastapi.testclient import TestClient
    from test_api_routes import USER, make_app

    from lib_tilesampler.hosts.api_routes import add_api_route, plan_endpoint

    app, _ = make_app()
    add_api_route(app, "/tilesampler/v1/plan", plan_endpoint(plan_job), methods=["POST"])
    body = request(resample=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/tilesampler/v1/plan", json=body).status_code == 401
        answer = client.post("/tilesampler/v1/plan", json=body, auth=USER)
        assert answer.status_code == 200, answer.text
        assert answer.json() == json.loads(json.dumps(plan_job(body)))
        bad = client.post("/tilesampler/v1/plan", json=request(resample_overlap=-8), auth=USER)
        assert bad.status_code == 422
        assert "resample_overlap must be at least 0" in bad.json()["detail"]
