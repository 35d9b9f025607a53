"""The host's variety, through the HTTP API of a real WebUI (A1111 1.10 or Forge 2): every
sampler and schedule type it lists, batch size and batch count > 1 (each image equal to
its own single run), hires with an SDE sampler, a refiner switch, a Reload UI, step
counts, other tilers in the same job.

Opt-in: TILESAMPLER_WEBUI_URL (a server with its UI, so that Reload UI exists). Forge on a
CPU is slow: TILESAMPLER_SAMPLERS=few runs one sampler of each kind instead of all.
"""
import copy
import os

import pytest

from webui import TITLE

STEPS = int(os.environ.get("TILESAMPLER_IT_STEPS", "4"))
FEW = os.environ.get("TILESAMPLER_SAMPLERS", "all") == "few"
KINDS = ["Euler", "DPM++ 2M", "DPM++ 2M SDE", "DPM adaptive", "Restart", "DDIM", "UniPC", "LCM"]
BASE = {"prompt": "a lighthouse, detailed", "negative_prompt": "blurry", "steps": STEPS,
        "width": 512, "height": 256, "seed": 4242, "sampler_name": "Euler", "cfg_scale": 5}
RESAMPLE = {"resample": True, "resample_tile_size": 256, "resample_overlap": 64,
            "resample_denoise": 0.5, "resample_steps": 2 * STEPS, "resample_cfg": 5}


def payload(named=None, **overrides):
    body = copy.deepcopy(BASE)
    body.update(overrides)
    if named is not None:
        body["alwayson_scripts"] = {TITLE: {"args": [named]}}
    return body


def samplers(webui):
    names = [s["name"] for s in webui.call("/sdapi/v1/samplers").body]
    return [n for n in KINDS if n in names] if FEW else names


def pixel_difference(a, b, index_a=0, index_b=0):
    """(largest, mean) absolute difference of two images' pixels, in 0..255 steps."""
    import numpy as np
    x, y = a.pixels(index_a).astype(np.int16), b.pixels(index_b).astype(np.int16)
    assert x.shape == y.shape, (x.shape, y.shape)
    d = np.abs(x - y)
    return int(d.max()), float(d.mean())


def close_enough(a, b, index_a=0, index_b=0):
    """Same picture up to the float noise of batched vs single U-Net calls (the WebUI's own
    batch of 2 differs from single runs by 1 step in a few pixels)."""
    largest, mean = pixel_difference(a, b, index_a, index_b)
    return largest <= 4 and mean <= 0.05


def last_job(webui):
    answer = webui.call("/tilesampler/v1/jobs/last")
    assert answer.status == 200, answer.body
    return answer.body


@pytest.mark.parametrize("where", ["after", "during"])
@pytest.mark.parametrize("mode", ["independent", "fused", "moving"])
def test_every_sampler_resamples_and_the_tile_batch_changes_nothing(webui, mode, where):
    """512x256 from 256 px tiles: 3 tiles, in batches of 1 and of 3. Never a 500; a
    sampler that cannot run the pass is a 422 with a sentence."""
    failures, refused = [], []
    for name in samplers(webui):
        answers = {}
        for batch in (1, 3):
            named = dict(RESAMPLE, resample_mode=mode, resample_where=where, resample_batch=batch,
                         resample_sampler=name)
            answers[batch] = webui.call("/sdapi/v1/txt2img", payload(named, sampler_name=name))
        statuses = {b: a.status for b, a in answers.items()}
        if any(s >= 500 for s in statuses.values()):
            failures.append(f"{name}: {statuses} {answers[1].body if statuses[1] >= 500 else answers[3].body}")
            continue
        if statuses == {1: 422, 3: 422}:
            refused.append((name, str(answers[1].body)))
            continue
        if statuses != {1: 200, 3: 200}:
            failures.append(f"{name}: {statuses}")
            continue
        if not close_enough(answers[1], answers[3]):
            again = webui.call("/sdapi/v1/txt2img", payload(
                dict(RESAMPLE, resample_mode=mode, resample_where=where, resample_batch=1,
                     resample_sampler=name), sampler_name=name))
            if close_enough(again, answers[1]):     # repeatable, so the batch changed it
                failures.append(f"{name}: the image depends on the tile batch")
    assert not failures, failures
    unexpected = [(name, text) for name, text in refused
                  if not any(name == who and needle in text for who, needle in allowed_refusals(mode))]
    assert not unexpected, f"refused without one of the known reasons: {unexpected}"


