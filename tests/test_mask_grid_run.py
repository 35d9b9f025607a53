"""The mask grid's job glue without a WebUI: the per-row cell masks of Fork then Sample, the
KSamplerAdvanced controls on a sampler, Sample then Fork's expansion of a batch, the
pixel-space fork of each output and the cell of each infotext, with stand-ins for the
host's ``p`` and sampler that behave as A1111 1.10's (attribute names and call shapes)."""
import numpy as np
import pytest
import torch
from PIL import Image

from lib_tilesampler.hosts.mask_grid_run import VariationJob, to_tensor
from lib_tilesampler.tools.mask_grid import cell_geometry, fork_in_pixels
from lib_tilesampler.tools.mask_grid_job import (FORK_THEN_SAMPLE, SAMPLE_THEN_FORK, CellMask,
                                                 VariationRows, cut_schedule, one_cell_mask,
                                                 step_range)
from lib_tilesampler.tools.sigmas import sigma_override

GRID = cell_geometry(96, 64, 2, 3)          # cells of 32x32 px, latent 12x8


def karras(n, lo=0.03, hi=14.6, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


class Sampler:
    """Records what ``sample_img2img`` was called with, as the host's would use it: the
    sigmas ``get_sigmas(p, steps)`` gives (the override when set) sliced as A1111 slices."""

    def __init__(self):
        self.calls = []

    def get_sigmas(self, p, steps):
        if p.sampler_noise_scheduler_override:
            return p.sampler_noise_scheduler_override(steps)
        return karras(steps)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        requested = steps or p.steps
        total = int(requested / min(p.denoising_strength, 0.999))
        t_enc = requested - 1 if steps else int(min(p.denoising_strength, 0.999) * p.steps)
        total = total if steps else p.steps
        sigmas = self.get_sigmas(p, total)[total - t_enc - 1:]
        self.calls.append(dict(noise=noise.clone(), sigmas=sigmas, strength=p.denoising_strength))
        return x


class HostP:
    """The img2img ``p`` of the host, as far as the job touches it."""

    def __init__(self, batch_size, rows):
        self.iteration, self.batch_size, self.batch_index = 0, batch_size, 0
        self.steps, self.denoising_strength = 20, 0.75
        self.sampler_noise_scheduler_override = None
        self.is_hr_pass = False
        self.sampler = Sampler()
        self.nmask = torch.zeros(4, 8, 12)
        self.nmask[:, 1:3, 1:3] = 1                # the host's grid latent mask (one blob per cell)
        for r in range(2):
            for c in range(3):
                self.nmask[:, r * 4 + 1:r * 4 + 3, c * 4 + 1:c * 4 + 3] = 1
        self.mask = 1 - self.nmask
        self.init_latent = torch.randn(batch_size, 4, 8, 12)
        self.image_conditioning = torch.zeros(batch_size, 5, 1, 1)
        self.seen = []

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.seen.append(dict(nmask=self.nmask.clone(), mask=self.mask.clone(),
                              init_latent=self.init_latent.shape, cond=self.image_conditioning.shape))
        return self.sampler.sample_img2img(self, self.init_latent, torch.ones_like(self.init_latent),
                                           conditioning, unconditional_conditioning,
                                           image_conditioning=self.image_conditioning)


def job(mode, p, repeats=1, per_batch=4, **steps):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    cell = torch.rand(32, 32, generator=torch.Generator().manual_seed(2))
    cell[:4] = 0
    cell[10:20, 10:20] = 1
    rows = VariationRows(mode, GRID.count, repeats, per_batch)
    return VariationJob(p, {"mode": mode}, source, CellMask(GRID, cell, cell), rows,
                        step_range(20, 0.75, **steps))


def call_sample(j, p, rows):
    return j.sample(None, None, list(range(rows)), list(range(rows)), 0, ["x"] * rows)


def test_fork_then_sample_gives_each_row_its_own_cell_of_the_hosts_latent_mask():
    p = HostP(batch_size=4, rows=6)
    j = job(FORK_THEN_SAMPLE, p)
    full = p.nmask.clone()
    call_sample(j, p, 4)
    p.iteration = 1
    call_sample(j, p, 2)                         # the last batch: cells 4 and 5 only
    first, last = p.seen
    assert first["nmask"].shape == (4, 4, 8, 12) and last["nmask"].shape == (2, 4, 8, 12)
    for row, cell in [(0, 0), (1, 1), (2, 2), (3, 3)]:
        ys, xs = slice((cell // 3) * 4, (cell // 3) * 4 + 4), slice((cell % 3) * 4, (cell % 3) * 4 + 4)
        expected = torch.zeros_like(full)
        expected[:, ys, xs] = full[:, ys, xs]
        assert torch.equal(first["nmask"][row], expected)
        assert torch.equal(first["mask"][row], 1 - expected)
    cells_4_and_5 = torch.zeros_like(full)
    cells_4_and_5[:, 4:8, 4:12] = full[:, 4:8, 4:12]           # row 2, columns 2 and 3
    assert torch.equal(last["nmask"].sum(0), cells_4_and_5)
    assert last["init_latent"] == (2, 4, 8, 12) and last["cond"] == (2, 5, 1, 1)
    assert torch.equal(p.nmask, full) and p.init_latent.shape[0] == 4     # put back


def test_sample_then_fork_samples_with_the_hosts_grid_mask_as_it_is():
    p = HostP(batch_size=1, rows=1)
    j = job(SAMPLE_THEN_FORK, p)
    full = p.nmask.clone()
    call_sample(j, p, 1)
    assert torch.equal(p.seen[0]["nmask"], full)
    assert p.sampler.calls[0]["strength"] == 0.75 and len(p.sampler.calls[0]["sigmas"]) == 17


def test_the_controls_make_the_sampler_walk_the_cut_schedule_without_noise():
    p = HostP(batch_size=1, rows=1)
    j = job(SAMPLE_THEN_FORK, p, start_step=3, end_step=9, add_noise=False, leftover_noise=True)
    call_sample(j, p, 1)
    call = p.sampler.calls[0]
    assert torch.equal(call["sigmas"], cut_schedule(karras(20), j.steps))
    assert float(call["sigmas"][-1]) == float(karras(20)[9]) > 0       # leftover noise kept
    assert torch.count_nonzero(call["noise"]) == 0
    assert p.sampler_noise_scheduler_override is None and p.denoising_strength == 0.75
    assert "sample_img2img" not in p.sampler.__dict__                   # unwrapped afterwards


def test_default_controls_leave_the_hosts_sampler_alone():
    p = HostP(batch_size=1, rows=1)
    call_sample(job(SAMPLE_THEN_FORK, p), p, 1)
    assert torch.count_nonzero(p.sampler.calls[0]["noise"]) > 0


class Batch:
    def __init__(self, images):
        self.images = images


def test_sample_then_fork_makes_each_sampled_image_one_output_per_cell():
    p = HostP(batch_size=2, rows=2)
    j = job(SAMPLE_THEN_FORK, p, repeats=2)
    p.prompts, p.negative_prompts, p.seeds, p.subseeds = ["a", "b"], ["", ""], [7, 8], [1, 2]
    p.overlay_images, p.color_corrections = ["o1", "o2"], None
    batch = Batch(["img1", "img2"])
    j.expand(p, batch)
    assert batch.images == ["img1"] * 6 + ["img2"] * 6
    assert p.seeds == [7] * 6 + [8] * 6 and p.prompts == ["a"] * 6 + ["b"] * 6
    assert p.overlay_images == ["o1"] * 6 + ["o2"] * 6
    p.iteration, p.seeds = 1, [9, 10]
    j.expand(p, Batch(["img3", "img4"]))
    assert p.overlay_images == ["o1"] * 6 + ["o2"] * 6                   # not expanded twice


class Image_:
    def __init__(self, image):
        self.image = image


@pytest.mark.parametrize("mode,iteration,batch_size,index,cell", [
    (SAMPLE_THEN_FORK, 0, 1, 4, 4), (SAMPLE_THEN_FORK, 1, 2, 7, 1),     # output 12 + 7 = 19
    (FORK_THEN_SAMPLE, 1, 4, 1, 5), (FORK_THEN_SAMPLE, 2, 4, 3, 5)])    # rows 5 and 11
def test_every_output_is_the_source_outside_its_cell_and_the_fork_inside(mode, iteration, batch_size, index, cell):
    p = HostP(batch_size=batch_size, rows=6)
    j = job(mode, p, repeats=4)
    p.iteration, p.batch_index = iteration, index
    sampled = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    pp = Image_(sampled)
    j.compose(p, pp)
    out = to_tensor(pp.image)
    expected = fork_in_pixels(j.source, to_tensor(sampled), one_cell_mask(j.cell.forked, GRID, cell)[None])[0]
    assert torch.equal(out, expected)
    assert j.cell_infotext(p, index) == f"r{cell // 3 + 1} c{cell % 3 + 1} of 2×3"
    assert j.cell_infotext(p, 0, use_main_prompt=True) is None


def test_an_output_of_another_size_is_refused():
    p = HostP(batch_size=1, rows=1)
    with pytest.raises(ValueError, match="cannot fork"):
        job(SAMPLE_THEN_FORK, p).compose(p, Image_(Image.new("RGB", (64, 64))))


def test_the_override_holds_the_cut_for_discarding_samplers_too():
    r = step_range(20, 1.0, 2, 10)
    cut = cut_schedule(karras(20), r)
    override = sigma_override(cut)
    assert torch.equal(override(r.count), cut) and len(override(r.count + 1)) == r.count + 2
