"""Benchmark: one U-Net call on CPU with HyperTile off, on, and at its floor.

What is measured
----------------
Wall-clock seconds of one call of an SD1.5-architecture ``ldm`` U-Net (the real SD1.5
layout: model channels 320, channel mult 1-2-4-4, attention at ds 1/2/4, two res blocks,
8 heads, context 768) and of an SDXL-architecture diffusers ``UNet2DConditionModel`` (the
real SDXL base layout: 320-640-1280 channels, no attention at full resolution, 2 and 10
transformer blocks at ds 2 and 4, context 2048, pooled text + size conditioning), random
weights, eval, ``torch.inference_mode``, fp32 on CPU, on a batch of 2 latents (cond +
uncond of CFG) with a 77-token context, for these settings:

* ``off``        -- plain U-Net;
* ``on d0``      -- HyperTile (tile 256, swap 2, max depth 0) installed with
                    ``lib_tilesampler.hypertile.install.install_on_modules``;
* ``on d<=1``    -- the same with max depth 1;
* ``floor d0``   -- every ``attn1`` call that HyperTile would tile returns zeros instead
                    (installed with the same ``PatchSet.wrap_forward`` mechanism): the time
                    HyperTile would take if its windowed attention cost nothing;
* ``floor d<=1`` -- the same for max depth 1.

SDXL has no self-attention at depth 0, so its row times ``off``, ``on d<=1`` and
``floor d<=1`` only.

The floor asks a planner with the same config and seed as the HyperTile run which calls
to skip; both runs make the same sequence of calls, so they skip exactly the calls that
HyperTile tiles (checked from the planners' statistics).

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (as A1111 with
``--opt-sdp-attention``; diffusers uses it by default): ldm's default ``CrossAttention.forward`` materialises the full
attention matrix, hundreds of GB at 2048^2. The SDPA forward is set as the class forward
for the run, restricted to the flash kernel (which never materialises the matrix), and
checked once against ldm's default forward before any timing.

All settings of one image size are timed in interleaved rounds, in one process, so that
load from other jobs on the machine falls on all of them alike; the table reports ratios.

Usage::

    python bench/bench_hypertile.py                         # SD1.5 512, 1024, 2048 px; SDXL 1024 px
    python bench/bench_hypertile.py --models sd15 --sizes 512 1024 1536 --repeats 3 1
    python bench/bench_hypertile.py --quick                 # narrow U-Nets, tiny sizes (CI)
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lib_tilesampler.hypertile.geometry import LATENT_FACTOR, HyperTileConfig, HyperTilePlanner  # noqa: E402
from lib_tilesampler.hypertile.install import (install_on_modules, latent_recorder,  # noqa: E402
                                               self_attention_modules)
from lib_tilesampler.module_patch import PatchSet, first_tensor_arg  # noqa: E402
from bench_common import command_line, log, machine_line, sdpa_attention, write_section  # noqa: E402

RESULTS_HEADING = "## HyperTile: one U-Net call on CPU (SD1.5, SDXL)"
DEFAULT_RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
TILE_SIZE, SWAP_SIZE, SEED = 256, 2, 0
TARGET_SPEEDUP, TARGET_FLOOR_RATIO, TARGET_SIZE = 3.5, 1.10, 2048
CONTEXT_TOKENS, CONTEXT_DIM, BATCH = 77, 768, 2
SDXL_CONTEXT_DIM, SDXL_POOLED, SDXL_TIME_IDS = 2048, 1280, 6


# --------------------------------------------------------------------------- model

def sd15_unet(model_channels: int = 320, seed: int = 0) -> torch.nn.Module:
    """An SD1.5-layout ldm U-Net with random weights (``model_channels`` 320 is SD1.5)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(seed)
    return UNetModel(image_size=64, in_channels=4, out_channels=4, model_channels=model_channels,
                     attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4],
                     num_heads=8, use_spatial_transformer=True, transformer_depth=1,
                     context_dim=CONTEXT_DIM, legacy=False).eval()


