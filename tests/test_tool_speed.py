"""The Script tools' jobs measure the model's speed as the accordion's jobs do: every stage
of Refine & upscale (base, refiner, the tiled re-denoise) and of the mask grid (the
variations, batch by batch) records the work of one evaluation (``Job.set_work``) with the
model that ran it, and its timed evaluations become seconds per work unit in the speed
book. Host stand-ins behave as A1111 1.10's ``p`` and the adapter's calls (names, shapes);
the evaluations are counted as the host's ``on_cfg_denoiser`` callback counts them."""
from __future__ import annotations

import pytest
import torch

from lib_tilesampler.hosts.mask_grid_run import VARIATIONS_STAGE, VariationJob
from lib_tilesampler.hosts.refine_upscale_run import _Run
from lib_tilesampler.hosts.webui_common import RESAMPLE_STAGE
from lib_tilesampler.job import Job
from lib_tilesampler.preview import plan_job as plan_request
from lib_tilesampler.speed import SpeedBook
from lib_tilesampler.tools.mask_grid import cell_geometry
from lib_tilesampler.tools.mask_grid_job import (FORK_THEN_SAMPLE, SAMPLE_THEN_FORK, CellMask,
                                                 VariationRows, step_range)
from lib_tilesampler.tools.options import tool_defaults
from lib_tilesampler.tools.refine_upscale import StageSettings, options_from_values, plan_job, \
    tiler_resample_values
from lib_tilesampler.tools.refine_upscale_check import standin_schedule

MAIN = StageSettings(20, 7.0, "Euler", "Automatic")
SECONDS_PER_EVALUATION = 0.5


class Clock:
    def __init__(self):
        self.now = 0.0

    def evaluate(self, job: Job, n: int) -> None:
        """``n`` denoiser evaluations of SECONDS_PER_EVALUATION each, counted on ``job``."""
        for _ in range(n):
            self.now += SECONDS_PER_EVALUATION
            job.count(now=self.now)


class Checkpoint:
    def __init__(self, title):
        self.title = title


class Host:
    """The adapter's calls ``_Run`` makes, with a loaded checkpoint that switches."""

    def __init__(self):
        self.loaded = Checkpoint("base.safetensors")

    def job_checkpoint(self, p):
        return self.loaded

    def loaded_checkpoint(self):
        return self.loaded

    def model_key(self):
        return self.loaded.title

    def switch_checkpoint(self, p, checkpoint):
        self.loaded = checkpoint

    def schedule_for(self, p):
        return lambda model, settings: standin_schedule

    def show_stage(self, text):
        pass

    def next_progress_job(self):
        pass

    def should_stop(self):
        return False

    def stop_requested(self):
        return False


class P:
    """The txt2img ``p`` of a refine & upscale job, as far as stage 1 reads it."""

    def __init__(self, width=512, height=768, batch_size=2):
        self.width, self.height, self.batch_size = width, height, batch_size
        self.iteration = 0
        self.init_latent = None
        self.mask = None


def values(**changes):
    out = tool_defaults()
    out.update(changes)
    return out


