"""Seeds, noise and step counts of the resample pass: each image and each tile gets noise
that does not depend on the batch it is sampled in (also an SDE sampler's Brownian
tree), and the pass runs exactly the seed node's steps whatever the WebUI's settings."""
import pytest
import torch
import torchsde

from denoisers import ConvDenoiser
from lib_tilesampler import params as P
from lib_tilesampler.hosts.webui_common import RowSeedsRNG
from lib_tilesampler.tiling.independent import start_step, steps_to_run
from lib_tilesampler.tiling.passes import (TilePlan, derive_seed, img2img_steps, run_resample,
                                           sampler_runs, seeded_noise, tile_seeds)
from lib_tilesampler.tiling.denoisers import TileInterrupted
from lib_tilesampler.tiling.plan import batch_tiles, plan_tiles


def values(**kw):
    return {**P.defaults(), "enabled": True, "resample": True, "resample_tile_size": 128,
            "resample_overlap": 32, **{f"resample_{k}": v for k, v in kw.items()}}


def test_derived_seeds_are_repeatable_non_negative_and_unrelated():
    assert derive_seed(100, 3) == derive_seed(100, 3)
    seeds = {derive_seed(s, part) for s in range(50) for part in range(50)}
    assert len(seeds) == 2500 and all(0 <= s < 2 ** 63 for s in seeds)
    assert derive_seed(100, 3, 1) != derive_seed(100, 3, 2) != derive_seed(100, 3)


def test_a_tiles_seed_does_not_depend_on_the_tile_batch_or_the_other_images():
    tiles = plan_tiles(40, 56, 16, 16, 4)
    hw = (40, 56)
    batch_of_two_images = tile_seeds([100, 101], tiles, hw)
    image_two_alone = tile_seeds([101], tiles, hw)
    assert batch_of_two_images[1::2] == image_two_alone        # rows are tile-major
    for batch in batch_tiles(tiles, 3):
        part = tile_seeds([101], batch, hw)
        assert part == [image_two_alone[tiles.index(t)] for t in batch]


def brownian_rows(x, seeds, t0=-2.7, t1=3.5):
    """The SDE samplers' noise: one torchsde Brownian tree per row, its entropy the row's
    seed (what k-diffusion's BatchedBrownianTree makes of the per-row seeds the WebUI
    slices from ``p.all_seeds``)."""
    trees = [torchsde.BrownianTree(torch.tensor(t0), torch.zeros_like(x[0]), torch.tensor(t1),
                                   entropy=int(s)) for s in seeds]
    return lambda a, b: torch.stack([tree(torch.tensor(a), torch.tensor(b)) for tree in trees])


def test_a_tiles_sde_noise_is_the_same_in_any_tile_batch():
    tiles = plan_tiles(32, 48, 16, 16, 4)
    hw = (32, 48)
    x = torch.zeros(len(tiles), 4, 16, 16)
    together = brownian_rows(x, tile_seeds([7], tiles, hw))(-1.0, -0.5)
    for i, tile in enumerate(tiles):
        alone = brownian_rows(x[:1], tile_seeds([7], [tile], hw))(-1.0, -0.5)
        torch.testing.assert_close(alone[0], together[i])
    assert not torch.allclose(together[0], together[1])        # tiles do not share noise


def test_a_rows_ancestral_noise_does_not_depend_on_the_batch():
    seeds = tile_seeds([5, 6], plan_tiles(32, 32, 16, 16, 0), (32, 32))
    batch = RowSeedsRNG((4, 16, 16), seeds, torch.device("cpu"))
    alone = RowSeedsRNG((4, 16, 16), seeds[3:4], torch.device("cpu"))
    for _ in range(3):                                           # one draw per step
        assert torch.equal(batch.next()[3], alone.next()[0])


