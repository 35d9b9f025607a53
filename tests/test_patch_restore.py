"""Hooks are always removed: after success, an exception and an interrupt, with a
pre-existing instance forward kept, and a later change of the class forward honoured."""
from contextlib import closing

import pytest
import torch

from lib_tilesampler.hosts.forge import drop_our_patches
from lib_tilesampler.hypertile.geometry import HyperTileConfig, HyperTilePlanner
from lib_tilesampler.hypertile.install import (install_on_modules, make_attn1_patches,
                                               self_attention_modules)
from lib_tilesampler.lifecycle import restore_on_close
from lib_tilesampler.module_patch import PatchSet
from unets import run_ldm, sd1_unet


class Interrupted(BaseException):
    """Like the WebUIs' InterruptedException: a BaseException raised inside sampling."""


class Job:
    """The part of a WebUI processing object the lifecycle relies on: ``close()``."""

    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


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


def test_restore_after_an_exception_in_the_middle_of_a_job(unet):
    target = self_attention_modules(unet)[3][1]
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory")

    target.forward = failing
    before = snapshot(unet)
    job = Job()
    with pytest.raises(RuntimeError):
        with closing(job):
            patches = install(unet)
            restore_on_close(job, patches.restore)
            run_ldm(unet, torch.randn(2, 4, 32, 32))
    assert calls and job.closed == 1
    after = snapshot(unet)
    assert after[1:] == before[1:] and all(a is b for a, b in zip(after[0], before[0]))


def test_restore_after_an_interrupt(unet):
    before = snapshot(unet)
    calls = {"n": 0}
    planner = HyperTilePlanner(HyperTileConfig(tile_size=64), 0)
    original_plan = planner.plan

    def plan(tokens, latent_hw=None):       # the user presses Interrupt after a few layers
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted()
        return original_plan(tokens, latent_hw)

    planner.plan = plan
    job = Job()
    with closing(job):
        patches = install_on_modules(unet, planner)
        restore_on_close(job, patches.restore)
        try:                                   # the sampler stops and returns what it has
            run_ldm(unet, torch.randn(2, 4, 32, 32))
        except Interrupted:
            pass
    after = snapshot(unet)
    assert after[1:] == before[1:] and all(a is b for a, b in zip(after[0], before[0]))


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


def test_restore_is_idempotent_and_close_wrapping_happens_once(unet):
    patches = install(unet)
    job = Job()
    restore_on_close(job, patches.restore)
    restore_on_close(job, patches.restore)
    job.close()
    patches.restore()
    assert job.closed == 1 and len(patches) == 0


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


def test_resample_interception_of_the_sampler_is_undone():
    """``after_sampling`` makes the last pass's sampler hand its latent to the resample;
    restore puts the sampler's own methods back, also after the resample raised."""
    from lib_tilesampler.hosts.webui_common import WebUIFamilyHost

    class Sampler:
        def sample(self, p, x, c, uc, steps=None, image_conditioning=None):
            return x + 1

        def sample_img2img(self, p, x, noise, c, uc, steps=None, image_conditioning=None):
            return x + 2

    sampler, host = Sampler(), WebUIFamilyHost()
    seen = []

    def after(samples, call):
        seen.append(sorted(call))
        if samples.sum() > 100:
            raise RuntimeError("resample failed")
        return samples * 10

    host.track(host.after_sampling(sampler, after))
    assert torch.equal(sampler.sample(None, torch.zeros(1), "c", "uc"), torch.full((1,), 10.0))
    assert torch.equal(sampler.sample_img2img(None, torch.zeros(1), None, "c", "uc"), torch.full((1,), 20.0))
    assert "conditioning" in seen[0] and "unconditional_conditioning" in seen[1]
    with pytest.raises(RuntimeError):
        sampler.sample(None, torch.full((1,), 200.0), "c", "uc")
    host.restore()
    assert "sample" not in sampler.__dict__ and "sample_img2img" not in sampler.__dict__
    assert torch.equal(sampler.sample(None, torch.zeros(1), "c", "uc"), torch.ones(1))

    class Interrupted(BaseException):   # an interrupt is not an Exception
        pass

    def interrupted(samples, call):
        raise Interrupted()

    host.track(host.after_sampling(sampler, interrupted))
    with pytest.raises(Interrupted):
        sampler.sample_img2img(None, torch.zeros(1), None, "c", "uc")
    host.restore()
    assert "sample" not in sampler.__dict__ and "sample_img2img" not in sampler.__dict__
    assert torch.equal(sampler.sample_img2img(None, torch.zeros(1), None, "c", "uc"), torch.full((1,), 2.0))
