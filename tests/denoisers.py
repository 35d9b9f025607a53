"""Denoisers for the tiling tests, all with the ``denoiser(x, t, cond)`` signature:
per-pixel maps, a fixed convolution, and real ldm U-Nets behind A1111-shaped conds."""
from __future__ import annotations

import torch

ROWS = 4          # 2 images x (cond + uncond): rows 0, 1 cond, rows 2, 3 uncond
CONTEXT = 32


def sd1_cond(rows: int = ROWS, hw: tuple[int, int] = (16, 24), inpaint: bool = True,
             seed: int = 0) -> dict:
    """A1111's SD1 cond: {"c_crossattn": [(rows, 7, 32)], "c_concat": [image cond]}, the
    image cond inpainting-shaped (rows, 5, H, W) or the (rows, 5, 1, 1) zeros of other models."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(rows, 5, *hw, generator=g) if inpaint else torch.zeros(rows, 5, 1, 1)
    return {"c_crossattn": [torch.randn(rows, 7, CONTEXT, generator=g)], "c_concat": [image]}


def row_t(rows: int = ROWS) -> torch.Tensor:
    """Per-row sigmas that differ between rows, so a row mix-up shows."""
    return torch.linspace(1.0, 2.0, rows)


def pixel_denoiser(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """out = 0.7 x + 0.1 t + mean(text) + 0.5 image[:, :1]: every cell depends only on its
    own row's values at that cell, so tiling cannot change it."""
    text = cond["c_crossattn"][0].mean(dim=(1, 2))
    image = cond["c_concat"][0][:, :1]
    return 0.7 * x + (0.1 * t + text).view(-1, 1, 1, 1) + 0.5 * image


class ConvDenoiser:
    """A fixed ``size x size`` convolution with zero padding: linear, shift-invariant,
    support radius ``size // 2``. Counts its calls."""

    def __init__(self, channels: int = 4, size: int = 3, seed: int = 0, blur: bool = False):
        g = torch.Generator().manual_seed(seed)
        if blur:   # a box blur per channel: seams of zero padding show as dark lines
            weight = torch.zeros(channels, channels, size, size)
            for c in range(channels):
                weight[c, c] = 1.0 / size ** 2
        else:
            weight = torch.randn(channels, channels, size, size, generator=g) / size
        self.weight = weight.double()
        self.calls = []

    @property
    def radius(self) -> int:
        return self.weight.shape[-1] // 2

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        self.calls.append((x, t, cond))
        out = torch.nn.functional.conv2d(x.double(), self.weight, padding=self.radius)
        return out.to(x.dtype)


def unet_denoiser(unet: torch.nn.Module):
    """The A1111 inner model's call on an SD1 U-Net: context from ``c_crossattn``."""
    def denoise(x, t, cond):
        with torch.no_grad():
            return unet(x, t, context=cond["c_crossattn"][0])
    return denoise


def inpaint_denoiser(unet: torch.nn.Module):
    """An inpainting U-Net (9 input channels): ``c_concat`` is concatenated to x, as
    ldm's hybrid conditioning does."""
    def denoise(x, t, cond):
        with torch.no_grad():
            return unet(torch.cat([x, cond["c_concat"][0]], dim=1), t, context=cond["c_crossattn"][0])
    return denoise


def euler(denoiser, x: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, cond) -> torch.Tensor:
    """k-diffusion's Euler (Karras et al. 2022, alg. 2 without churn), img2img style: the
    noise scaled by the first sigma is added, then one denoiser call per step."""
    x = x + noise * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((x.shape[0],), float(s))
        d = (x - denoiser(x, t, cond)) / s
        x = x + d * (s_next - s)
    return x
