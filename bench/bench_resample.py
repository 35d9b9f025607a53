"""Benchmark: the latent-tile resample pass (independent, fused, moving) on CPU.

What is measured
----------------
The resample job of ``lib_tilesampler.tiling.passes`` (``TilePlan``, ``make_wrap``,
``run_resample``) with the options' defaults (1024 px tiles, 128 px overlap, tile batch 1,
Gaussian weights in fused mode; moving mode has no overlap), driven by a k-diffusion Euler
sampler (``euler`` of ``tests/denoisers.py``, img2img style) over an
A1111-style denoiser: an eps-prediction ``ldm`` U-Net behind ``CompVisDenoiser``'s maths
(``x0 = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma))``, SD1's scaled-linear schedule
for ``t``), which is what the tiling wrapper wraps in A1111. Every denoiser call carries
2 latent rows (cond + uncond of CFG) and a 77-token context. Random weights (ldm's
zero-initialised layers get random values, or every output would be 0), fp32,
``torch.inference_mode``.

1. **Work** -- U-Net work per sampler step: the sum of ``rows * h * w`` over all U-Net
   calls of a pass, divided by ``steps * rows * H * W`` (independent mode runs a whole
   sampler per tile; the same formula counts its whole pass). Counted on a real pass
   (timing table) and, for more sizes, on a pass with a free stand-in denoiser.
2. **Time per work** -- ``(wall of the tiled pass / work) / wall of the untiled pass`` of
   the same sampler steps on the same latent (and the same with process CPU seconds).
   Passes of one image size are timed in interleaved, rotated rounds in one process.
3. **Memory** -- a fused resample of a large image against that of an image one tile
   big, each in fresh subprocesses: peak RSS minus the RSS just before the resample
   starts (model loaded, inputs allocated). The peak is ``VmHWM`` of ``/proc/self/status``
   after resetting it with ``/proc/self/clear_refs`` (so the model load's peak does not
   count); without that, ``ru_maxrss``. RSS also reflects the allocator's caching, so the
   first process runs the resample once more under ``torch.profiler`` and reports the
   exact peak of live tensor bytes.
4. **Seams** -- ``tiles.seam_score`` of each mode's result on a smooth latent (a short
   Euler run), next to the score of the untiled result at the same tile borders and the
   score of the difference between the two, with the U-Net read as eps (A1111) and as x0.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (flash kernel
only), set as ldm ``CrossAttention``'s class forward for the run and checked against
ldm's default forward first: the default forward materialises the full attention matrix.

Usage::

    python bench/bench_resample.py                 # full run, updates bench/RESULTS.md
    python bench/bench_resample.py --quick         # tiny U-Net and sizes, seconds, no file
    python bench/bench_resample.py --parts work seam --sizes 2048 --steps 3
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a machine shared
# with other jobs, spinning threads of an oversubscribed pool made U-Net calls ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lib_tilesampler import params as P  # noqa: E402
from lib_tilesampler.tiling.conditioning import crop_cond  # noqa: E402
from lib_tilesampler.tiling.passes import LATENT_FACTOR, TilePlan, run_resample  # noqa: E402
from lib_tilesampler.tiling.denoisers import seam_offset  # noqa: E402
from lib_tilesampler.tiling.plan import seam_score, shifted_grid  # noqa: E402
from bench_common import command_line, log, machine_line, sdpa_attention, write_section  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))  # the tests' Euler and ldm weight fix-up
from denoisers import euler  # noqa: E402
from unets import no_zero_layers  # noqa: E402

RESULTS_HEADING = "## Latent-tile resample: U-Net work, time per work, memory, seams (CPU)"
DEFAULT_RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
MODES = ("independent", "fused", "moving")
ROWS, CONTEXT_TOKENS, SEED = 2, 77, 1234
TARGET_WORK, TARGET_TIME, TARGET_MEMORY = 1.3, 1.05, 1.3
MEMORY_MARK = "MEMORY_RESULT "


# --------------------------------------------------------------------------- model

@dataclass(frozen=True)
class ModelConfig:
    """An SD1-layout ldm U-Net (channel mult 1-2-4-4, spatial transformers, legacy=False)."""

    name: str
    channels: int
    attention: tuple[int, ...]      # levels' downsampling with attention (SD1: 4, 2, 1);
                                    # the middle block (ds 8) always has attention
    res_blocks: int
    head_channels: int
    context_dim: int
    mult: tuple[int, ...] = (1, 2, 4, 4)

    def describe(self) -> str:
        where = ", ".join(map(str, self.attention + (8,)))
        return (f"`{self.name}`: model channels {self.channels}, mult {'-'.join(map(str, self.mult))}, "
                f"{self.res_blocks} res block(s) per level, attention at ds {where} (8 = middle "
                f"block), head dim {self.head_channels}, "
                f"context {CONTEXT_TOKENS}x{self.context_dim}")


MODELS = {m.name: m for m in (
    ModelConfig("sd1-64", 64, (4, 2, 1), 1, 64, 768),
    ModelConfig("sd1-64-no-ds1-attn", 64, (4, 2), 1, 64, 768),
    ModelConfig("sd1-64-attn-ds8", 64, (), 1, 64, 768),   # attention in the middle block only
    ModelConfig("tiny", 32, (4, 2, 1), 1, 32, 64, (1, 2, 2, 2)),
)}


def build_unet(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """The U-Net of ``cfg`` with random weights; ldm's zero-initialised layers get random
    values too (else the output would be 0)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=cfg.channels,
                     attention_resolutions=list(cfg.attention), num_res_blocks=cfg.res_blocks,
                     channel_mult=list(cfg.mult), num_head_channels=cfg.head_channels,
                     use_spatial_transformer=True, transformer_depth=1,
                     context_dim=cfg.context_dim, legacy=False)
    return no_zero_layers(unet, seed)