def allowed_refusals(mode):
    """(sampler, words of its 422) the host may answer instead of a pass: UniPC when the pass
    runs fewer steps than its order (TILESAMPLER_IT_STEPS=2 gives 2), and DPM adaptive in
    the moving mode (its step-size control sees the seams move)."""
    allowed = [("UniPC", "resample_sampler UniPC needs at least")]
    if mode == "moving":
        allowed.append(("DPM adaptive", "cannot run the moving mode"))
    return allowed


def test_every_schedule_type_with_one_sampler(webui):
    failures = []
    for scheduler in [s["label"] for s in webui.call("/sdapi/v1/schedulers").body]:
        named = dict(RESAMPLE, resample_mode="independent", resample_sampler="DPM++ 2M",
                     resample_scheduler=scheduler)
        answer = webui.call("/sdapi/v1/txt2img", payload(named, scheduler=scheduler))
        if answer.status != 200:
            failures.append(f"{scheduler}: {answer.status} {answer.body}")
        elif f"Resample scheduler: {scheduler}" not in answer.infotext:
            failures.append(f"{scheduler}: not in the infotext {answer.infotext}")
    assert not failures, failures


def test_the_hosts_own_spellings_of_samplers_and_schedule_types_are_accepted(webui):
    named = dict(RESAMPLE, resample_mode="fused", resample_sampler="k_euler",
                 resample_scheduler="karras")
    answer = webui.call("/sdapi/v1/txt2img", payload(named))
    assert answer.status == 200, answer.body
    assert "Resample sampler: Euler" in answer.infotext
    assert "Resample scheduler: Karras" in answer.infotext
    named = dict(RESAMPLE, resample_mode="fused", resample_sampler="DPM++ 2M Karras")
    answer = webui.call("/sdapi/v1/txt2img", payload(named))
    assert answer.status == 200, answer.body
    assert "Resample sampler: DPM++ 2M" in answer.infotext and "Resample scheduler: Karras" in answer.infotext


def test_unipc_with_fewer_steps_than_its_order_is_refused_with_a_sentence(webui):
    named = dict(RESAMPLE, resample_sampler="UniPC", resample_steps=4, resample_denoise=0.25)
    answer = webui.call("/sdapi/v1/txt2img", payload(named))
    assert answer.status == 422, answer.body
    assert "UniPC needs at least" in str(answer.body)


@pytest.mark.parametrize("named", [
    dict(RESAMPLE, resample_mode="independent", hypertile=True, hypertile_tile_size=128,
         hypertile_max_depth=1, resample_sampler="DPM++ 2M SDE"),
    dict(RESAMPLE, resample_mode="moving", resample_where="during", resample_seed=777),
], ids=["independent-sde-hypertile", "moving-during-seed"])
def test_batch_size_and_count_each_image_equals_its_single_run(webui, named):
    batch = webui.call("/sdapi/v1/txt2img", payload(named, seed=100, batch_size=2, n_iter=2))
    assert batch.status == 200, batch.body
    assert len(batch.images) == 4
    for i in range(4):
        alone = dict(named)
        if named.get("resample_seed", -1) >= 0:
            alone["resample_seed"] = named["resample_seed"] + i   # as the WebUI counts seeds
        single = webui.call("/sdapi/v1/txt2img", payload(alone, seed=100 + i))
        assert single.status == 200, single.body
        assert close_enough(batch, single, i), \
            f"image {i + 1} differs from its own run: {pixel_difference(batch, single, i)}"


