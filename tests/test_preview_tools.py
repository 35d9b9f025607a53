"""The plan of the Script tab's "Tile Sampler tools" (``POST /tilesampler/v1/plan`` with
``script_name`` and ``script_args``): its stages are the ones the tools' jobs run, from the
same core (``refine_upscale.plan_job``, the tiler's ``TilePlan``, ``cell_geometry``,
``step_range``, ``VariationRows``), its bad values are the jobs' sentences, and the route
answers it behind the hosts' auth."""
from __future__ import annotations

import base64
import io
import json
import math

import pytest

from lib_tilesampler.preview import PlanRequestError, plan_job
from lib_tilesampler.preview_text import tool_lines
from lib_tilesampler.tiling.passes import TilePlan
from lib_tilesampler.tiling.plan import batch_tiles
from lib_tilesampler.tools.mask_grid_job import VariationRows, step_range
from lib_tilesampler.tools.options import parse_tool_args, tool_defaults
from lib_tilesampler.tools.refine_upscale import StageSettings, tiler_resample_values
from lib_tilesampler.tools.refine_upscale_check import plan_for_check

TOOLS = "Tile Sampler tools"


def tool_request(tab="txt2img", width=1024, height=1024, steps=30, script_args=None, **fields):
    return {"tab": tab, "width": width, "height": height, "steps": steps,
            "script_name": "tile sampler tools", "script_args": script_args or [{}], **fields}


def stage(plan, name):
    return next(s for s in plan["stages"] if s["name"] == name)


def values(**changes):
    return {**tool_defaults(), **changes}


def test_refine_upscale_plans_the_jobs_base_refiner_upscale_and_tiles():
    args = {"refiner": "sdxl_refiner", "upscale_by": 2.0, "tiler_tile_size": 768, "tiler_overlap": 64}
    plan = plan_job(tool_request(batch_size=2, script_args=[args]), seconds_per_unit=0.1)
    job = plan_for_check(values(**args), StageSettings(30, 7.0, "Euler", "Automatic"), 1024, 1024,
                         True, None)
    assert [s["name"] for s in plan["stages"]] == ["base", "refiner", "upscale", "resample"]
    base, refiner, upscale, tiled = plan["stages"]
    assert (base["steps"], refiner["steps"]) == (job.base.steps, job.refiner.steps) == (14, 17)
    assert base["work_per_evaluation"] == 4.0 * 2        # 1024² is 4 units, 2 images a batch
    assert (upscale["width"], upscale["height"], upscale["work"]) == (2048, 2048, 0.0)
    tiles = job.tile_plan.tiles(256, 256)
    assert plan["tool"]["tiles"] == len(tiles) == job.tile_count()
    assert plan["tool"]["tile"] == [tiles[0].w * 8, tiles[0].h * 8]
    assert tiled["steps"] == job.tiler.steps == 8 and tiled["runs"] == len(tiles)  # independent, batch 1
    area = sum(t.h * t.w for t in tiles)
    assert tiled["work"] == pytest.approx(8 * area / 4096 * 2)
    assert plan["total"]["work"] == pytest.approx(sum(s["work"] for s in plan["stages"]))
    assert plan["total"]["eta_seconds"] == pytest.approx(plan["total"]["work"] * 0.1, abs=0.05)
    assert plan["total"]["plain_work"] == 30 * 4 * 2     # the same request without the Script
    assert (plan["width"], plan["height"]) == (2048, 2048)


