"""The Tile Sampler's X/Y/Z plot axes, driven through the WebUI's own "X/Y/Z plot" script.

Opt-in: TILESAMPLER_WEBUI_URL=http://127.0.0.1:PORT (a WebUI started with --api, with this
extension; on A1111 the server must build its UI, or the X/Y/Z script has no axis list).
An axis must really set the option: each cell of the plot equals the same job run on its
own with that option, and says so in its infotext.
"""
import copy
import os

import pytest

from webui import TITLE

STEPS = int(os.environ.get("TILESAMPLER_IT_STEPS", "4"))
XYZ = "x/y/z plot"
BASE = {"prompt": "a harbour town, detailed", "negative_prompt": "blurry", "steps": STEPS,
        "width": 768, "height": 512, "seed": 91, "sampler_name": "Euler", "cfg_scale": 5}
RESAMPLE = {"resample": True, "resample_mode": "fused", "resample_tile_size": 512,
            "resample_overlap": 64, "resample_batch": 2, "resample_denoise": 0.5,
            "resample_steps": STEPS, "resample_cfg": 5, "resample_sampler": "Euler"}
X_LABEL, X_VALUES = "[Tile Sampler] Resample tile size", [256, 384]
Y_LABEL, Y_VALUES = "[Tile Sampler] Resample mode", ["independent", "moving"]


def payload(named, **overrides):
    body = copy.deepcopy(BASE)
    body.update(overrides)
    body["alwayson_scripts"] = {TITLE: {"args": [named]}}
    return body


def axis_index(webui, label):
    scripts = webui.call("/sdapi/v1/script-info").body
    xyz = [s for s in scripts if s["name"] == XYZ and not s["is_img2img"]]
    if not xyz:
        pytest.skip(f"this WebUI has no {XYZ!r} script")
    choices = xyz[0]["args"][0].get("choices") or []
    if label not in choices:
        pytest.fail(f"{label!r} is not an X/Y/Z axis here; the axes are {choices}")
    return choices.index(label)


def xyz_args(x_type, x_values, y_type, y_values):
    # x/y/z type, values, dropdown values; legend, lone images, sub-grids, keep -1 seeds,
    # vary seeds x/y/z, margin, "use text inputs instead of dropdowns" (on: the values of
    # an axis with choices are read from the text too) (scripts/xyz_grid.py, ui() of
    # A1111 1.10 / Forge 2)
    return [x_type, x_values, [], y_type, y_values, [], 0, "", [],
            True, True, False, False, False, False, False, 0, True]


@pytest.fixture(scope="module")
def plot(webui):
    x_type, y_type = axis_index(webui, X_LABEL), axis_index(webui, Y_LABEL)
    body = payload(RESAMPLE, script_name=XYZ,
                   script_args=xyz_args(x_type, ", ".join(map(str, X_VALUES)),
                                        y_type, ", ".join(Y_VALUES)))
    answer = webui.call("/sdapi/v1/txt2img", body)
    assert answer.status == 200, answer.body
    return answer


def cell_index(answer, tile, mode):
    """The image of one cell, found by its infotext (the grid is image 0)."""
    infotexts = answer.info["infotexts"]
    hits = [i for i, text in enumerate(infotexts) if i > 0
            and f"Resample tile size: {tile}," in text and f"Resample mode: {mode}," in text]
    assert len(hits) == 1, infotexts
    return hits[0]


def test_the_plot_has_one_image_per_cell_each_with_its_values(plot):
    assert len(plot.images) == 1 + len(X_VALUES) * len(Y_VALUES)      # the grid, then the cells
    cells = {(tile, mode): cell_index(plot, tile, mode) for tile in X_VALUES for mode in Y_VALUES}
    assert sorted(cells.values()) == list(range(1, 1 + len(cells)))
    assert len({plot.digest(i) for i in cells.values()}) == len(cells)  # the axes change the image


@pytest.mark.parametrize("tile,mode", [(256, "independent"), (384, "moving")])
def test_a_cell_equals_the_same_job_run_alone(webui, plot, tile, mode):
    alone = webui.call("/sdapi/v1/txt2img",
                       payload(dict(RESAMPLE, resample_tile_size=tile, resample_mode=mode)))
    assert alone.status == 200, alone.body
    assert f"Resample tile size: {tile}," in alone.infotext
    assert plot.digest(cell_index(plot, tile, mode)) == alone.digest()


def test_a_moving_cell_with_dpm_adaptive_says_why_its_resample_is_off(webui):
    """A job that reaches the script without the API's check (here: the mode set by an
    axis) gets the refusal as a note in its info, and its resample is off; the fused cell
    runs."""
    y_type = axis_index(webui, Y_LABEL)
    named = dict(RESAMPLE, resample_tile_size=256, resample_sampler="same as main")
    body = payload(named, width=512, height=256, sampler_name="DPM adaptive", script_name=XYZ,
                   script_args=xyz_args(0, "", y_type, "fused, moving"))
    answer = webui.call("/sdapi/v1/txt2img", body)
    assert answer.status == 200, answer.body
    cells = answer.info["infotexts"][1:]
    refused = [t for t in cells if "cannot run the moving mode" in t]
    assert len(cells) == 2 and len(refused) == 1, cells
    assert "The latent tile resample is off for this job" in refused[0]