def host_img2img(steps_arg: int, strength: float, timesteps: bool) -> tuple[int, int, int]:
    """The WebUIs' img2img step arithmetic for an explicit ``steps`` argument, as written
    in A1111 1.10.1 and Forge 2 ``modules/sd_samplers_common.py setup_img2img_steps`` and
    the two ``sample_img2img``: ``(schedule length, first index, denoiser steps)``."""
    schedule = int(steps_arg / min(strength, 0.999))
    t_enc = steps_arg - 1
    if timesteps:                  # CompVisSampler: timesteps[:t_enc], noised to timesteps[t_enc]
        return schedule, schedule - t_enc, t_enc
    return schedule, schedule - t_enc - 1, t_enc + 1


@pytest.mark.parametrize("timesteps", [False, True])
def test_the_pass_runs_the_seed_nodes_steps_through_the_hosts_img2img(timesteps):
    for steps in range(1, 151):
        for denoise in [i / 100 for i in range(1, 101)]:
            k, strength = img2img_steps(steps, denoise, timesteps)
            n = steps_to_run(steps, denoise)
            schedule, first, run = host_img2img(k, strength, timesteps)
            if timesteps and n == steps:          # full denoise: one grid point more
                assert (schedule, run) == (steps + 1, n)
                continue
            assert (schedule, first, run) == (steps, start_step(steps, denoise), n), (steps, denoise)


def test_twenty_steps_at_half_denoise_run_ten_from_step_ten():
    k, strength = img2img_steps(20, 0.5)
    assert host_img2img(k, strength, False) == (20, 10, 10)
    assert img2img_steps(30, 0.0) == (0, 0.0)


def euler_img2img(denoiser, x, noise, sigmas, steps_arg, strength):
    """Euler as the WebUI runs it from ``sample_img2img`` with these arguments."""
    schedule, first, _ = host_img2img(steps_arg, strength, False)
    assert len(sigmas) == schedule + 1
    sched = sigmas[first:]
    x = x + noise * sched[0]
    for s, s_next in zip(sched[:-1], sched[1:]):
        d = (x - denoiser(x, torch.full((x.shape[0],), float(s)), None)) / s
        x = x + d * (s_next - s)
    return x


@pytest.mark.parametrize("mode", ["independent", "fused"])
def test_u_net_calls_are_tiles_times_the_seed_nodes_steps(mode):
    """20 steps at denoise 0.5 on a latent of 2 x 2 tiles: 10 steps per tile."""
    steps, denoise = 20, 0.5
    plan = TilePlan.from_values(values(mode=mode, denoise=denoise, batch=1), steps=steps)
    latent = torch.randn(1, 4, 24, 24)
    tiles = plan.tiles(24, 24)
    assert len(tiles) == 4
    sigmas = torch.linspace(10.0, 0.1, steps).tolist() + [0.0]
    conv = ConvDenoiser()
    k, strength = img2img_steps(steps, denoise)

    def sample_whole(lat, nz, wrap):
        return euler_img2img(wrap(conv), lat, nz, sigmas, k, strength)

    def sample_tiles(lat, nz, batch):
        return euler_img2img(conv, lat, nz, sigmas, k, strength)

    run_resample(latent, plan, [3], sample_whole, sample_tiles)
    assert len(conv.calls) == 10 * 4
    assert sampler_runs(plan, 24, 24) == (4 if mode == "independent" else 1)


def test_an_interrupt_during_the_whole_latent_run_keeps_the_latent_untouched():
    """The host's own interrupt ends its sampler early with a half-resampled latent: the
    pass says so, and the host keeps the latent it started from."""
    plan = TilePlan.from_values(values(mode="fused", denoise=0.5), steps=20)
    latent = torch.randn(1, 4, 24, 24)
    pressed = {"now": False}

    def sample_whole(lat, nz, wrap):
        pressed["now"] = True           # the user pressed Interrupt during the run
        return lat + 1

    with pytest.raises(TileInterrupted):
        run_resample(latent, plan, [3], sample_whole, None, should_stop=lambda: pressed["now"])


def test_no_run_at_denoise_zero():
    plan = TilePlan.from_values(values(denoise=0.0), steps=20)
    assert sampler_runs(plan, 64, 64) == 0
    noise = seeded_noise((2, 4, 8, 8), [1], torch.float32, torch.device("cpu"))
    assert torch.equal(noise[0], noise[1])