def img2img(webui, source, named, **overrides):
    """An img2img request after the same txt2img request: the WebUI's VAE encode draws
    from torch's global generator, which that request leaves in one state."""
    webui.call("/sdapi/v1/txt2img", payload(None, width=256, height=256, steps=1))
    return webui.call("/sdapi/v1/img2img", payload(named, init_images=[source],
                                                   denoising_strength=0.6, **overrides))


def test_img2img_batch_count_each_image_equals_its_single_run(webui):
    source = webui.call("/sdapi/v1/txt2img", payload(None)).body["images"][0]
    for mode, where in (("independent", "after"), ("moving", "during"), ("fused", "after")):
        named = dict(RESAMPLE, resample_mode=mode, resample_where=where)
        batch = img2img(webui, source, named, seed=100, n_iter=2)
        assert batch.status == 200 and len(batch.images) == 2, batch.body
        for i in range(2):
            single = img2img(webui, source, named, seed=100 + i)
            assert close_enough(batch, single, i), \
                f"{mode}/{where}: image {i + 1} differs: {pixel_difference(batch, single, i)}"


def test_img2img_batch_size_adds_no_dependence_between_images(webui):
    """At batch size 2 the WebUI's own img2img is not per-image reproducible (its VAE encode
    draws one noise for the batch); the resample must not add a dependence of its own."""
    source = webui.call("/sdapi/v1/txt2img", payload(None)).body["images"][0]
    off = {"enabled": False}
    plain_batch = img2img(webui, source, off, seed=100, batch_size=2)
    plain_single = img2img(webui, source, off, seed=101)
    named = dict(RESAMPLE, resample_mode="independent", resample_denoise=0.0)
    assert plain_batch.status == plain_single.status == 200
    if not close_enough(plain_batch, plain_single, 1):
        same_start = img2img(webui, source, named, seed=100, batch_size=2)
        assert same_start.digest(1) == plain_batch.digest(1)   # denoise 0 is the identity
        pytest.skip("this WebUI's img2img gives image 2 of a batch another start than a "
                    "single run (VAE encode noise), so only the identity was checked")
    named["resample_denoise"] = 0.5
    batch = img2img(webui, source, named, seed=100, batch_size=2)
    single = img2img(webui, source, named, seed=101)
    assert close_enough(batch, single, 1), pixel_difference(batch, single, 1)


def test_hires_then_resample_with_an_sde_sampler(webui):
    hires = dict(hr_additional_modules=["Use same choices"], width=256, height=192, enable_hr=True,
                 hr_scale=2, hr_second_pass_steps=STEPS, denoising_strength=0.5,
                 hr_upscaler="Latent", hr_cfg=5, sampler_name="DPM++ 2M SDE")
    named = dict(RESAMPLE, resample_mode="independent", resample_batch=2, resample_sampler="DPM++ 2M SDE")
    answer = webui.call("/sdapi/v1/txt2img", payload(named, **hires))
    assert answer.status == 200, answer.body
    assert "Hires upscale: 2" in answer.infotext and "Resample sampler: DPM++ 2M SDE" in answer.infotext
    again = webui.call("/sdapi/v1/txt2img", payload(dict(named, resample_batch=1), **hires))
    assert again.status == 200 and close_enough(answer, again)


def test_the_pass_runs_exactly_the_seed_nodes_steps(webui):
    """20 steps at denoise 0.5: 10 Euler steps per tile (the WebUI's img2img would run 11),
    whatever its "img2img fix steps" setting."""
    named = dict(RESAMPLE, resample_mode="independent", resample_steps=20, resample_denoise=0.5,
                 resample_sampler="Euler", resample_batch=1)
    for fix in (False, True):
        answer = webui.call("/sdapi/v1/txt2img", payload(named, override_settings={"img2img_fix_steps": fix}))
        assert answer.status == 200, answer.body
        stages = last_job(webui)["stages"]
        resample = stages["resample"]
        assert (resample["runs"], resample["evaluations"]) == (3, 3 * 10), stages


