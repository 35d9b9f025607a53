"""Benchmark: the Script tab's mask grid through the HTTP API of one running WebUI.

What is measured
----------------
Wall time of img2img requests on one source image (its own txt2img first), one grid of
``rows x columns`` cells with one cell mask (a disc, white = regenerate), the same seed,
steps, sampler and denoise, each request answered with all its images:

1. **one sampling** -- the WebUI's own img2img inpaint of the image with the whole grid
   mask (the ``mask`` field): the U-Net work of one masked sampling, one output;
2. **Sample then Fork** -- the same sampling, then one output per cell (forked in pixel
   space, one VAE decode); the target is at most 1.1x (1);
3. **Fork then Sample, all cells per batch** -- every cell sampled with its own mask, the
   cells as one batch;
4. **Fork then Sample, one cell per batch** -- the same, one cell per sampling (what N
   separate inpaint jobs would cost, inside one job).

The settings are timed in interleaved, rotated rounds (the median is reported), after one
warm-up request of each. Stop other servers first: on a shared machine the wall times are
noisy (the load average at start and end is written with the table).

Usage::

    python bench/bench_mask_grid.py --url http://127.0.0.1:7883          # updates bench/RESULTS.md
    python bench/bench_mask_grid.py --url ... --size 384 256 --grid 2 3 --steps 2 --rounds 1 --results none
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_common import command_line, cpu_model, log, write_section  # noqa: E402

RESULTS_HEADING = "## Mask grid: Sample then Fork and Fork then Sample through the API"
DEFAULT_RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
TOOLS = "tile sampler tools"


def call(url: str, path: str, payload: Optional[dict] = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=7200) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{path}: HTTP {e.code} {e.read().decode(errors='replace')[:500]}") from None


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def disc(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    r = np.hypot((y - height / 2 + 0.5) / (height / 2), (x - width / 2 + 0.5) / (width / 2))
    return np.where(r < 0.6, 255, 0)


def settings(args: argparse.Namespace, source: str) -> dict[str, dict]:
    width, height = args.size
    rows, columns = args.grid
    cell = disc(height // rows, width // columns)
    base = {"prompt": "a lighthouse on a cliff", "negative_prompt": "blurry", "steps": args.steps,
            "width": width, "height": height, "seed": 1234, "sampler_name": args.sampler,
            "cfg_scale": 5, "denoising_strength": args.denoise, "init_images": [source],
            "inpaint_full_res": False}
    tool = {"tool": "mask_grid", "mask": png_base64(cell), "rows": rows, "columns": columns}
    n = rows * columns
    return {
        "one sampling": dict(base, mask=png_base64(np.tile(cell, (rows, columns)))),
        "Sample then Fork": dict(base, script_name=TOOLS, script_args=[dict(tool, mode="Sample then Fork")]),
        f"Fork then Sample, {n} cells per batch": dict(
            base, script_name=TOOLS, script_args=[dict(tool, mode="Fork then Sample", cells_per_batch=n)]),
        "Fork then Sample, 1 cell per batch": dict(
            base, script_name=TOOLS, script_args=[dict(tool, mode="Fork then Sample", cells_per_batch=1)]),
    }


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:7883", help="the WebUI (started with --api and this extension)")
    p.add_argument("--size", type=int, nargs=2, default=[768, 768], metavar=("W", "H"))
    p.add_argument("--grid", type=int, nargs=2, default=[3, 3], metavar=("ROWS", "COLUMNS"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--denoise", type=float, default=0.75)
    p.add_argument("--sampler", default="Euler")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--note", default="", help="a sentence for the table (e.g. who else used the machine)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="Markdown file to update ('none': print only)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    url = args.url.rstrip("/")
    load_start = os.getloadavg()
    width, height = args.size
    log(f"source {width}x{height}")
    source = call(url, "/sdapi/v1/txt2img", {"prompt": "a lighthouse on a cliff", "steps": args.steps,
                                             "width": width, "height": height, "seed": 1,
                                             "sampler_name": args.sampler})
    version = json.loads(source["info"])["infotexts"][0].rsplit("Version: ", 1)[-1].split(",")[0].strip()
    jobs = settings(args, source["images"][0])
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, int] = {}
    for name in names:                                # warm-up, and the output counts
        answer = call(url, "/sdapi/v1/img2img", jobs[name])
        outputs[name] = len(answer["images"]) - json.loads(answer["info"])["index_of_first_image"]
        log(f"warm-up {name}: {outputs[name]} outputs")
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            call(url, "/sdapi/v1/img2img", jobs[name])
            times[name].append(time.perf_counter() - start)
            log(f"round {r + 1}/{args.rounds} {name}: {times[name][-1]:.2f} s")
    load_end = os.getloadavg()
    median = {name: statistics.median(times[name]) for name in names}
    one = median[names[0]]
    rows, columns = args.grid
    n = rows * columns
    table = ["| request | outputs | wall s (median) | rounds | × one sampling |", "|---|---|---|---|---|"]
    for name in names:
        spread = f"{min(times[name]):.2f}–{max(times[name]):.2f}"
        table.append(f"| {name} | {outputs[name]} | {median[name]:.2f} | {spread} | {median[name] / one:.2f} |")
    stf = median["Sample then Fork"] / one
    batched, single = median[names[2]], median[names[3]]
    command = command_line(__file__, argv)
    section = "\n".join([
        RESULTS_HEADING, "",
        f"Server: {version} at {url} (its checkpoint; the CPU test hosts run a tiny random-weight "
        f"SD1.x one), CPU {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in load_start)}, at end {', '.join(f'{v:.2f}' for v in load_end)}."
        + (f" {args.note}" if args.note else ""), "",
        f"Command: `{command.strip()}`. img2img {width}×{height}, {rows}×{columns} cells, "
        f"{args.steps} steps at denoise {args.denoise}, {args.sampler}, one disc mask per cell; each "
        f"request answers with all its images (base64 PNG); {args.rounds} interleaved rounds after "
        "a warm-up of each.", "",
        *table, "",
        f"- Sample then Fork: {stf:.2f}× one sampling (target ≤ 1.1×: "
        f"{'met' if stf <= 1.1 else 'NOT met'}), for {n} outputs instead of 1.",
        f"- Fork then Sample: all {n} cells in one batch {batched:.2f} s, one cell per batch "
        f"{single:.2f} s ({single / batched:.2f}× the batched time); both sample {n} latents, so on "
        "a CPU the gain of batching is only the per-sampling overhead (a GPU also runs the batch "
        "in parallel).", ""])
    print("\n" + section, flush=True)
    if args.results != "none":
        write_section(args.results, section)
        log(f"wrote {os.path.relpath(args.results)}")


if __name__ == "__main__":
    main()
