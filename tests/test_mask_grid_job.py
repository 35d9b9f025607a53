"""Mask-grid job in WebUI terms: the KSamplerAdvanced step range on real schedules and a real
Euler run, rows / seeds / output order of both modes, per-row latent cell boxes, the cell
mask of a job, and the sentences an API request gets before any work."""
import base64
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lib_tilesampler.tools.mask_grid import cell_geometry, cell_masks, latent_masks
from lib_tilesampler.tools.mask_grid_job import (
    FORK_THEN_SAMPLE, SAMPLE_THEN_FORK, VariationRows, cell_boxes_mask, cell_mask_for, cut_schedule,
    host_img2img_start, mask_grid_error, one_cell_mask, step_range)
from lib_tilesampler.tools.options import tool_defaults
from lib_tilesampler.tools.sigmas import img2img_call_for_sigmas, sigma_override


def karras(n, sigma_min=0.0292, sigma_max=14.6146, rho=7.0):
    """Karras et al. (2022), eq. 5, float32 as k-diffusion writes it; a final 0."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def host_img2img_slice(steps, denoising_strength, requested=None):
    """THE HOST'S RULE (A1111 1.10.1 modules/sd_samplers_common.py setup_img2img_steps and
    KDiffusionSampler.sample_img2img, the same in Forge 2), "img2img fix steps" off: without
    a steps argument t_enc = int(min(d, 0.999) * steps); with one, steps = int(k / min(d,
    0.999)) and t_enc = k - 1; the sampler walks sigmas[steps - t_enc - 1:]."""
    if requested is None:
        t_enc = int(min(denoising_strength, 0.999) * steps)
    else:
        steps, t_enc = int(requested / min(denoising_strength, 0.999)), requested - 1
    return steps, steps - t_enc - 1


def euler_to_zero_x0(x, sigmas):
    """Euler (Karras et al. 2022, alg. 1 without churn) with a denoiser that predicts x0 = 0:
    x_{i+1} = x_i + (x_i - 0) / s_i (s_{i+1} - s_i) = x_i s_{i+1} / s_i."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + x / s * (s_next - s)
    return x


@pytest.mark.parametrize("steps,denoise,start", [(20, 0.75, 4), (20, 1.0, 0), (20, 0.0, 19),
                                                 (30, 0.5, 14), (7, 0.3, 4), (1, 0.5, 0)])
def test_the_default_start_is_where_the_hosts_img2img_starts(steps, denoise, start):
    assert host_img2img_start(steps, denoise) == start
    host_steps, host_start = host_img2img_slice(steps, denoise)
    assert host_steps == steps and host_start == start


def test_defaults_are_the_hosts_own_range_and_cut_nothing():
    r = step_range(20, 0.75)
    assert (r.start, r.end, r.count, r.explicit) == (4, 20, 16, False)
    assert not step_range(20, 0.75, start_step=4, end_step=20).explicit   # spelled out
    assert not step_range(20, 0.75, end_step=99).explicit                 # past the end = the end
    assert step_range(20, 0.75, start_step=5).explicit
    assert step_range(20, 0.75, end_step=15).explicit