def sdxl_unet(model_channels: int = 320, seed: int = 0) -> torch.nn.Module:
    """An SDXL-base-layout diffusers U-Net with random weights (``model_channels`` 320 is
    SDXL: 2.6 B parameters, 10 GB in fp32)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    c = model_channels
    heads = max(1, c // 64)
    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(c, 2 * c, 4 * c),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(heads, 2 * heads, 4 * heads),
        cross_attention_dim=SDXL_CONTEXT_DIM, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=SDXL_POOLED + SDXL_TIME_IDS * 256,
        norm_num_groups=32).eval()


def unet_inputs(image_size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent batch, timesteps and text context for one CFG step at ``image_size`` px."""
    g = torch.Generator().manual_seed(seed)
    side = image_size // LATENT_FACTOR
    x = torch.randn(BATCH, 4, side, side, generator=g)
    t = torch.full((BATCH,), 500.0)
    context = torch.randn(BATCH, CONTEXT_TOKENS, CONTEXT_DIM, generator=g)
    return x, t, context


@dataclass(frozen=True)
class Model:
    """A U-Net to time: how to build it and its inputs at an image size."""

    name: str
    build: Callable[[int], torch.nn.Module]
    inputs: Callable[[int], tuple[tuple, dict]]
    depths: tuple[int, ...]          # HyperTile max depths to time (on and floor)


def sd15_inputs(image_size: int) -> tuple[tuple, dict]:
    x, t, context = unet_inputs(image_size)
    return (x, t), {"context": context}


def sdxl_inputs(image_size: int) -> tuple[tuple, dict]:
    """Latents, timesteps, a 2048-wide context and SDXL's pooled text + size conditioning."""
    g = torch.Generator().manual_seed(1)
    side = image_size // LATENT_FACTOR
    x = torch.randn(BATCH, 4, side, side, generator=g)
    context = torch.randn(BATCH, CONTEXT_TOKENS, SDXL_CONTEXT_DIM, generator=g)
    sizes = torch.tensor([[image_size, image_size, 0, 0, image_size, image_size]] * BATCH,
                         dtype=torch.float32)
    cond = {"text_embeds": torch.randn(BATCH, SDXL_POOLED, generator=g), "time_ids": sizes}
    return (x, torch.full((BATCH,), 500.0)), {"encoder_hidden_states": context,
                                              "added_cond_kwargs": cond}


MODELS = {"sd15": Model("SD1.5", sd15_unet, sd15_inputs, (0, 1)),
          "sdxl": Model("SDXL", sdxl_unet, sdxl_inputs, (1,))}


# --------------------------------------------------------------------------- attention

def check_sdpa_forward(unet: torch.nn.Module, tokens: int = 256) -> None:
    """Assert that :func:`sdpa_forward` matches ldm's default forward on the U-Net's own
    self- and cross-attention modules at every width (a small token count)."""
    g = torch.Generator().manual_seed(2)
    context = torch.randn(BATCH, CONTEXT_TOKENS, CONTEXT_DIM, generator=g)
    seen: set[tuple[str, int]] = set()
    for name, module in unet.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind not in ("attn1", "attn2") or (kind, module.to_q.in_features) in seen:
            continue
        seen.add((kind, module.to_q.in_features))
        x = torch.randn(BATCH, tokens, module.to_q.in_features, generator=g)
        ctx = context if kind == "attn2" else None
        with torch.inference_mode():
            expected = module(x, context=ctx)
            with sdpa_attention():
                got = module(x, context=ctx)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    print(f"SDPA forward matches ldm's default forward on {len(seen)} attention shapes", flush=True)


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Setting:
    """One configuration to time: ``mode`` is ``off``, ``on`` or ``floor``."""

    mode: str
    max_depth: int = 0

    @property
    def name(self) -> str:
        if self.mode == "off":
            return "off"
        return f"{self.mode} d{'0' if self.max_depth == 0 else f'<={self.max_depth}'}"

    def planner(self, seed: int = SEED) -> Optional[HyperTilePlanner]:
        if self.mode == "off":
            return None
        return HyperTilePlanner(HyperTileConfig(tile_size=TILE_SIZE, swap_size=SWAP_SIZE,
                                                max_depth=self.max_depth), seed)


