"""The sigma schedules of the refine + upscale stages, and the step arguments that make the
host sample exactly them.

A schedule is what a k-diffusion sampler walks: ``steps + 1`` sigmas, positive and
non-increasing, then one final 0. The host supplies its schedules as tensors (for A1111 and
Forge: what ``KDiffusionSampler.get_sigmas`` returns for a sampler and schedule type, its
discard-the-penultimate-sigma rule included); this module cuts and remaps them:

* the base runs ``s[:stop + 1]``: ``stop`` steps that leave its latent at ``s[stop]`` with the
  noise still in (ComfyUI's KSamplerAdvanced with ``end_at_step=stop`` and leftover noise);
* a refiner continues from exactly that sigma, without new noise (``refiner_sigmas``);
* with no refiner the base goes on over its own tail ``s[stop:]`` (``continue_sigmas``).

Given sigmas reach the host's sampler through ``p.sampler_noise_scheduler_override``
(``sigma_override``) and ``sample_img2img`` with ``img2img_call_for_sigmas``; a
resample's exact steps are ``tiling.passes.img2img_steps``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch


Schedule = Callable[[int], torch.Tensor]
"""``schedule(steps) -> sigmas``: the host's ``steps``-step schedule for one sampler, schedule
type and model (``steps + 1`` values, descending, last 0)."""

MAX_IMG2IMG_STEPS = 998   # int(n / 0.999) == n only while n < 999


def checked_schedule(sigmas: torch.Tensor, steps: Optional[int] = None, what: str = "schedule",
                     to_zero: bool = True) -> torch.Tensor:
    """``sigmas`` if it is a schedule (of ``steps`` steps when given; ending in 0 unless
    ``to_zero`` is False, as a base stage that stops early does), else ``ValueError``."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or not sigmas.is_floating_point():
        raise ValueError(f"the {what} must be a 1-D float tensor of sigmas")
    if len(sigmas) < 2:
        raise ValueError(f"the {what} must hold at least 2 sigmas (1 step), not {len(sigmas)}")
    if steps is not None and len(sigmas) != steps + 1:
        raise ValueError(f"the {what} for {steps} steps must hold {steps + 1} sigmas, not {len(sigmas)}")
    if not (bool(torch.isfinite(sigmas).all()) and bool((sigmas[:-1] > 0).all())
            and (sigmas[-1] == 0 or (not to_zero and sigmas[-1] > 0))):
        end = "ending in one 0" if to_zero else "(the last may be 0)"
        raise ValueError(f"the {what} must be finite positive sigmas {end}, not {sigmas.tolist()}")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError(f"the {what} must not increase: {sigmas.tolist()}")
    return sigmas


def base_sigmas(schedule: torch.Tensor, stop: int) -> torch.Tensor:
    """The base stage's sigmas ``s[:stop + 1]`` of its schedule s of ``steps`` steps: ``stop``
    steps, returning the latent at ``s[stop]`` with its noise left in. ``stop == steps`` is
    the whole schedule: the base finishes the image and no refiner step is left."""
    steps = len(checked_schedule(schedule, what="base schedule")) - 1
    if not 1 <= stop <= steps:
        raise ValueError(f"the base must stop after a step from 1 to {steps} (its steps), not {stop}")
    return schedule[:stop + 1].clone()


def continue_sigmas(schedule: torch.Tensor, stop: int) -> torch.Tensor:
    """With no refiner, the base continues its own schedule: ``s[stop:]``, ``steps - stop``
    steps whose first sigma is the one it stopped at (continuous by construction)."""
    steps = len(checked_schedule(schedule, what="base schedule")) - 1
    if not 1 <= stop < steps:
        raise ValueError(f"the base continues from a step from 1 to {steps - 1}, not {stop}")
    return schedule[stop:].clone()