def refine_upscale_run(v, host, clock):
    p = P()
    job = Job(dict(v), label="Refine & upscale")
    job.counts_nested = job.times_nested = True
    job.model = host.model_key()
    plan = plan_job(options_from_values(v), MAIN, 0, p.width, p.height, host.schedule_for(p),
                    tiler_resample_values(v))
    run = _Run(host, p, job, v, plan, tiler_resample_values(v), MAIN,
               Checkpoint("refiner.safetensors") if v["refiner"] != "None" else None, {}, None)

    def run_stage(stage, latent, fresh):
        clock.evaluate(job, stage.steps)
        return torch.zeros(p.batch_size, 4, p.height // 8, p.width // 8)
    run.run_stage = run_stage
    return run, p, job


def test_base_and_refiner_stages_record_their_work_and_their_own_model():
    host, clock = Host(), Clock()
    v = values(refiner="refiner.safetensors")
    run, p, job = refine_upscale_run(v, host, clock)
    run.sample_stages(set())
    base, refiner = job.stages["base"], job.stages["refiner"]
    per = 512 * 768 / (512 * 512) * p.batch_size            # 2 images of 1.5 units
    assert base.work_per_evaluation == pytest.approx(per) == refiner.work_per_evaluation
    assert (base.runs, base.evaluations, base.timed) == (1, 14, 13)
    assert (refiner.runs, refiner.timed) == (1, refiner.evaluations - 1)   # not timed from the base
    assert (base.model, refiner.model) == ("base.safetensors", "refiner.safetensors")
    measured = job.measured_by_model()
    assert measured["base.safetensors"] == pytest.approx((13 * SECONDS_PER_EVALUATION, 13 * per))
    book = SpeedBook()
    book.record_job(job)
    assert book.seconds_per_unit("base.safetensors") == pytest.approx(SECONDS_PER_EVALUATION / per)
    assert book.seconds_per_unit("refiner.safetensors") == pytest.approx(SECONDS_PER_EVALUATION / per)


class Img2ImgP:
    """The nested img2img job of one image (what ``host.make_img2img`` returns)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)
        self.init_latent = torch.zeros(1, 4, fields["height"] // 8, fields["width"] // 8)
        self.image_conditioning = None
        self.rng = self

    def next(self):
        return torch.zeros_like(self.init_latent)


class TilerHost(Host):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def make_img2img(self, p, **fields):
        return Img2ImgP(**fields)

    def prepare_sampling(self, p):
        pass

    def before_sampling(self, p, x, noise, c, uc):
        pass

    def resample_after(self, p, job, samples, sampler, plan, values, seeds, label=None):
        """As the adapter's: one counted sampler run per tile batch (independent mode),
        each of the steps that run, in the ``resample`` stage."""
        previous, job.stage = job.stage, RESAMPLE_STAGE
        tiles = plan.tiles(*samples.shape[-2:])
        for _ in range(0, len(tiles), plan.batch):
            job.count_run()
            self.clock.evaluate(job, 8)
        job.stage = previous
        return samples


def test_the_tiled_re_denoise_records_the_work_of_its_tiles_as_the_plan_counts_it():
    clock = Clock()
    host = TilerHost(clock)
    v = values(upscale_by=2.0, tiler_tile_size=512, tiler_overlap=64, tiler_denoise=0.25,
               tiler_steps=30, tiler_mode="independent")
    run, p, job = refine_upscale_run(v, host, clock)
    source = type("Source", (), dict(image=None, seed=1, subseed=2, prompt="a", negative_prompt="",
                                     infotext="x"))()
    plan = plan_job(options_from_values(v), MAIN, 1, 512, 768, host.schedule_for(p),
                    tiler_resample_values(v), refine=False)
    p.override_settings, p.restore_faces = {}, False
    p2 = run.tiler_job(source, plan, {})
    p2.sample(None, None, [1], [2], 0, ["a"])
    stage = job.stages[RESAMPLE_STAGE]
    assert stage.work_per_evaluation > 0 and stage.model == "base.safetensors"
    # the plan route's number for the same tiles, at the upscaled size
    planned = plan_request({"tab": "img2img", "width": 512, "height": 768, "steps": 20,
                            "script_name": "Tile Sampler tools",
                            "script_args": [{"upscale_by": 2.0, "tiler_tile_size": 512,
                                             "tiler_overlap": 64, "tiler_steps": 30}]})
    tiled = next(s for s in planned["stages"] if s["name"] == "resample")
    assert stage.work_per_evaluation == pytest.approx(tiled["work_per_evaluation"])
    assert stage.runs == tiled["runs"] and stage.evaluations == tiled["evaluations"]
    assert stage.timed == stage.evaluations - stage.runs      # each run's first is not timed


GRID = cell_geometry(96, 64, 2, 3)


class VariationP:
    """The img2img ``p`` of the variations (see tests/test_mask_grid_run.py)."""

    def __init__(self, batch_size):
        self.iteration, self.batch_size = 0, batch_size
        self.nmask = torch.ones(4, 8, 12)
        self.mask = 1 - self.nmask
        self.init_latent = torch.zeros(batch_size, 4, 8, 12)
        self.image_conditioning = None
        self.sampler = object()
        self.job = None
        self.clock = None

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.clock.evaluate(self.job, 16)
        return self.init_latent


@pytest.mark.parametrize("mode,per_batch,batches", [(SAMPLE_THEN_FORK, 4, [2]),
                                                    (FORK_THEN_SAMPLE, 4, [4, 4, 4])])
def test_each_variation_batch_is_a_timed_run_with_the_work_of_its_rows(mode, per_batch, batches):
    from PIL import Image
    clock, job = Clock(), Job({}, label="Mask grid")
    job.counts_nested, job.model = True, "model"
    p = VariationP(batches[0])
    p.job, p.clock = job, clock
    cell = torch.ones(32, 32)
    rows = VariationRows(mode, GRID.count, 2, per_batch)
    variations = VariationJob(p, {"mode": mode}, Image.new("RGB", (96, 64)), CellMask(GRID, cell, cell),
                              rows, step_range(20, 0.75), job, lambda: "model")
    for i, size in enumerate(batches):
        p.iteration = i
        variations.sample(None, None, list(range(size)), list(range(size)), 0, ["a"] * size)
    stage = job.stages[VARIATIONS_STAGE]
    assert job.times_nested and stage.runs == len(batches) and stage.timed == 15 * len(batches)
    assert stage.work_per_evaluation == pytest.approx(96 * 64 / (512 * 512) * batches[-1])
    book = SpeedBook()
    book.record_job(job)
    assert book.seconds_per_unit("model") == pytest.approx(SECONDS_PER_EVALUATION / stage.work_per_evaluation)


def test_a_stage_run_by_another_model_counts_for_that_model():
    job = Job({})
    job.model = "base"
    for stage, model, seconds in (("base", None, 2.0), ("refiner", "refiner", 3.0)):
        job.stage = stage
        job.count(now=0.0)
        job.count(now=seconds)
        job.set_work(1.0, model=model)
    assert job.measured_by_model() == {"base": (2.0, 1.0), "refiner": (3.0, 1.0)}
    assert job.measured() == (5.0, 2.0)
