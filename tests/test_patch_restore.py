"""Hooks are always removed: after success, an exception and an interrupt, with a
pre-existing instance forward kept, and a later change of the class forward honoured;
each job's patches belong to that job (nested jobs do not touch each other's)."""
import pytest
import torch

from lib_tilesampler.hosts.forge import drop_our_patches
from lib_tilesampler.hypertile.geometry import HyperTileConfig, HyperTilePlanner
from lib_tilesampler.hypertile.install import (install_on_modules, make_attn1_patches,
                                               self_attention_modules)
from lib_tilesampler.hosts.webui_common import WebUIFamilyHost
from lib_tilesampler.job import Job, JobStack
from lib_tilesampler.module_patch import PatchSet
from unets import run_ldm, sd1_unet


class Interrupted(BaseException):
    """Like the WebUIs' InterruptedException: a BaseException raised inside sampling."""


def snapshot(unet):
    attn = [m.__dict__.get("forward") for _, m in self_attention_modules(unet)]
    return attn, dict(unet._forward_pre_hooks), dict(unet._forward_pre_hooks_with_kwargs)


def leftover_instance_forward(module):
    """What A1111's built-in HyperTile leaves behind: an instance forward for good."""
    class_forward = type(module).forward

    def forward(*args, **kwargs):
        return class_forward(module, *args, **kwargs)
    return forward


@pytest.fixture
def unet():
    model = sd1_unet()
    modules = self_attention_modules(model)
    for _, module in modules[::2]:
        module.forward = leftover_instance_forward(module)
    return model


def install(unet, seed=0):
    return install_on_modules(unet, HyperTilePlanner(HyperTileConfig(tile_size=64, max_depth=1), seed))


def test_restore_after_success_puts_back_exactly_what_was_there(unet):
    x = torch.randn(2, 4, 32, 32)
    before = snapshot(unet)
    expected = run_ldm(unet, x)
    patches = install(unet)
    assert snapshot(unet) != before
    run_ldm(unet, x)
    patches.restore()
    after = snapshot(unet)
    assert after[1:] == before[1:]
    assert all(a is b for a, b in zip(after[0], before[0]))
    assert torch.equal(run_ldm(unet, x), expected)


class Sampler:
    """The two methods of a WebUI sampler the job watches; it runs ``unet``."""

    def __init__(self, unet):
        self.unet = unet

    def sample(self, p, x, c, uc, steps=None, image_conditioning=None):
        return run_ldm(self.unet, x)

    def sample_img2img(self, p, x, noise, c, uc, steps=None, image_conditioning=None):
        return run_ldm(self.unet, x + noise)


def watched(unet, jobs, after=lambda: None):
    """A job with HyperTile on ``unet`` and a watched sampler, as a generation sets up."""
    job = jobs.open(Job({}, key=1))
    host = WebUIFamilyHost()
    host.jobs = jobs
    job.track(install(unet))
    sampler = Sampler(unet)
    host.watch_sampler(None, job, sampler, after)
    return job, sampler


def test_restore_after_an_exception_in_the_middle_of_a_job(unet):
    target = self_attention_modules(unet)[3][1]
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory")

    target.forward = failing
    before = snapshot(unet)
    jobs = JobStack()
    job, sampler = watched(unet, jobs)
    assert snapshot(unet) != before
    with pytest.raises(RuntimeError):
        sampler.sample(None, torch.randn(2, 4, 32, 32), "c", "uc")
    assert calls and job.closed and len(jobs) == 0
    after = snapshot(unet)
    assert after[1:] == before[1:] and all(a is b for a, b in zip(after[0], before[0]))
    assert "sample" not in sampler.__dict__


def test_restore_after_an_interrupt(unet):
    """The WebUI's interrupt is a BaseException its sampler catches; the job ends normally
    and closes in ``postprocess``."""
    before = snapshot(unet)
    calls = {"n": 0}
    planner = HyperTilePlanner(HyperTileConfig(tile_size=64), 0)
    original_plan = planner.plan

    def plan(tokens, latent_hw=None, step=None):   # the user presses Interrupt after a few layers
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted()
        return original_plan(tokens, latent_hw, step)

    planner.plan = plan
    jobs = JobStack()
    job = jobs.open(Job({}, key=1))
    job.track(install_on_modules(unet, planner))
    try:                                   # the sampler stops and returns what it has
        run_ldm(unet, torch.randn(2, 4, 32, 32))
    except Interrupted:
        pass
    jobs.close(job)
    after = snapshot(unet)
    assert after[1:] == before[1:] and all(a is b for a, b in zip(after[0], before[0]))


def test_a_nested_job_keeps_its_own_patches_and_leaves_the_outer_ones(unet):
    """An extension running a generation inside ours (ADetailer, the X/Y/Z plot) gets its
    own job: closing it removes its patches only; closing the outer job closes both."""
    before = snapshot(unet)
    jobs = JobStack()
    outer = jobs.open(Job({}, key=1))
    outer.track(install(unet))
    with_outer = snapshot(unet)
    inner = jobs.open(Job({}, key=1))
    inner.track(install(unet, seed=1))
    assert snapshot(unet) != with_outer
    jobs.close(inner)
    assert not outer.closed and snapshot(unet)[0] == with_outer[0]
    again = jobs.open(Job({}, key=1))
    again.track(install(unet))
    jobs.close(outer)                        # the nested job did not close itself
    assert again.closed and len(jobs) == 0
    after = snapshot(unet)
    assert after[1:] == before[1:] and all(a is b for a, b in zip(after[0], before[0]))