def test_the_plans_tiles_are_the_tilers_tile_plan_in_every_mode():
    for mode in ("independent", "fused", "moving"):
        v = values(upscale_by=1.5, tiler_mode=mode, tiler_tile_size=512, tiler_batch=2)
        plan = plan_job(tool_request(width=1000, height=664, script_args=[v]))
        tile_plan = TilePlan.from_values(tiler_resample_values(v), 30)
        w, h = plan["tool"]["output"]
        tiles = tile_plan.tiles(h // 8, w // 8)
        tiled = stage(plan, "resample")
        assert plan["tool"]["mode"] == mode and (w, h) == (1496, 992)
        if mode == "independent":
            assert tiled["runs"] == len(batch_tiles(tiles, 2))
        elif mode == "fused":
            assert (tiled["runs"], tiled["unet_calls"]) == (1, 8 * len(batch_tiles(tiles, 2)))


def png_base64(width, height):
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_img2img_without_refine_upscales_the_input_image_and_tiles_it():
    args = [{"upscale_by": 4.0, "tiler_tile_size": 512, "tiler_overlap": 64}]
    plan = plan_job(tool_request("img2img", 64, 64, 20, args, init_images=[png_base64(300, 200)]))
    assert [s["name"] for s in plan["stages"]] == ["upscale", "resample"]
    assert plan["tool"]["input"] == [300, 200] and plan["tool"]["output"] == [1200, 800]
    page = plan_job(tool_request("img2img", 64, 64, 20, args, init_size=[300, 200]))
    assert page["stages"] == plan["stages"]
    sliders = plan_job(tool_request("img2img", 512, 256, 20, args))    # input unknown: the size
    assert sliders["tool"]["input_from"] == "size" and sliders["tool"]["output"] == [2048, 1024]


def test_img2img_refine_starts_the_base_at_the_main_denoise():
    plan = plan_job(tool_request("img2img", 512, 512, 20, [{"img2img_refine": True}],
                                 denoising_strength=0.75))
    job = plan_for_check(values(img2img_refine=True), StageSettings(20, 7.0, "Euler", "Automatic"),
                         512, 512, True, 0.75)
    assert stage(plan, "base")["steps"] == job.base.steps == 14 - 7
    plan = plan_job(tool_request("img2img", 512, 512, 20, [{"img2img_refine": True}],
                                 denoising_strength=0.4))
    assert [s["name"] for s in plan["stages"]] == ["refiner", "upscale", "resample"]


def test_tiler_denoise_0_plans_the_upscale_only():
    plan = plan_job(tool_request(script_args=[{"tiler_denoise": 0.0, "upscale_by": 2}]))
    assert [s["name"] for s in plan["stages"]] == ["base", "refiner", "upscale"]


def test_positional_script_args_plan_as_the_named_dict():
    named = {"upscale_by": 2.0, "tiler_mode": "fused"}
    positional = list(values(**named).values())
    assert plan_job(tool_request(script_args=positional)) == plan_job(tool_request(script_args=[named]))


def test_another_script_or_none_plans_the_main_job():
    other = plan_job(tool_request(script_name="X/Y/Z plot"))
    assert other["tool"] is None and [s["name"] for s in other["stages"]] == ["main"]


@pytest.mark.parametrize("args,words", [
    ({"upscale_by": 11}, "Tile Sampler tools: upscale_by must be at most 10.0"),
    ({"bogus": 1}, "Tile Sampler tools: unknown key(s) 'bogus'"),
    ({"base_stop": 40}, "Tile Sampler tools: the base must stop after a step from 1 to 30"),
    ({"tiler_tile_size": 256, "tiler_overlap": 256}, "must be smaller than"),
    ({"base_sampler": "DDIM"}, "'DDIM' does not"),
    ({"tool": "mask_grid", "columns": 7}, "Tile Sampler tools: Mask grid: a width of 1024 px does not split"),
    ({"tool": "mask_grid", "columns": 2, "start_step": 5, "end_step": 5}, "end at step (5) must be after start"),
    ({"tool": "mask_grid", "rows": 4, "columns": 4, "feather": 200}, "feather of 200 px does not fit")])
def test_bad_tool_values_are_the_jobs_sentences(args, words):
    with pytest.raises(PlanRequestError) as error:
        plan_job(tool_request(script_args=[args]))
    assert words in str(error.value)
    if "bogus" in args or "upscale_by" in args:       # the API check's own words
        with pytest.raises(Exception) as parsed:
            parse_tool_args([args])
        assert str(error.value) == f"{TOOLS}: {parsed.value}"


@pytest.mark.parametrize("mode,per_batch", [("Sample then Fork", 4), ("Fork then Sample", 4),
                                            ("Fork then Sample", 5)])
def test_mask_grid_variations_sample_the_step_range_in_the_jobs_batches(mode, per_batch):
    args = {"tool": "mask_grid", "rows": 2, "columns": 3, "mode": mode, "cells_per_batch": per_batch,
            "start_step": 2, "end_step": 12}
    plan = plan_job(tool_request("img2img", 768, 512, 20, [args], batch_size=2, n_iter=2,
                                 denoising_strength=0.6))
    span = step_range(20, 0.6, 2, 12)
    rows = VariationRows(mode, 6, 4, per_batch)
    batch, batches = rows.host_batches(2, 2)
    variations = stage(plan, "variations")
    assert [s["name"] for s in plan["stages"]] == ["variations"]
    assert variations["steps"] == span.count == 10
    assert (variations["runs"], variations["evaluations"]) == (batches, 10 * batches)
    assert batches == (2 if mode == "Sample then Fork" else math.ceil(24 / per_batch))
    assert variations["work"] == pytest.approx(10 * 1.5 * rows.sampled_rows)
    assert plan["tool"]["outputs"] == 24 and plan["tool"]["cell"] == [256, 256]


def test_mask_grid_default_steps_are_the_hosts_img2img_steps():
    plan = plan_job(tool_request("img2img", 768, 512, 20, [{"tool": "mask_grid"}],
                                 denoising_strength=0.75))
    assert stage(plan, "variations")["steps"] == int(0.75 * 20) + 1


def test_a_txt2img_mask_grid_first_makes_one_source_with_hires_and_the_accordions_resample():
    accordion = [{"resample": True, "resample_mode": "fused"}]
    request = tool_request("txt2img", 768, 512, 20, [{"tool": "mask_grid", "columns": 3}],
                           enable_hr=True, hr_scale=2, batch_size=2, args=accordion)
    plan = plan_job(request)
    plain = plan_job({k: v for k, v in request.items() if k != "script_name"} | {"batch_size": 1})
    assert [s["name"] for s in plan["stages"]] == ["source", "source hires", "source resample",
                                                   "variations"]
    assert [s["work"] for s in plan["stages"][:3]] == [s["work"] for s in plain["stages"]]
    assert (stage(plan, "variations")["width"], stage(plan, "variations")["height"]) == (1536, 1024)
    assert plan["resample"]["enabled"] and plan["tool"]["steps_run"] == int(0.75 * 20) + 1


def test_the_accordions_resample_is_off_in_refine_upscale_and_on_img2img_variations():
    accordion = [{"resample": True}]
    plan = plan_job(tool_request(args=accordion))
    assert plan["resample"] == {"enabled": False, "off": "the Script's Refine & upscale tiles the image itself"}
    plan = plan_job(tool_request("img2img", 768, args=accordion, script_args=[{"tool": "mask_grid"}]))
    assert not plan["resample"]["enabled"]


def test_the_preview_line_says_the_stages_tiles_calls_work_and_eta():
    plan = plan_job(tool_request(script_args=[{"upscale_by": 2.0}]), seconds_per_unit=0.05)
    text = " ".join(tool_lines(plan))
    calls = " + ".join(f"{s['unet_calls']} {s['name']}" for s in plan["stages"] if s["unet_calls"])
    assert "base 14 + refiner 16 steps at 1024×1024 → upscale to 2048×2048 → 3×3 tiles of 768×768 px" in text
    assert f"Job: {calls} U-Net calls" in text and "ETA ≈ 14 s" in text
    assert f"{plan['total']['work'] / plan['total']['plain_work']:.2f}× a plain run" in text
    grid = plan_job(tool_request("img2img", 768, 512, script_args=[{"tool": "mask_grid",
                                                                     "mode": "Fork then Sample"}]))
    assert "3 cells" in " ".join(tool_lines(grid))


fastapi = pytest.importorskip("fastapi")


def test_the_route_answers_the_tools_plan_and_their_errors_once_prefixed():
    from fastapi.testclient import TestClient
    from test_api_routes import USER, make_app

    from lib_tilesampler.hosts.api_routes import add_api_route, plan_endpoint

    app, _ = make_app()
    add_api_route(app, "/tilesampler/v1/plan", plan_endpoint(plan_job), methods=["POST"])
    body = tool_request(script_args=[{"upscale_by": 2}])
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/tilesampler/v1/plan", json=body, auth=USER)
        assert answer.status_code == 200, answer.text
        assert answer.json() == json.loads(json.dumps(plan_job(body)))
        bad = client.post("/tilesampler/v1/plan", json=tool_request(script_args=[{"upscale_by": 11}]),
                          auth=USER)
        assert bad.status_code == 422
        assert bad.json()["detail"].startswith("Tile Sampler tools: upscale_by must be at most 10")


def test_bad_request_fields_and_script_args_that_are_no_list_name_the_field():
    for bad, words in (({"denoising_strength": "lots"}, "denoising_strength must be a number"),
                       ({"script_args": {"tool": "mask_grid"}}, "script_args must be a list")):
        with pytest.raises(PlanRequestError, match=words):
            plan_job({**tool_request("img2img", 768, 512, script_args=[{"tool": "mask_grid"}]), **bad})