def settings_for(model: Model) -> tuple[Setting, ...]:
    return ((Setting("off"),) + tuple(Setting("on", d) for d in model.depths)
            + tuple(Setting("floor", d) for d in model.depths))


def _floor_wrap(planner: HyperTilePlanner) -> Callable[[Callable[..., Any], tuple, dict], Any]:
    """An ``attn1`` wrapper that returns zeros for each call the planner would tile."""
    def wrap(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        x = first_tensor_arg(args, kwargs, ("x", "hidden_states"))
        context = args[1] if len(args) > 1 else kwargs.get("context", kwargs.get("encoder_hidden_states"))
        if x is not None and x.ndim == 3 and context is None and planner.plan(x.shape[1]) is not None:
            return torch.zeros_like(x)  # attn1 maps (B, N, C) to (B, N, C)
        return inner(*args, **kwargs)
    return wrap


def install_floor(unet: torch.nn.Module, planner: HyperTilePlanner) -> PatchSet:
    """Skip (return zeros from) every ``attn1`` call that ``planner`` would tile."""
    patches = PatchSet()
    patches.add_handle(unet.register_forward_pre_hook(latent_recorder(planner), with_kwargs=True))
    wrap = _floor_wrap(planner)
    for _, module in self_attention_modules(unet):
        patches.wrap_forward(module, wrap)
    return patches


def install(unet: torch.nn.Module, setting: Setting, planner: Optional[HyperTilePlanner]) -> PatchSet:
    """Patch ``unet`` for ``setting``; the returned ``PatchSet`` undoes it."""
    if setting.mode == "on":
        assert planner is not None
        return install_on_modules(unet, planner)
    if setting.mode == "floor":
        assert planner is not None
        return install_floor(unet, planner)
    return PatchSet()


# --------------------------------------------------------------------------- timing

@dataclass
class Run:
    """The timed calls of one setting at one image size."""

    setting: Setting
    planner: Optional[HyperTilePlanner]
    calls: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def tiled_per_call(self) -> Optional[float]:
        return None if self.planner is None else self.planner.stats.tiled / max(1, self.calls)


def call_unet(unet: torch.nn.Module, run: Run, inputs: tuple[tuple, dict]) -> tuple[float, float]:
    """One U-Net call under ``run.setting``: (wall seconds, process CPU seconds)."""
    args, kwargs = inputs
    patches = install(unet, run.setting, run.planner)
    try:
        with torch.inference_mode():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            out = unet(*args, **kwargs)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            out = getattr(out, "sample", out)
    finally:
        patches.restore()
    run.calls += 1
    if not torch.isfinite(out).all():
        raise RuntimeError(f"non-finite U-Net output under {run.setting.name}")
    return wall, cpu


def time_size(unet: torch.nn.Module, model: Model, image_size: int, repeats: int,
              warmup: str) -> list[Run]:
    """Time every setting at ``image_size``: warm-up, then ``repeats`` interleaved rounds.

    ``warmup`` is ``all`` (one untimed call per setting), ``cheapest`` (one untimed call
    of the last setting, the deepest floor) or ``none``.
    """
    inputs = model.inputs(image_size)
    settings = settings_for(model)
    runs = [Run(s, s.planner()) for s in settings]
    warm = runs if warmup == "all" else runs[-1:] if warmup == "cheapest" else []
    for run in warm:
        wall, _ = call_unet(unet, run, inputs)
        log(f"{model.name} {image_size}px warm-up {run.setting.name}: {wall:.2f}s")
    for run in runs:  # fresh planners: the timed calls of "on" and "floor" draw alike
        run.planner, run.calls = run.setting.planner(), 0
    for r in range(repeats):
        order = runs[r % len(runs):] + runs[:r % len(runs)]  # rotate who goes first
        for run in order:
            wall, cpu = call_unet(unet, run, inputs)
            run.wall.append(wall)
            run.cpu.append(cpu)
            log(f"{model.name} {image_size}px round {r + 1}/{repeats} {run.setting.name}: {wall:.2f}s "
                f"(CPU/wall {cpu / wall:.2f})")
    for run in runs:
        if run.planner is not None:
            log(f"{model.name} {image_size}px {run.setting.name}: {run.planner.stats.summary()} over {run.calls} "
                f"U-Net calls; depths {dict(sorted(run.planner.stats.depths.items()))}")
    check_floor_matches(runs)
    return runs


def check_floor_matches(runs: list[Run]) -> None:
    """The floor of each depth must have skipped exactly the calls HyperTile tiled."""
    by_name = {run.setting.name: run for run in runs}
    for run in runs:
        if run.setting.mode != "floor":
            continue
        on = by_name.get(Setting("on", run.setting.max_depth).name)
        if on is not None and on.calls == run.calls:
            assert on.planner is not None and run.planner is not None
            assert on.planner.stats.depths == run.planner.stats.depths, \
                f"{run.setting.name} skipped other calls than HyperTile tiled"


# --------------------------------------------------------------------------- report

def fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


Results = dict[tuple[str, int], list[Run]]   # (model name, image size) -> runs


def table(results: Results) -> str:
    """Markdown table: one row per (model, size, setting), ratios within the size."""
    lines = ["| U-Net | image (latent) | setting | wall s / call (median) | wall s of each call "
             "| off / this | this / floor | attn1 calls tiled per U-Net call | CPU s / call (median) "
             "| off / this, CPU s | CPU / wall |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (model, size), runs in results.items():
        by_name = {run.setting.name: run for run in runs}
        off = by_name.get("off")
        for run in runs:
            floor = by_name.get(Setting("floor", run.setting.max_depth).name)
            speedup = off.median / run.median if off else None
            cpu_speedup = off.cpu_median / run.cpu_median if off else None
            over_floor = run.median / floor.median if floor and run.setting.mode == "on" else None
            lines.append(f"| {model} | {size}² ({size // LATENT_FACTOR}²) | {run.setting.name} | {run.median:.2f} "
                         f"| {', '.join(f'{w:.2f}' for w in run.wall)} | {fmt(speedup, suffix='×')} "
                         f"| {fmt(over_floor, suffix='×')} | {fmt(run.tiled_per_call, 'g')} "
                         f"| {run.cpu_median:.2f} | {fmt(cpu_speedup, suffix='×')} "
                         f"| {sum(run.cpu) / sum(run.wall):.2f} |")
    return "\n".join(lines)


def verdict(results: Results) -> str:
    """Whether the target (SD1.5 ≥3.5× at 2048², within 10% of the floor) is met."""
    key = (MODELS["sd15"].name, TARGET_SIZE)
    if key not in results:
        return (f"Target (≥{TARGET_SPEEDUP}× over off at {TARGET_SIZE}², within "
                f"{TARGET_FLOOR_RATIO - 1:.0%} of the floor): not assessed, SD1.5 at {TARGET_SIZE}² "
                "not measured.")
    by_name = {run.setting.name: run for run in results[key]}
    lines = []
    for depth in (0, 1):
        on, floor = by_name.get(Setting("on", depth).name), by_name.get(Setting("floor", depth).name)
        off = by_name.get("off")
        if on is None or floor is None or off is None:
            continue
        speedup, ratio = off.median / on.median, on.median / floor.median
        ok = speedup >= TARGET_SPEEDUP and ratio <= TARGET_FLOOR_RATIO
        lines.append(f"- {on.setting.name} at {TARGET_SIZE}²: speed-up {speedup:.2f}× "
                     f"(target ≥{TARGET_SPEEDUP}×), {ratio:.3f}× the floor (target ≤{TARGET_FLOOR_RATIO}×): "
                     f"**{'met' if ok else 'not met'}**")
    return "\n".join(lines)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def report(results: Results, header: str, command: str, peak_gb: float,
           pending: Sequence[str] = ()) -> str:
    """The Markdown section for ``RESULTS.md``; ``pending`` are sizes not yet measured."""
    status = [f"**Partial: {', '.join(pending)} still running or not reached.**", ""] \
        if pending else []
    return "\n".join([RESULTS_HEADING, ""] + status + [
        f"Machine: {header}.", "",
        f"Command: `{command}`", "",
        f"HyperTile: tile {TILE_SIZE}, swap {SWAP_SIZE}, seed {SEED}. Batch {BATCH} (CFG), "
        f"{CONTEXT_TOKENS}-token context, fp32, SDPA (flash kernel) attention. "
        f"Peak RSS {peak_gb:.1f} GB. "
        "`off / this` is the speed-up over HyperTile off; `this / floor` compares HyperTile "
        "with skipping the same attn1 calls entirely; `CPU/wall` near the thread count means "
        "the process was not starved by other jobs.", "",
        table(results), "",
        verdict(results), ""])


# --------------------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["sd15", "sdxl"])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048],
                   help="SD1.5 image sides in pixels (multiples of 64)")
    p.add_argument("--sdxl-sizes", type=int, nargs="+", default=[1024],
                   help="SDXL image sides in pixels (multiples of 64)")
    p.add_argument("--repeats", type=int, nargs="+", default=[3, 3, 2],
                   help="timed calls per setting, one value per size (the last one repeats)")
    p.add_argument("--warmup", choices=("auto", "all", "cheapest", "none"), default="auto",
                   help="untimed calls per size: all settings, only the cheapest, or none; "
                        "auto = all up to 1024 px, cheapest above")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model-channels", type=int, default=320, help="320 is SD1.5 and SDXL")
    p.add_argument("--quick", action="store_true",
                   help="narrow U-Nets (32 channels) at 256 and 512 px, one call each, no "
                        "warm-up; no file written")
    p.add_argument("--results", default=None,
                   help=f"Markdown file to update (default {os.path.relpath(DEFAULT_RESULTS)}, none with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.sdxl_sizes, args.repeats = [256, 512], [256], [1]
        args.model_channels, args.warmup = 32, "none"
    if args.results is None and not args.quick:
        args.results = DEFAULT_RESULTS
    if any(s % 64 for s in args.sizes + args.sdxl_sizes):
        p.error("--sizes and --sdxl-sizes must be multiples of 64")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line(__file__, argv)
    header = machine_line(args.threads)
    log(header)
    plan = [(MODELS[m], size) for m in args.models
            for size in (args.sizes if m == "sd15" else args.sdxl_sizes)]
    results: Results = {}
    section = ""
    unet, built = None, None
    with sdpa_attention():
        for i, (model, size) in enumerate(plan):
            if built is not model:
                unet = None                                   # free the previous U-Net first
                unet, built = model.build(args.model_channels), model
                log(f"{model.name} U-Net: {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M "
                    f"parameters, {len(self_attention_modules(unet))} attn1 modules")
                if model is MODELS["sd15"]:
                    check_sdpa_forward(unet)
            repeats = args.repeats[min(i, len(args.repeats) - 1)]
            warmup = args.warmup if args.warmup != "auto" else "all" if size <= 1024 else "cheapest"
            results[(model.name, size)] = time_size(unet, model, size, repeats, warmup)
            pending = [f"{m.name} {s}²" for m, s in plan[i + 1:]]
            section = report(results, header, command, peak_rss_gb(), pending)
            if args.results:  # after every size, so a crash later keeps what was measured
                write_section(args.results, section)
    print("\n" + section, flush=True)
    if args.results:
        log(f"written to {args.results}")


if __name__ == "__main__":
    main()