def test_jobs_of_an_ended_generation_are_closed_when_the_next_one_starts(unet):
    before = snapshot(unet)
    jobs = JobStack()
    emptied = []
    jobs.on_empty.append(lambda: emptied.append(1))
    old = jobs.open(Job({}, key="first generation"))
    old.track(install(unet))
    current = jobs.open(Job({}, key="second generation"))
    assert jobs.close_stale("second generation") == 1
    assert old.closed and not current.closed and jobs.current() is current and not emptied
    assert snapshot(unet)[0] == before[0]
    jobs.close(current)
    assert emptied == [1] and jobs.last_closed is current


def test_a_later_change_of_the_class_forward_is_honoured():
    from ldm.modules.attention import CrossAttention
    unet = sd1_unet()
    seen = []
    original = CrossAttention.forward

    def optimised(self, x, context=None, mask=None, **kwargs):   # e.g. switching to SDP
        seen.append(x.shape[0])
        return original(self, x, context, mask)

    patches = install(unet)
    try:
        CrossAttention.forward = optimised
        run_ldm(unet, torch.randn(2, 4, 32, 32))
    finally:
        CrossAttention.forward = original
        patches.restore()
    assert seen and max(seen) > 2          # called, and with the split windows as batch rows


def test_wrapped_again_by_someone_else_keeps_their_chain_working(unet):
    x = torch.randn(2, 4, 32, 32)
    expected = run_ldm(unet, x)
    patches = install(unet)
    theirs = PatchSet()
    for _, module in self_attention_modules(unet):
        theirs.wrap_forward(module, lambda inner, args, kwargs: inner(*args, **kwargs))
    patches.restore()                        # ours is below theirs: becomes pass-through
    assert torch.equal(run_ldm(unet, x), expected)
    theirs.restore()
    assert torch.equal(run_ldm(unet, x), expected)


def test_closing_is_idempotent_and_a_late_patch_is_undone_at_once(unet):
    job = Job({})
    patches = job.track(install(unet))
    job.close()
    job.close()
    assert len(patches) == 0
    late = job.track(install(unet))         # a patch made after the job closed
    assert len(late) == 0


def test_forge_reinstall_drops_our_previous_patches_only():
    other = lambda n, c, v, extra: (n, c, v)   # another extension's patch
    model_options = {"transformer_options": {"patches": {"attn1_patch": [other],
                                                         "attn1_output_patch": []}}}
    for _ in range(2):                          # Forge calls the hook twice around hires
        drop_our_patches(model_options)
        patch_in, patch_out = make_attn1_patches(HyperTilePlanner(HyperTileConfig(), 0))
        model_options["transformer_options"]["patches"]["attn1_patch"].append(patch_in)
        model_options["transformer_options"]["patches"]["attn1_output_patch"].append(patch_out)
    patches = model_options["transformer_options"]["patches"]
    assert len(patches["attn1_patch"]) == 2 and patches["attn1_patch"][0] is other
    assert len(patches["attn1_output_patch"]) == 1


def test_the_sampler_watch_hands_each_result_to_the_current_after_and_is_undone():
    """``watch_sampler`` makes a pass's sampler hand its latent to the resample chosen when
    it returns (img2img reuses one sampler for every batch); closing the job puts the
    sampler's own methods back, also after the resample raised or was interrupted."""
    class Plain:
        def sample(self, p, x, c, uc, steps=None, image_conditioning=None):
            return x + 1

        def sample_img2img(self, p, x, noise, c, uc, steps=None, image_conditioning=None):
            return x + 2

    jobs, host = JobStack(), WebUIFamilyHost()
    host.jobs = jobs
    sampler = Plain()
    factor = {"now": 10}

    def after(samples, seen_sampler):
        assert seen_sampler is sampler
        if samples.sum() > 100:
            raise RuntimeError("resample failed")
        return samples * factor["now"]

    job = jobs.open(Job({}, key=1))
    host.watch_sampler(None, job, sampler, lambda: after)
    host.watch_sampler(None, job, sampler, lambda: after)     # watched once
    assert torch.equal(sampler.sample(None, torch.zeros(1), "c", "uc"), torch.full((1,), 10.0))
    factor["now"] = 100                                       # the next batch's settings
    assert torch.equal(sampler.sample_img2img(None, torch.zeros(1), None, "c", "uc"), torch.full((1,), 200.0))
    with pytest.raises(RuntimeError):
        sampler.sample(None, torch.full((1,), 200.0), "c", "uc")
    assert job.closed and "sample" not in sampler.__dict__ and "sample_img2img" not in sampler.__dict__
    assert torch.equal(sampler.sample(None, torch.zeros(1), "c", "uc"), torch.ones(1))

    class Interrupted(BaseException):   # an interrupt is not an Exception
        pass

    def interrupted(samples, seen_sampler):
        raise Interrupted()

    job = jobs.open(Job({}, key=1))
    host.watch_sampler(None, job, sampler, lambda: interrupted)
    with pytest.raises(Interrupted):
        sampler.sample_img2img(None, torch.zeros(1), None, "c", "uc")
    jobs.close(job)
    assert "sample" not in sampler.__dict__ and "sample_img2img" not in sampler.__dict__
    assert torch.equal(sampler.sample_img2img(None, torch.zeros(1), None, "c", "uc"), torch.full((1,), 2.0))
