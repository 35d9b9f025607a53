"""Install HyperTile on torch modules, in the two shapes the hosts allow.

* ``install_on_modules``: for a U-Net whose attention modules can be wrapped (A1111's
  ldm/sgm ``CrossAttention``, diffusers' ``Attention``): a forward pre-hook on the U-Net
  records the latent size and the call's timesteps, and every ``attn1`` gets an instance
  forward wrapper.
* ``make_attn1_patches``: for a model patcher that calls ``attn1_patch(n, ctx, value,
  extra_options)`` before self-attention and ``attn1_output_patch(out, extra_options)``
  after it (Forge's ``UnetPatcher``); ``extra_options["original_shape"]`` is the latent
  and ``extra_options["sigmas"]`` the call's sigmas.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .geometry import (HyperTileConfig, HyperTilePlanner, Windows, merge_image, merge_tokens,
                        split_image, split_tokens, vae_windows)
from ..module_patch import PatchSet, first_tensor_arg, replace_first_arg

_X_NAMES = ("x", "hidden_states")
_LATENT_NAMES = ("x", "sample")
_STEP_NAMES = ("timesteps", "timestep", "t")


def self_attention_modules(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The self-attention (``attn1``) modules of a U-Net's transformer blocks."""
    return [(name, m) for name, m in unet.named_modules() if name.rsplit(".", 1)[-1] == "attn1"]


def vae_attention_modules(vae: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The mid-block attention modules of an ldm-style VAE (``mid.attn_1``)."""
    return [(name, m) for name, m in vae.named_modules() if name.endswith("mid.attn_1")]


def _attn1_wrap(planner: HyperTilePlanner) -> Callable[..., Any]:
    def wrap(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        x = first_tensor_arg(args, kwargs, _X_NAMES)
        context = args[1] if len(args) > 1 else kwargs.get("context", kwargs.get("encoder_hidden_states"))
        mask = args[2] if len(args) > 2 else kwargs.get("mask", kwargs.get("attention_mask"))
        if x is None or x.ndim != 3 or context is not None or mask is not None:
            return inner(*args, **kwargs)
        win = planner.plan(x.shape[1])
        if win is None:
            return inner(*args, **kwargs)
        args, kwargs = replace_first_arg(args, kwargs, _X_NAMES, split_tokens(x, win))
        return merge_tokens(inner(*args, **kwargs), win)
    return wrap


def _vae_wrap(config: HyperTileConfig) -> Callable[..., Any]:
    def wrap(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        x = first_tensor_arg(args, kwargs, ("x",))
        if x is None or x.ndim != 4:
            return inner(*args, **kwargs)
        win = vae_windows(x.shape[-2], x.shape[-1], config)
        if win.count == 1:
            return inner(*args, **kwargs)
        args, kwargs = replace_first_arg(args, kwargs, ("x",), split_image(x, win.nh, win.nw))
        return merge_image(inner(*args, **kwargs), win.nh, win.nw)
    return wrap


def latent_recorder(planner: HyperTilePlanner) -> Callable[[torch.nn.Module, tuple, dict], None]:
    """A forward pre-hook (``with_kwargs=True``) for a U-Net that tells ``planner`` the
    latent size and the step (timesteps) of every call."""
    def record_latent(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = first_tensor_arg(args, kwargs, _LATENT_NAMES)
        if x is not None and x.ndim == 4:
            t = args[1] if len(args) > 1 else next(
                (kwargs[k] for k in _STEP_NAMES if kwargs.get(k) is not None), None)
            planner.observe_latent(x.shape, t)
    return record_latent


def install_on_modules(unet: Optional[torch.nn.Module], planner: HyperTilePlanner,
                       vae: Optional[torch.nn.Module] = None) -> PatchSet:
    """Wrap every ``attn1`` of ``unet`` (when given) and the VAE mid attention (when
    ``vae`` is given). Returns the ``PatchSet`` whose ``restore()`` removes all of it.
    """
    patches = PatchSet()
    try:
        if unet is not None:
            patches.add_handle(unet.register_forward_pre_hook(latent_recorder(planner), with_kwargs=True))
            wrap = _attn1_wrap(planner)
            for _, module in self_attention_modules(unet):
                patches.wrap_forward(module, wrap)
        if vae is not None:
            vae_wrap = _vae_wrap(planner.config)
            for _, module in vae_attention_modules(vae):
                patches.wrap_forward(module, vae_wrap)
    except BaseException:
        patches.restore()
        raise
    return patches


def make_attn1_patches(planner: HyperTilePlanner) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(attn1_patch, attn1_output_patch)`` for a ComfyUI/Forge-style model patcher.

    The input patch splits the normed hidden states (and the key/value sources, which
    are the same tokens for self-attention) into windows; the output patch merges them.
    The windows of the call in flight are kept in the closure.
    """
    pending: list[Optional[Windows]] = [None]

    def attn1_patch(n: torch.Tensor, context: Optional[torch.Tensor], value: Optional[torch.Tensor],
                    extra_options: dict) -> tuple:
        pending[0] = None
        shape = extra_options.get("original_shape")
        same = all(t is None or t is n or t.shape == n.shape for t in (context, value))
        if shape is None or n.ndim != 3 or not same:
            return n, context, value
        win = planner.plan(n.shape[1], (shape[-2], shape[-1]), extra_options.get("sigmas"))
        if win is None:
            return n, context, value
        pending[0] = win
        return tuple(None if t is None else split_tokens(t, win) for t in (n, context, value))

    def attn1_output_patch(out: torch.Tensor, extra_options: dict) -> torch.Tensor:
        win, pending[0] = pending[0], None
        return out if win is None else merge_tokens(out, win)

    attn1_patch.__tilesampler_patch__ = True  # type: ignore[attr-defined]
    attn1_output_patch.__tilesampler_patch__ = True  # type: ignore[attr-defined]
    return attn1_patch, attn1_output_patch