# --------------------------------------------------------------------------- attention

def check_sdpa(unet: torch.nn.Module, context_dim: int) -> int:
    """Assert that the SDPA forward matches ldm's default forward on each distinct
    attention module shape of ``unet`` (256 tokens) and on a whole U-Net call (32x32
    latent); returns the number of module shapes checked."""
    g = torch.Generator().manual_seed(2)
    context = torch.randn(ROWS, CONTEXT_TOKENS, context_dim, generator=g)
    seen = set()
    with torch.inference_mode():
        for name, module in unet.named_modules():
            kind = name.rsplit(".", 1)[-1]
            if kind not in ("attn1", "attn2") or (kind, module.to_q.in_features) in seen:
                continue
            seen.add((kind, module.to_q.in_features))
            x = torch.randn(ROWS, 256, module.to_q.in_features, generator=g)
            ctx = context if kind == "attn2" else None
            expected = module(x, context=ctx)
            with sdpa_attention():
                got = module(x, context=ctx)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        x, t = torch.randn(ROWS, 4, 32, 32, generator=g), torch.full((ROWS,), 500.0)
        expected = unet(x, t, context=context)
        with sdpa_attention():
            got = unet(x, t, context=context)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
    return len(seen)


# --------------------------------------------------------------------------- denoiser

