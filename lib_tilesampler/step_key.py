"""What identifies a sampling step inside a U-Net or denoiser call: the key HyperTile's
window draws and the moving mode's seam offsets are seeded from."""
from __future__ import annotations

import math
from typing import Optional

import torch

STEP_KEY_BUCKETS = 100      # step keys per unit of log(t)


def step_key(t: Optional[object]) -> Optional[int]:
    """The largest ``t`` (sigma or timestep) of the call's rows, so cond and uncond rows of
    one step share it however the host splits them into calls, as its bucket
    ``round(100 * log t)``; None when the call carries no step.

    Coarse enough that an adaptive sampler (DPM adaptive), whose step sizes follow the float
    noise of the U-Net's output (rows batched together differ from rows run alone in the last
    bits), gets the same key for the same step: a relative change of 1e-6 crosses a bucket
    border with probability 1e-4. Fine enough that the steps of a schedule stay apart (a
    150-step Karras schedule is at least 2.7 buckets per step); only near t = 999 do
    timesteps of 100+ DDIM-like steps pair up in a bucket, and two steps sharing a key just
    share their draw."""
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        if t.numel() == 0:
            return None
        t = t.max()
    try:
        value = float(t)
    except (TypeError, ValueError):
        return None
    if math.isnan(value):
        return None
    return round(STEP_KEY_BUCKETS * math.log(max(value, 1e-6)))