def refiner_sigmas(schedule: torch.Tensor, start: int,
                   sigma_stop: Union[float, torch.Tensor]) -> torch.Tensor:
    """The refiner's sigmas: from exactly ``sigma_stop`` (where the base stopped) to 0, in
    ``steps - start`` steps spaced as the tail of the refiner's own schedule.

    ``schedule`` is the refiner scheduler's full schedule s of ``steps`` steps and t = s[start:]
    its tail. The nonzero part of t is remapped by an affine map of log sigma that sends t[0]
    to sigma_stop and keeps the smallest nonzero sigma σ_min = t[-2]:

        log σ' = log σ_min + (log σ − log σ_min) · (log σ_stop − log σ_min) / (log t[0] − log σ_min)

    so every log-sigma gap of the tail is scaled by the same factor (its spacing is kept),
    the order is kept, and the final 0 stays. The first value is ``sigma_stop`` itself in the
    schedule's dtype (bit-equal to the base's last sigma when both share the dtype).

    Edge cases: ``start == 0`` remaps the whole schedule; ``start`` outside ``0..steps-1``
    (no tail step) and ``sigma_stop <= 0`` are errors; a tail with one nonzero sigma, or a
    ``sigma_stop`` at or below σ_min (or so close above it that the remapped sigmas are not
    distinct in the dtype) leaves no room for the spacing: one step, ``[sigma_stop, 0]``.
    """
    steps = len(checked_schedule(schedule, what="refiner schedule")) - 1
    if not 0 <= start < steps:
        raise ValueError(f"the refiner must start at a step from 0 to {steps - 1} "
                         f"(its steps - 1), not {start}")
    stop = float(sigma_stop)
    if not (math.isfinite(stop) and stop > 0):
        raise ValueError(f"the refiner starts from a positive sigma, not {stop}")
    tail = schedule[start:]
    one_step = torch.tensor([stop, 0.0], dtype=schedule.dtype, device=schedule.device)
    nonzero = tail[:-1].double()
    lo = float(nonzero[-1])
    if len(nonzero) == 1 or stop <= lo:
        return one_step
    if float(nonzero[0]) <= lo:
        raise ValueError(f"the refiner schedule's tail from step {start} is flat: {tail.tolist()}")
    scale = (math.log(stop) - math.log(lo)) / (math.log(float(nonzero[0])) - math.log(lo))
    mapped = torch.exp(math.log(lo) + (nonzero.log() - math.log(lo)) * scale)
    out = torch.cat([mapped.to(schedule.dtype), tail[-1:]])
    out[0], out[-2] = stop, tail[-2]
    if bool((out[1:-1] >= out[:-2]).any()) and not bool((tail[1:-1] >= tail[:-2]).any()):
        return one_step   # collapsed in the dtype: sigma_stop is a hair above σ_min
    return out


def sigma_override(sigmas: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """A ``p.sampler_noise_scheduler_override`` that makes the host run exactly ``sigmas``
    (n + 1 values, n steps).

    A1111 1.10.1 and Forge 2 (``KDiffusionSampler.get_sigmas``) first do ``steps += 1`` for
    samplers that discard the penultimate sigma (DPM++ 3M SDE, DPM2, DPM2 a, or the setting
    "always discard"), call ``sigmas = p.sampler_noise_scheduler_override(steps)``, then drop
    it: ``sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])``. So a call for n steps gets
    ``sigmas``; a call for n + 1 gets them with a copy of the last value put before it (the
    copy is what is dropped); any other count is an error: the host must ask for n steps
    (``p.steps = n`` for txt2img, ``img2img_call_for_sigmas(n)`` for img2img).
    """
    sigmas = checked_schedule(sigmas.detach().clone(), what="override", to_zero=False)
    n = len(sigmas) - 1

    def override(steps: int) -> torch.Tensor:
        if steps == n:
            return sigmas.clone()
        if steps == n + 1:
            return torch.cat([sigmas[:-1], sigmas[-1:], sigmas[-1:]])
        raise ValueError(f"the sigma override holds {n} steps; the sampler asked for {steps}")
    return override


def img2img_call_for_sigmas(n: int) -> tuple[int, float]:
    """``(steps, denoising_strength)`` for the host's ``sample_img2img(..., steps=steps)`` with
    ``p.denoising_strength = denoising_strength``, so that it samples all n + 1 sigmas of
    ``sigma_override`` from the first: ``(n, 1.0)``.

    The host (A1111 1.10.1 ``modules/sd_samplers_common.py``, the same in Forge 2)::

        def setup_img2img_steps(p, steps=None):
            if opts.img2img_fix_steps or steps is not None:
                requested_steps = (steps or p.steps)
                steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
                t_enc = requested_steps - 1

    and ``KDiffusionSampler.sample_img2img`` runs ``get_sigmas(p, steps)[steps - t_enc - 1:]``.
    With requested n and strength 1.0: ``int(n / 0.999)`` is n for n < 999 (n / 0.999 is
    n + n/999), t_enc = n − 1, so the slice starts at n − (n − 1) − 1 = 0: n steps. The
    host adds ``noise * sigmas[0]`` to the latent: pass zero noise to continue a latent as
    it is (for eps and v models; a flow model's noise scaling would also scale the latent).
    """
    if not 1 <= n <= MAX_IMG2IMG_STEPS:
        raise ValueError(f"an img2img run of given sigmas takes 1 to {MAX_IMG2IMG_STEPS} steps, not {n}")
    return n, 1.0