@pytest.mark.parametrize("start,end,message", [
    (20, -1, "start at step must be below the job's 20 steps"),
    (10, 10, "end at step (10) must be after start at step (10)"),
    (12, 8, "end at step (8) must be after start at step (12)"),
])
def test_impossible_ranges_are_sentences(start, end, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        step_range(20, 0.75, start, end)


@pytest.mark.parametrize("start,end,leftover", [(0, 20, False), (5, 20, False), (5, 12, False),
                                                (5, 12, True), (0, 1, True), (19, 20, False)])
def test_the_cut_schedule_is_the_nodes_slice_and_ends_at_zero_unless_leftover(start, end, leftover):
    schedule = karras(20)
    r = step_range(20, 1.0, start, end, leftover_noise=leftover)
    cut = cut_schedule(schedule, r)
    assert len(cut) == r.count + 1 == end - start + 1
    assert torch.equal(cut[:-1], schedule[start:end])
    assert float(cut[-1]) == (float(schedule[end]) if leftover else 0.0)


def test_the_override_makes_the_host_walk_exactly_the_cut_schedule():
    schedule = karras(30)
    r = step_range(30, 0.6, 7, 21, leftover_noise=True)
    cut = cut_schedule(schedule, r)
    k, strength = img2img_call_for_sigmas(r.count)
    steps, first = host_img2img_slice(30, strength, requested=k)
    assert torch.equal(sigma_override(cut)(steps)[first:], cut)


def test_leftover_noise_returns_the_latent_at_the_end_sigma_and_off_returns_it_clean():
    """With x0 = 0 the Euler run scales x by s_end / s_start: a latent at noise level s_end
    (leftover) or a clean one (off; the last step jumps to sigma 0)."""
    schedule = karras(20).double()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    on = euler_to_zero_x0(x * schedule[5], cut_schedule(schedule, step_range(20, 1, 5, 12, leftover_noise=True)))
    off = euler_to_zero_x0(x * schedule[5], cut_schedule(schedule, step_range(20, 1, 5, 12)))
    assert torch.allclose(on, x * schedule[12], rtol=1e-12)
    assert float(off.abs().max()) < 1e-12 * float(x.abs().max())


def test_sample_then_fork_samples_the_jobs_own_batches_and_forks_each_image_in_n():
    rows = VariationRows(SAMPLE_THEN_FORK, cells=6, repeats=4, per_batch=2)
    assert rows.host_batches(batch_size=2, n_iter=2) == (2, 2)
    assert (rows.sampled_rows, rows.outputs, rows.outputs_per_batch(2)) == (4, 24, 12)


@pytest.mark.parametrize("cells,repeats,per_batch,expected", [
    (6, 1, 4, (4, 2)), (6, 1, 6, (6, 1)), (6, 1, 100, (6, 1)), (9, 2, 4, (4, 5)), (1, 1, 1, (1, 1))])
def test_fork_then_sample_takes_cells_per_batch_rows_at_a_time(cells, repeats, per_batch, expected):
    rows = VariationRows(FORK_THEN_SAMPLE, cells, repeats, per_batch)
    size, n_iter = rows.host_batches(batch_size=3, n_iter=7)
    assert (size, n_iter) == expected
    assert size * (n_iter - 1) < rows.outputs <= size * n_iter      # the last batch may be short
    assert rows.sampled_rows == rows.outputs == cells * repeats


def test_outputs_are_row_major_cells_within_each_repeat():
    order = [VariationRows.cell_of(j, 6) for j in range(12)]
    assert order[:7] == [(0, c) for c in range(6)] + [(1, 0)]
    assert order[-1] == (1, 5)


def test_seeds_are_one_per_repeat_or_one_per_cell():
    rows = VariationRows(FORK_THEN_SAMPLE, cells=3, repeats=2, per_batch=4)
    assert rows.seeds(100, per_cell=False) == [100, 100, 100, 101, 101, 101]
    assert rows.seeds(100, per_cell=True) == [100, 101, 102, 103, 104, 105]


@pytest.mark.parametrize("width,height,rows,columns", [(768, 512, 2, 3), (768, 384, 1, 3), (256, 256, 4, 4)])
def test_latent_cell_boxes_are_disjoint_cover_the_latent_and_match_the_cell_masks(width, height, rows, columns):
    grid = cell_geometry(width, height, rows, columns)
    boxes = cell_boxes_mask(grid, list(range(grid.count)))
    assert boxes.shape == (grid.count, 1, height // 8, width // 8)
    assert torch.equal(boxes.sum(0), torch.ones(1, height // 8, width // 8))
    full = torch.ones(grid.cell_h, grid.cell_w)
    assert torch.equal(boxes, latent_masks(cell_masks(full, grid)))
    assert torch.equal(cell_boxes_mask(grid, [2, 2, 0])[1], boxes[2])


def test_one_cell_mask_is_that_row_of_cell_masks():
    grid = cell_geometry(768, 512, 2, 3)
    cell = torch.rand(grid.cell_h, grid.cell_w, generator=torch.Generator().manual_seed(1))
    every = cell_masks(cell, grid)
    for i in range(grid.count):
        assert torch.equal(one_cell_mask(cell, grid, i), every[i])


def png_base64(array) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_jobs_cell_mask_is_fitted_feathered_for_the_fork_only_and_says_when_resized():
    grid = cell_geometry(768, 512, 2, 3)
    same = cell_mask_for(png_base64(np.full((256, 256), 255)), grid, feather_px=8)
    assert same.resized_from is None and same.resize_note() is None
    assert torch.equal(same.sampled, torch.ones(256, 256))
    assert float(same.forked[0, 0]) < 0.1 and float(same.forked[128, 128]) == 1.0
    other = cell_mask_for(png_base64(np.zeros((100, 300))), grid)
    assert other.resized_from == (300, 100) and other.resize_note() == "300×100 to 256×256"
    inverted = cell_mask_for(png_base64(np.zeros((256, 256))), grid, invert=True)
    assert torch.equal(inverted.sampled, torch.ones(256, 256))


def values(**changes):
    out = tool_defaults()
    out.update(tool="mask_grid", mask=png_base64(np.full((64, 64), 255)), rows=2, columns=3)
    out.update(changes)
    return out


@pytest.mark.parametrize("changes,context,needle", [
    ({}, {}, None),
    ({"mask": ""}, {}, "no cell mask"),
    ({"mask": "not base64!"}, {}, "not valid base64"),
    ({"mask": base64.b64encode(b"hello").decode()}, {}, "not an image"),
    ({"columns": 5}, {}, "does not split into 5 columns"),
    ({"feather": 200}, {}, "feather of 200 px does not fit"),
    ({"start_step": 30}, {}, "start at step must be below the job's 20 steps"),
    ({"start_step": 10, "end_step": 5}, {}, "end at step (5) must be after start at step (10)"),
    ({"mode": "Fork"}, {}, "mode must be"),
    ({"use_inpaint_mask": True, "mask": ""}, {"tab": "img2img"}, "has no inpaint mask"),
    ({"use_inpaint_mask": True, "mask": ""}, {"tab": "img2img", "has_inpaint_mask": True}, None),
    ({"columns": 5}, {"size": None}, None),          # the size is not known yet: the job says it
])
def test_a_request_that_cannot_run_gets_a_sentence_before_any_work(changes, context, needle):
    kwargs = dict(tab="txt2img", size=(768, 512), steps=20, denoise=0.75)
    kwargs.update(context)
    error = mask_grid_error(values(**changes), **kwargs)
    if needle is None:
        assert error is None
    else:
        assert error is not None and needle in error and error.startswith("Mask grid: ")
        assert error.endswith(".")


def test_a_huge_mask_is_refused_from_its_header():
    buffer = io.BytesIO()
    Image.new("1", (20000, 8)).save(buffer, "PNG")
    error = mask_grid_error(values(mask=base64.b64encode(buffer.getvalue()).decode()),
                            tab="img2img", size=(768, 512), steps=20, denoise=0.75)
    assert "too large (20000×8 px)" in error


def test_step_counts_stay_small_numbers():
    assert math.isclose(step_range(150, 0.999).count, 150)