def refiner_name(webui):
    names = [m["title"] for m in webui.call("/sdapi/v1/sd-models").body]
    current = webui.call("/sdapi/v1/options").body.get("sd_model_checkpoint", "")
    others = [n for n in names if n != current and n.split(" ")[0] != current.split(" ")[0]]
    if not others:
        pytest.skip("a refiner test needs a second checkpoint on this server")
    return others[0]


def hypertile_tiled(webui):
    return last_job(webui).get("hypertile", {}).get("tiled", 0)


@pytest.mark.parametrize("mode", ["independent", "fused"])
def test_a_refiner_switch_keeps_hypertile_and_the_resample_on_the_refiner(webui, mode):
    refiner = refiner_name(webui)
    named = dict(RESAMPLE, resample_mode=mode, resample_where="during", hypertile=True,
                 hypertile_tile_size=128, hypertile_swap_size=1, hypertile_max_depth=1)
    alone = webui.call("/sdapi/v1/txt2img", payload(named))
    assert alone.status == 200, alone.body
    tiled_alone = hypertile_tiled(webui)
    switched = webui.call("/sdapi/v1/txt2img", payload(named, refiner_checkpoint=refiner,
                                                       refiner_switch_at=0.5))
    assert switched.status == 200, switched.body
    assert "Refiner:" in switched.infotext and "Resample: True" in switched.infotext
    assert hypertile_tiled(webui) == tiled_alone > 0, "the refiner's U-Net was not tiled throughout"
    stages = last_job(webui)["stages"]
    assert stages["main"]["evaluations"] == STEPS and stages["resample"]["runs"] >= 1, stages


def test_reload_ui_then_a_refiner_job_is_still_tiled(webui):
    refiner = refiner_name(webui)
    named = dict(RESAMPLE, resample_mode="fused", resample_where="during", hypertile=True,
                 hypertile_tile_size=128, hypertile_swap_size=1, hypertile_max_depth=1)
    before = webui.call("/sdapi/v1/txt2img", payload(named, refiner_checkpoint=refiner, refiner_switch_at=0.5))
    assert before.status == 200, before.body
    tiled_before = hypertile_tiled(webui)
    webui.reload_ui()
    after = webui.call("/sdapi/v1/txt2img", payload(named, refiner_checkpoint=refiner, refiner_switch_at=0.5))
    assert after.status == 200, after.body
    assert hypertile_tiled(webui) == tiled_before > 0
    assert after.digest() == before.digest()


def test_a1111_builtin_hypertile_is_muted_while_ours_runs(webui):
    if webui.is_forge():
        pytest.skip("Forge 2 has no built-in HyperTile")
    named = {"hypertile": True, "hypertile_tile_size": 128, "hypertile_max_depth": 1}
    settings = {"hypertile_enable_unet": True}
    both = webui.call("/sdapi/v1/txt2img", payload(named, override_settings=settings))
    ours = webui.call("/sdapi/v1/txt2img", payload(named))
    assert both.status == ours.status == 200, both.body
    assert "built-in HyperTile" in both.infotext
    assert both.digest() == ours.digest(), "A1111's HyperTile still ran on top of ours"


def test_forge_multidiffusion_runs_alone_and_the_note_says_so(webui):
    if not webui.is_forge():
        pytest.skip("MultiDiffusion Integrated is Forge's")
    body = payload(dict(RESAMPLE, resample_mode="fused"))
    body["alwayson_scripts"]["MultiDiffusion Integrated"] = {"args": [True, "MultiDiffusion", 256, 256, 64, 4]}
    answer = webui.call("/sdapi/v1/txt2img", body)
    assert answer.status == 200, answer.body
    assert "MultiDiffusion is on in this job" in answer.infotext