def _sd_log_sigmas() -> torch.Tensor:
    """log sigma of SD1's 1000 training timesteps (scaled-linear betas 0.00085 .. 0.012)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    return (((1 - alphas) / alphas) ** 0.5).log()


LOG_SIGMAS = _sd_log_sigmas()


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """The (fractional) timestep of each sigma, by linear interpolation in log sigma."""
    x = sigma.double().log().clamp(LOG_SIGMAS[0], LOG_SIGMAS[-1])
    i = torch.searchsorted(LOG_SIGMAS, x).clamp(1, len(LOG_SIGMAS) - 1)
    lo, hi = LOG_SIGMAS[i - 1], LOG_SIGMAS[i]
    return (i - 1 + (x - lo) / (hi - lo)).float()


@dataclass
class Call:
    rows: int
    h: int
    w: int
    wall: float


class UNetDenoiser:
    """``denoiser(x, sigma, cond) -> x0`` of a U-Net. ``"eps"``: an eps-prediction U-Net as
    A1111's ``CompVisDenoiser`` computes it, ``x - sigma * eps(x * c_in, t)``; ``"x0"``: the
    U-Net's output taken as x0 (as ``tests/denoisers.unet_denoiser`` does). Records every
    call (rows, h, w, wall seconds)."""

    def __init__(self, unet: Optional[torch.nn.Module], parametrization: str = "eps") -> None:
        self.unet = unet       # None: a free stand-in that returns x (counts only)
        self.parametrization = parametrization
        self.calls: list[Call] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        start = time.perf_counter()
        if self.unet is None:
            out = x.clone()
        else:
            s = sigma.to(x.dtype).view(-1, 1, 1, 1)
            y = self.unet(x / (s ** 2 + 1) ** 0.5, sigma_to_t(sigma), context=cond["c_crossattn"][0])
            out = x - y * s if self.parametrization == "eps" else y
        self.calls.append(Call(x.shape[0], x.shape[-2], x.shape[-1], time.perf_counter() - start))
        return out

    def cells(self) -> int:
        return sum(c.rows * c.h * c.w for c in self.calls)


def step_sigmas(steps: int) -> torch.Tensor:
    """``steps`` Euler steps from sigma 2 halving each step, then to 0 (3 steps: the
    tests' 2, 1, 0.5, 0)."""
    return torch.tensor([2.0 * 0.5 ** i for i in range(steps)] + [0.0])


def make_plan(mode: str, tile_px: int, overlap_px: int, batch: int = 1) -> TilePlan:
    values = {**P.defaults(), "resample": True, "resample_mode": mode,
              "resample_tile_size": tile_px, "resample_overlap": overlap_px, "resample_batch": batch}
    return TilePlan.from_values(values, steps=30, salt=SEED)


def smooth_latent(height: int, width: int, seed: int = SEED) -> torch.Tensor:
    """A smooth latent (bicubic upsampling of 1/16-size noise), the same in both rows."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, 4, max(2, height // 16), max(2, width // 16), generator=g)
    return F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False).expand(
        ROWS, -1, -1, -1).contiguous()


def make_cond(context_dim: int, seed: int = SEED + 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"c_crossattn": [torch.randn(ROWS, CONTEXT_TOKENS, context_dim, generator=g)]}


def resample(mode: str, denoiser: UNetDenoiser, latent: torch.Tensor, cond: dict,
             sigmas: torch.Tensor, tile_px: int, overlap_px: int, batch: int = 1) -> torch.Tensor:
    """One resample pass of ``latent``: ``mode`` is ``untiled`` or one of ``MODES``."""
    hw = tuple(latent.shape[-2:])

    def sample_whole(x, noise, wrap):
        return euler(wrap(denoiser), x, noise, sigmas, cond)

    def sample_tiles(xs, noises, tiles):
        return euler(denoiser, xs, noises, sigmas, crop_cond(cond, tiles, hw, ROWS))

    if mode == "untiled":    # the same sampler, noise and denoiser, without the wrapper
        plan = make_plan("fused", tile_px, overlap_px, batch)
        return run_resample(latent, plan, [SEED], lambda x, n, wrap: sample_whole(x, n, lambda d: d),
                            sample_tiles)
    plan = make_plan(mode, tile_px, 0 if mode == "moving" else overlap_px, batch)
    return run_resample(latent, plan, [SEED], sample_whole, sample_tiles)


def work_of(denoiser: UNetDenoiser, steps: int, height: int, width: int) -> float:
    return denoiser.cells() / (steps * ROWS * height * width)


# --------------------------------------------------------------------------- 1. work

@dataclass
class WorkRow:
    image: int
    mode: str
    calls_per_step: float
    work: float
    tile_sizes: str


def least_work(size: int, tile: int, overlap: int) -> float:
    """Least work per step of a grid of tiles (rows x columns, sizes may differ) over a
    ``size``² latent, tiles at most ``tile`` cells, neighbours overlapping by at least
    ``overlap``: per axis, ``n``
    tiles cover at most ``n * tile - (n - 1) * overlap`` cells, so at least
    ``n = ceil((size - overlap) / (tile - overlap))`` are needed and their lengths sum to at
    least ``size + (n - 1) * overlap``."""
    if size <= tile:
        return 1.0
    n = -(-(size - overlap) // (tile - overlap))
    return ((size + (n - 1) * overlap) / size) ** 2


def measure_work(sizes: Sequence[int], tile_px: int, overlap_px: int, steps: int) -> list[WorkRow]:
    """Count U-Net work per step with a free stand-in denoiser (the geometry is exact)."""
    rows = []
    for size in sizes:
        side = size // LATENT_FACTOR
        latent, cond = smooth_latent(side, side), make_cond(8)
        for mode in MODES:
            d = UNetDenoiser(None)
            resample(mode, d, latent, cond, step_sigmas(steps), tile_px, overlap_px)
            shapes = sorted({(c.h, c.w) for c in d.calls}, reverse=True)
            rows.append(WorkRow(size, mode, len(d.calls) / steps, work_of(d, steps, side, side),
                                ", ".join(f"{h}×{w}" for h, w in shapes)))
    return rows


def work_table(rows: list[WorkRow], tile_px: int, overlap_px: int) -> str:
    tile, overlap = tile_px // LATENT_FACTOR, overlap_px // LATENT_FACTOR
    lines = [f"| image (latent) | mode | U-Net calls / step | tile sizes (latent cells) "
             f"| work / step (× untiled) | ≤ {TARGET_WORK}× | least possible (tiles ≤ {tile}, "
             f"overlap ≥ {overlap}) |",
             "|---|---|---:|---|---:|:---:|---:|"]
    for r in rows:
        side = r.image // LATENT_FACTOR
        least = "1.000×" if r.mode == "moving" else f"{least_work(side, tile, overlap):.3f}×"
        lines.append(f"| {r.image}² ({side}²) | {r.mode} | {r.calls_per_step:g} | {r.tile_sizes} "
                     f"| {r.work:.3f}× | {'yes' if r.work <= TARGET_WORK else '**no**'} | {least} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- 2. time

@dataclass
class TimedPass:
    mode: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    calls: int = 0
    work: float = 0.0
    call_walls: list[float] = field(default_factory=list)

    @property
    def wall_mean(self) -> float:
        return sum(self.wall) / len(self.wall)

    @property
    def cpu_mean(self) -> float:
        return sum(self.cpu) / len(self.cpu)

    @property
    def outside(self) -> float:
        """Mean wall seconds per pass spent outside the U-Net calls (tiling, blending,
        conditioning crops, the sampler's own arithmetic)."""
        return (sum(self.wall) - sum(self.call_walls)) / len(self.wall)


def time_passes(unet: torch.nn.Module, cfg: ModelConfig, size: int, tile_px: int, overlap_px: int,
                steps: int, rounds: int) -> list[TimedPass]:
    """Time untiled and tiled passes of ``steps`` Euler steps at ``size`` px in ``rounds``
    interleaved rounds (the order rotates each round)."""
    side = size // LATENT_FACTOR
    latent, cond, sigmas = smooth_latent(side, side), make_cond(cfg.context_dim), step_sigmas(steps)
    tile = tile_px // LATENT_FACTOR
    warm = UNetDenoiser(unet)   # first calls at the tile's shape pay one-time set-up costs
    warm(latent[..., :tile, :tile], sigmas[:1].expand(ROWS), cond)
    log(f"{cfg.name} {size}px: warm-up call on a {tile}² tile {warm.calls[0].wall:.1f}s")
    passes = [TimedPass(m) for m in ("untiled",) + MODES]
    for r in range(rounds):
        order = passes[r % len(passes):] + passes[:r % len(passes)]
        for p in order:
            d = UNetDenoiser(unet)
            gc.collect()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            out = resample(p.mode, d, latent, cond, sigmas, tile_px, overlap_px)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            if not torch.isfinite(out).all():
                raise RuntimeError(f"non-finite result in {p.mode} mode")
            p.wall.append(wall)
            p.cpu.append(cpu)
            p.calls, p.work = len(d.calls), work_of(d, steps, side, side)
            p.call_walls += [c.wall for c in d.calls]
            log(f"{cfg.name} {size}px round {r + 1}/{rounds} {p.mode}: {wall:.1f}s wall, "
                f"{cpu:.1f}s CPU (CPU/wall {cpu / wall:.2f}), {len(d.calls)} U-Net calls, work "
                f"{p.work:.3f}; calls (s): {', '.join(f'{c.wall:.1f}' for c in d.calls)}")
    return passes


def time_table(results: list[tuple[ModelConfig, int, list[TimedPass]]]) -> str:
    lines = ["| U-Net | image (latent) | mode | U-Net calls | work / step | wall s / pass (each round) "
             "| wall / work ÷ untiled | ≤ 1.05× | CPU s / pass | CPU / work ÷ untiled | CPU / wall "
             "| wall s / pass outside U-Net calls (% of pass) |",
             "|---|---|---|---:|---:|---|---:|:---:|---:|---:|---:|---:|"]
    for cfg, size, passes in results:
        untiled = passes[0]
        for p in passes:
            ratio = p.wall_mean / p.work / untiled.wall_mean
            cpu_ratio = p.cpu_mean / p.work / untiled.cpu_mean
            ok = "—" if p.mode == "untiled" else "yes" if ratio <= TARGET_TIME else "**no**"
            lines.append(f"| {cfg.name} | {size}² ({size // LATENT_FACTOR}²) | {p.mode} | {p.calls} "
                         f"| {p.work:.3f}× | {p.wall_mean:.1f} ({', '.join(f'{w:.1f}' for w in p.wall)}) "
                         f"| {ratio:.3f}× | {ok} | {p.cpu_mean:.1f} | {cpu_ratio:.3f}× "
                         f"| {sum(p.cpu) / sum(p.wall):.2f} | {p.outside:.2f} ({p.outside / p.wall_mean:.1%}) |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- 3. memory

def _status_kb(key: str) -> Optional[int]:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tensor_peak_bytes(prof: torch.profiler.profile) -> int:
    """Peak of the bytes held by tensors allocated while ``prof`` recorded (with
    ``profile_memory=True``): the running sum of its allocation events (frees negative)."""
    from torch._C._profiler import _EventType
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            events.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: one fused resample (one Euler step, tile batch 1) at
    ``args.memory_child`` px, its peak RSS over the RSS before; with
    ``args.memory_profile`` then the same resample again under the profiler, for the peak
    of live tensor bytes. Prints a JSON line (sizes in kB)."""
    torch.set_num_threads(args.threads)
    cfg = MODELS[args.memory_model]
    unet = build_unet(cfg)
    side = args.memory_child // LATENT_FACTOR
    latent, cond = smooth_latent(side, side), make_cond(cfg.context_dim)
    d = UNetDenoiser(unet)
    gc.collect()
    base = _status_kb("VmRSS")
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    start = time.perf_counter()
    with sdpa_attention(), torch.inference_mode():
        out = resample("fused", d, latent, cond, step_sigmas(1), args.tile, args.overlap)
    wall = time.perf_counter() - start
    result = {"size": args.memory_child, "base_kb": base, "hwm_kb": _status_kb("VmHWM") if reset else None,
              "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              "maxrss_before_kb": base_maxrss, "calls": len(d.calls),
              "tile": f"{d.calls[0].h}×{d.calls[0].w}", "wall": wall, "tensor_peak_kb": None}
    assert torch.isfinite(out).all()
    del out
    if args.memory_profile:
        gc.collect()
        with sdpa_attention(), torch.inference_mode(), torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            resample("fused", UNetDenoiser(unet), latent, cond, step_sigmas(1), args.tile, args.overlap)
        result["tensor_peak_kb"] = tensor_peak_bytes(prof) / 1024
    print(MEMORY_MARK + json.dumps(result), flush=True)


@dataclass
class MemoryRow:
    size: int
    runs: list[dict]              # one per fresh process
    tensor_peak_kb: Optional[float]

    @property
    def deltas_kb(self) -> list[float]:
        return [r["peak_kb"] - r["base_kb"] for r in self.runs]

    @property
    def delta_kb(self) -> float:
        return sum(self.deltas_kb) / len(self.deltas_kb)


def measure_memory(args: argparse.Namespace) -> list[MemoryRow]:
    rows = []
    for size in args.memory_sizes:
        runs, tensor_peak = [], None
        for rep in range(args.memory_repeats):
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(size),
                   "--memory-model", args.memory_model, "--tile", str(args.tile),
                   "--overlap", str(args.overlap), "--threads", str(args.threads)]
            if rep == 0:
                cmd.append("--memory-profile")
            log(f"memory: {size}px, fresh process {rep + 1}/{args.memory_repeats} ({args.memory_model})")
            env = dict(os.environ)
            if args.malloc_mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child for {size}px failed:\n{proc.stderr[-3000:]}")
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith(MEMORY_MARK)][-1]
            r = json.loads(line[len(MEMORY_MARK):])
            r["peak_kb"] = r["hwm_kb"] if r["hwm_kb"] is not None else r["maxrss_kb"]
            r["method"] = "VmHWM (reset)" if r["hwm_kb"] is not None else "ru_maxrss"
            tensor_peak = r["tensor_peak_kb"] if r["tensor_peak_kb"] is not None else tensor_peak
            log(f"memory {size}px: {r}")
            runs.append(r)
        rows.append(MemoryRow(size, runs, tensor_peak))
    return rows


def memory_table(rows: list[MemoryRow]) -> str:
    ref = rows[0]
    lines = ["| image (latent) | U-Net calls (tile) | RSS before (MB) | peak RSS − before, each process (MB) "
             "| mean (MB) | ÷ first row | ≤ 1.3× | peak of live tensors (MB) | ÷ first row | ≤ 1.3× "
             "| wall s |",
             "|---|---|---:|---|---:|---:|:---:|---:|---:|:---:|---:|"]
    for r in rows:
        ratio = r.delta_kb / ref.delta_kb
        t_ratio = (r.tensor_peak_kb / ref.tensor_peak_kb
                   if r.tensor_peak_kb is not None and ref.tensor_peak_kb else None)
        ok = "—" if r is ref else "yes" if ratio <= TARGET_MEMORY else "**no**"
        t_ok = "—" if r is ref or t_ratio is None else "yes" if t_ratio <= TARGET_MEMORY else "**no**"
        first = r.runs[0]
        lines.append(f"| {r.size}² ({r.size // LATENT_FACTOR}²) | {first['calls']} ({first['tile']}) "
                     f"| {first['base_kb'] / 1024:.0f} | {', '.join(f'{d / 1024:.0f}' for d in r.deltas_kb)} "
                     f"| {r.delta_kb / 1024:.0f} | {ratio:.3f}× | {ok} "
                     f"| {fmt_mb(r.tensor_peak_kb)} | {'—' if t_ratio is None else f'{t_ratio:.3f}×'} | {t_ok} "
                     f"| {first['wall']:.0f} |")
    return "\n".join(lines)


def fmt_mb(kb: Optional[float]) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f}"


# --------------------------------------------------------------------------- 4. seams

@dataclass
class SeamRow:
    denoiser: str      # "eps" or "x0" (UNetDenoiser's parametrization)
    mode: str
    overlap: Optional[int]
    tiles: int
    borders: str
    score: float
    untiled: float
    diff: float        # seam score of (result - untiled result): where the tiling's error lies


def measure_seams(unet: torch.nn.Module, cfg: ModelConfig, height: int, width: int, tile: int,
                  overlap: int, sigmas: torch.Tensor, parametrization: str) -> list[SeamRow]:
    """Seam scores of every mode's result (latent cells), and of the untiled result at the
    same borders. Moving mode is scored at the borders of its last step's grid."""
    latent, cond = smooth_latent(height, width), make_cond(cfg.context_dim)
    tile_px, steps = tile * LATENT_FACTOR, len(sigmas) - 1

    def run(mode: str, overlap_cells: int) -> torch.Tensor:
        wall0 = time.perf_counter()
        out = resample(mode, UNetDenoiser(unet, parametrization), latent, cond, sigmas, tile_px,
                       overlap_cells * LATENT_FACTOR)
        log(f"seams ({parametrization}): {mode} (overlap {overlap_cells}) {time.perf_counter() - wall0:.1f}s")
        return out

    untiled = run("untiled", overlap)
    rows = []
    for mode, ov in (("independent", overlap), ("independent", 0), ("fused", overlap), ("moving", None)):
        out = run(mode, ov or 0)
        if mode == "moving":
            t_last = torch.full((ROWS,), float(sigmas[steps - 1]))
            dy, dx = seam_offset(SEED, t_last, height, width, tile, tile)
            tiles = shifted_grid(height, width, tile, tile, dy, dx)
            borders = f"last step's grid, shift ({dy}, {dx})"
        else:
            tiles = make_plan(mode, tile_px, ov * LATENT_FACTOR).tiles(height, width)
            borders = "plan: " + "; ".join(sorted({f"y {t.y}" for t in tiles} | {f"x {t.x}" for t in tiles},
                                                  key=lambda s: (s[0], int(s[2:]))))
        rows.append(SeamRow(parametrization, mode, ov, len(tiles), borders, seam_score(out, tiles), seam_score(untiled, tiles),
                            seam_score(out - untiled, tiles)))
        log(f"seams: {rows[-1]}")
    return rows


def seam_table(rows: list[SeamRow]) -> str:
    lines = ["| denoiser | mode | overlap (cells) | tiles | borders scored (tile origins) | seam score "
             "| untiled result, same borders | score ÷ untiled | score of (result − untiled) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.denoiser} | {r.mode} | {'—' if r.overlap is None else r.overlap} | {r.tiles} | {r.borders} "
                     f"| {r.score:.3f} | {r.untiled:.3f} | {r.score / r.untiled:.3f}× | {r.diff:.3f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report

# --------------------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=("work", "time", "memory", "seam"),
                   default=["work", "time", "memory", "seam"])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048],
                   help="image sides (px) of the timing table")
    p.add_argument("--work-sizes", type=int, nargs="+", default=[1024, 2048, 3072, 4096],
                   help="image sides (px) of the work table (free stand-in denoiser)")
    p.add_argument("--steps", type=int, default=2, help="Euler steps (denoiser calls) per timed pass")
    p.add_argument("--rounds", type=int, nargs="+", default=[3, 1],
                   help="timed rounds per U-Net of --models (the last value repeats)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["sd1-64-attn-ds8", "sd1-64"],
                   help="U-Nets of the timing table")
    p.add_argument("--tile", type=int, default=1024, help="tile size (px)")
    p.add_argument("--overlap", type=int, default=128, help="overlap (px; not in moving mode)")
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[1024, 4096],
                   help="image sides (px) of the memory table; the first is the reference")
    p.add_argument("--memory-model", choices=sorted(MODELS), default="sd1-64")
    p.add_argument("--memory-repeats", type=int, default=2, help="fresh processes per memory size")
    p.add_argument("--malloc-mmap-threshold", type=int, default=1 << 20,
                   help="bytes; glibc's MALLOC_MMAP_THRESHOLD_ for the memory processes, so that "
                        "blocks this large are mapped and unmapped on their own and RSS follows the "
                        "live memory, as a GPU allocator's peak would (0: glibc's default, dynamic)")
    p.add_argument("--memory-profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seam-model", choices=sorted(MODELS), default="sd1-64")
    p.add_argument("--seam-latent", type=int, nargs=2, default=[96, 128], metavar=("H", "W"),
                   help="latent size (cells) of the seam table")
    p.add_argument("--seam-tile", type=int, default=64, help="tile (cells) of the seam table")
    p.add_argument("--seam-overlap", type=int, default=16, help="overlap (cells) of the seam table")
    p.add_argument("--seam-steps", type=int, default=3, help="Euler steps of the seam table")
    p.add_argument("--seam-denoisers", nargs="+", choices=("eps", "x0"), default=["eps", "x0"],
                   help="U-Net parametrizations of the seam table")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a loaded machine a second thread mostly "
                        "waits for a core, and every parallel op waits for the slower thread)")
    p.add_argument("--quick", action="store_true", help="tiny U-Net and sizes (seconds); no file written")
    p.add_argument("--results", default=None,
                   help=f"Markdown file to update (default {os.path.relpath(DEFAULT_RESULTS)}; none with --quick)")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.work_sizes, args.steps, args.rounds = [512], [512, 1024], 2, [1]
        args.models, args.memory_model, args.seam_model = ["tiny"], "tiny", "tiny"
        args.tile, args.overlap, args.memory_sizes, args.memory_repeats = 256, 64, [256, 512], 1
        args.seam_latent, args.seam_tile, args.seam_overlap = [48, 64], 32, 8
    if args.results is None and not args.quick:
        args.results = DEFAULT_RESULTS
    if any(s % 64 for s in args.sizes + args.work_sizes + args.memory_sizes):
        p.error("image sizes must be multiples of 64 px")
    if args.tile % LATENT_FACTOR or args.overlap % LATENT_FACTOR or args.overlap >= args.tile:
        p.error("--tile and --overlap must be multiples of 8 px, the overlap below the tile")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.memory_child is not None:
        memory_child(args)
        return
    torch.set_num_threads(args.threads)
    command = command_line(__file__, argv)
    header = machine_line(args.threads)
    log(header)
    unets: dict[str, torch.nn.Module] = {}

    def unet_of(name: str) -> torch.nn.Module:
        if name not in unets:
            cfg = MODELS[name]
            unets[name] = build_unet(cfg)
            shapes = check_sdpa(unets[name], cfg.context_dim)
            log(f"U-Net {name}: {sum(p.numel() for p in unets[name].parameters()) / 1e6:.1f}M parameters; "
                f"SDPA forward matches ldm's default on {shapes} attention shapes and a whole call")
        return unets[name]

    tile_cells, overlap_cells = args.tile // LATENT_FACTOR, args.overlap // LATENT_FACTOR
    parts: list[str] = []
    verdicts: list[str] = []
    wall0 = time.perf_counter()
    with torch.inference_mode():
        if "work" in args.parts:
            rows = measure_work(sorted(set(args.work_sizes)), args.tile, args.overlap, args.steps)
            parts += ["### 1. U-Net work per sampler step", "",
                      f"Sum of tile area × rows over the U-Net calls of a {args.steps}-step pass, ÷ (steps × "
                      f"image area × rows). Tiles {args.tile} px ({tile_cells} cells), overlap "
                      f"{args.overlap} px ({overlap_cells} cells; moving mode: none), tile batch 1. "
                      "Counted with a free stand-in denoiser (the tile geometry does not depend on the "
                      "U-Net); the timing table below counts the same on its real passes.", "",
                      work_table(rows, args.tile, args.overlap), ""]
            for r in rows:
                if r.image in args.sizes:
                    verdicts.append(f"- Work at {r.image}², {r.mode}: {r.work:.3f}× (target ≤ {TARGET_WORK}×): "
                                    f"**{'met' if r.work <= TARGET_WORK else 'not met'}**")
            print("\n" + "\n".join(parts[-2:]), flush=True)
        with sdpa_attention():
            if "seam" in args.parts:
                cfg = MODELS[args.seam_model]
                h, w = args.seam_latent
                sigmas = step_sigmas(args.seam_steps)
                rows_s = [row for param in args.seam_denoisers
                          for row in measure_seams(unet_of(cfg.name), cfg, h, w, args.seam_tile,
                                                   args.seam_overlap, sigmas, param)]
                parts += ["### 4. Seam score", "",
                          f"`tiles.seam_score` (latent cells, band 1) of each mode's result, with the "
                          f"`{cfg.name}` U-Net (denoiser `eps`: x0 = x − σ·U-Net(x·c_in), A1111's "
                          "CompVisDenoiser; `x0`: the U-Net's output taken as x0, as the tests' "
                          "`unet_denoiser`), on a smooth "
                          f"{h}×{w} latent (bicubic upsampling of "
                          f"1/16-size noise) resampled by {args.seam_steps} Euler steps, sigmas "
                          f"{', '.join(f'{s:g}' for s in sigmas.tolist())} (img2img style: noise × "
                          f"{sigmas[0]:g} added first), tiles of {args.seam_tile} cells "
                          f"({args.seam_tile * LATENT_FACTOR} px), overlap {args.seam_overlap} cells. "
                          "`score ÷ untiled` compares with the untiled result scored at the same borders "
                          "(≈ 1 when the tiling leaves no seam); `score of (result − untiled)` scores the "
                          "difference between the mode's and the untiled result (> 1: the tiling's error "
                          "is larger at the borders than inside the tiles). Tiles are equal and flush with the "
                          "latent's edges, so even 'overlap 0' overlaps where the side is not a "
                          "multiple of the tile.", "",
                          seam_table(rows_s), ""]
                print("\n" + "\n".join(parts[-2:]), flush=True)
        if "memory" in args.parts:
            mem = measure_memory(args)
            parts += ["### 3. Peak memory of a fused resample", "",
                      f"Fused mode, one Euler step (one denoiser call), tile batch 1, tiles {args.tile} px, "
                      f"overlap {args.overlap} px, `{args.memory_model}` U-Net, {args.memory_repeats} fresh "
                      f"process(es) per size. Peak RSS by {mem[0].runs[0]['method']}; 'RSS before' is taken "
                      "after the model is built and the inputs allocated, just before `run_resample` (the "
                      "model build's own peak is not counted). "
                      + (f"The memory processes run with `MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}`: "
                         "glibc maps every block of that size or more on its own and unmaps it when freed, so "
                         "the peak RSS follows the live memory (with glibc's default, dynamic threshold, freed "
                         "blocks stay in the heap and the peak varies between processes by up to ~30%). "
                         if args.malloc_mmap_threshold else
                         "RSS depends on the allocator's state (glibc keeps and reuses freed blocks), so it "
                         "varies between processes. ")
                      + "The 'live tensors' "
                      "column is exact: in the first process the same resample is run once more under "
                      "`torch.profiler` (`profile_memory=True`) and the peak of the running sum of its "
                      "tensor allocations and frees is taken. The first row's image is one tile: its call "
                      "is a plain untiled U-Net call of the tile's size.", "",
                      memory_table(mem), ""]
            ref = mem[0]
            for r in mem[1:]:
                ratio = r.delta_kb / ref.delta_kb
                extra_mb = (r.delta_kb - ref.delta_kb) / 1024
                latent_mb = ROWS * 4 * (r.size // LATENT_FACTOR) ** 2 * 4 / 2 ** 20
                verdicts.append(f"- Memory {r.size}² ÷ {ref.size}², peak RSS − before (mean of "
                                f"{len(r.runs)}): {ratio:.3f}× (each: "
                                f"{', '.join(f'{d / ref.delta_kb:.3f}×' for d in r.deltas_kb)}; target ≤ "
                                f"{TARGET_MEMORY}×): **{'met' if ratio <= TARGET_MEMORY else 'not met'}**")
                if r.tensor_peak_kb is not None and ref.tensor_peak_kb:
                    t_ratio = r.tensor_peak_kb / ref.tensor_peak_kb
                    t_extra = (r.tensor_peak_kb - ref.tensor_peak_kb) / 1024
                    verdicts.append(f"- Memory {r.size}² ÷ {ref.size}², peak of live tensors: {t_ratio:.3f}× "
                                    f"(target ≤ {TARGET_MEMORY}×): **{'met' if t_ratio <= TARGET_MEMORY else 'not met'}**; "
                                    f"the difference, {t_extra:.0f} MB (RSS: {extra_mb:.0f} MB), is "
                                    f"{t_extra / latent_mb:.1f}× one {ROWS}-row fp32 latent of that size "
                                    f"({latent_mb:.1f} MB)")
            print("\n" + "\n".join(parts[-2:]), flush=True)
        if "time" in args.parts:
            timed = []
            with sdpa_attention():
                for i, name in enumerate(args.models):
                    rounds = args.rounds[min(i, len(args.rounds) - 1)]
                    for size in args.sizes:
                        timed.append((MODELS[name], size, time_passes(unet_of(name), MODELS[name], size,
                                                                      args.tile, args.overlap, args.steps, rounds)))
            desc = "; ".join(MODELS[n].describe() for n in args.models)
            parts += ["### 2. Wall time per unit of work", "",
                      f"Each pass: {args.steps} Euler steps (sigmas "
                      f"{', '.join(f'{s:g}' for s in step_sigmas(args.steps).tolist())}), 2 rows per "
                      f"denoiser call, tiles {args.tile} px, overlap {args.overlap} px, tile batch 1; "
                      f"rounds per U-Net: {', '.join(f'{n} {args.rounds[min(i, len(args.rounds) - 1)]}' for i, n in enumerate(args.models))} "
                      "(interleaved, order rotated). `wall / work ÷ untiled` = (wall s of the pass ÷ its "
                      "work per step) ÷ wall s of the untiled pass; the CPU column does the same with "
                      "process CPU seconds. A U-Net call costs more per cell the larger it is (attention "
                      "is quadratic in the tokens, and on this CPU even the convolutions of a 256² call "
                      "run slower per cell than those of a 128² one), so a ratio below 1 means the tiles "
                      "are cheaper per cell, not that tiling costs nothing; the last column is what the "
                      "tiling machinery itself (crops, blends, conditioning) and the sampler's arithmetic "
                      "take, outside the U-Net calls. "
                      f"U-Nets (random weights, fp32, SDPA flash attention): {desc}.", "",
                      time_table(timed), ""]
            for cfg, size, passes in timed:
                for p in passes[1:]:
                    ratio = p.wall_mean / p.work / passes[0].wall_mean
                    verdicts.append(f"- Wall/work {cfg.name} {size}², {p.mode}: {ratio:.3f}× (target ≤ "
                                    f"{TARGET_TIME}×): **{'met' if ratio <= TARGET_TIME else 'not met'}**")
            print("\n" + "\n".join(parts[-2:]), flush=True)
    order = {"### 1": 0, "### 2": 1, "### 3": 2, "### 4": 3}
    blocks, i = [], 0
    while i < len(parts):   # blocks of 5 lines: heading, "", text, "", table, "" -> sort by number
        j = next((k for k in range(i + 1, len(parts)) if parts[k].startswith("### ")), len(parts))
        blocks.append(parts[i:j])
        i = j
    blocks.sort(key=lambda b: order.get(b[0][:5], 9))
    section = "\n".join([RESULTS_HEADING, "", f"Machine: {header}.", "", f"Command: `{command}` "
                         f"({(time.perf_counter() - wall0) / 60:.0f} min).", "",
                         "All numbers of a table come from one run of the command above, in one process "
                         "(memory: fresh processes, started by it); other jobs shared the machine, so read the "
                         "ratios. `CPU / wall` well below the thread count means the run was starved. "
                         "Default: 1 torch thread with `OMP_WAIT_POLICY=PASSIVE`: with the load several "
                         "times the core count, a second thread mostly waits for a core and every "
                         "parallel op waits for the slower thread (a cost that grows with the number of "
                         "calls, i.e. against the tiled passes); with 2 threads and OpenMP's default "
                         "spinning, small U-Net calls ran ~10× slower on this machine.", ""]
                        + [line for b in blocks for line in b]
                        + ["### Targets", ""] + (verdicts or ["- none assessed"]) + [""])
    print("\n" + section, flush=True)
    if args.results:
        write_section(args.results, section)
        log(f"written to {args.results}")


if __name__ == "__main__":
    main()
