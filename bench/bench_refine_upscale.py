"""Benchmark: the Script tab's Refine & upscale (img2img, upscale only) against A1111's
built-in "SD upscale" script, through the HTTP API of one running WebUI, in one run.

The job: a 512x512 image upscaled x4 to 2048x2048 with the same upscaler model, then
re-denoised in 512 px tiles with 64 px of overlap at denoise 0.3 (main settings: Euler,
20 steps, CFG 7, one seed). Measured for each method:

* wall time of the request (client side, the same server, one after the other);
* U-Net work in image-steps (the tiles' area x steps, over the image's area). Ours: the
  denoiser evaluations the job counted (``GET /tilesampler/v1/jobs/last``, stage
  ``resample``: one per tile and step at tile batch 1) x the tile's area. SD upscale: its
  tiles (``images.split_grid``: ``ceil((side - overlap) / (tile - overlap))`` per side) x
  the steps A1111's img2img runs at that denoise (``int(denoise x steps) + 1``);
* the seam score (``lib_tilesampler.tiling.plan.seam_score``: mean neighbour difference on
  the tile borders over the mean elsewhere; about 1 when no border shows) of each output,
  at its own method's borders and at the other's. Our borders are the tiles of our plan.
  SD upscale's are where a tile starts to show and where the previous one stops
  (``images.combine_grid`` fades each tile in over the first ``overlap`` pixels and then
  covers the previous tile): tile i spans ``x_i .. x_(i+1) + overlap``.

A1111 runs ``int(0.3 x 20) + 1 = 7`` steps per tile from the 14th sigma of 20 from the
end; ours runs the seed node's ``ceil(0.3 x 20) = 6`` from the 6th. The row "ours, same
start" runs ours at denoise 0.35: 7 steps from the same sigma as SD upscale.

Usage (A1111 1.10 with --api, the extension, a checkpoint and the ``tiny-esrgan-4x``
fixture; nothing else running on the server)::

    python bench/bench_refine_upscale.py --url http://127.0.0.1:7881     # updates bench/RESULTS.md
    python bench/bench_refine_upscale.py --url ... --size 256 --results ""   # a quick look, no file
"""
from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lib_tilesampler.tiling.passes import LATENT_FACTOR, TilePlan  # noqa: E402
from lib_tilesampler.tiling.plan import Tile, seam_score  # noqa: E402
from bench_common import command_line, cpu_model, log, write_section  # noqa: E402

RESULTS_HEADING = "## Refine & upscale vs SD upscale: img2img x4 to 2048² (A1111, CPU)"
DEFAULT_RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
TOOL = "tile sampler tools"


def call(url: str, path: str, payload: Optional[dict] = None, timeout: float = 7200) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{path}: HTTP {e.code}: {e.read().decode(errors='replace')[:2000]}") from None


def source_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth test picture (gradients, soft discs): seams show on it, not on noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.5 + 0.3 * np.sin(3 * x + 2 * y)], axis=-1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.04, 0.2)
        color = rng.uniform(0, 1, 3)
        weight = np.clip(1.5 - np.hypot(x - cx, y - cy) / r, 0, 1)[..., None]
        image = image * (1 - weight) + color * weight
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def png_base64(image: np.ndarray) -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[-1]))) as image:
        return np.asarray(image.convert("RGB")).copy()


def score(image: np.ndarray, tiles: list[Tile]) -> float:
    return seam_score(torch.from_numpy(image).permute(2, 0, 1).double(), tiles)


def sd_upscale_grid(side: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one side, as ``images.split_grid`` places them."""
    count = math.ceil((side - overlap) / (tile - overlap))
    step = (side - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), side - tile) for i in range(count)]


def sd_upscale_seam_tiles(side: int, tile: int, overlap: int) -> list[Tile]:
    """SD upscale's visible tiles in latent cells: tile i shows from its origin to where
    the next one has faded in (``combine_grid``)."""
    xs = sd_upscale_grid(side, tile, overlap)
    ends = [x + overlap for x in xs[1:]] + [side]
    spans = [(x // LATENT_FACTOR, (end - x) // LATENT_FACTOR) for x, end in zip(xs, ends)]
    return [Tile(y, x, h, w) for y, h in spans for x, w in spans]


@dataclass
class Row:
    method: str
    tiles: int
    steps: int
    work: float
    wall: float
    own: float
    other: float
    note: str = ""


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TILESAMPLER_WEBUI_URL", "http://127.0.0.1:7881"))
    parser.add_argument("--size", type=int, default=512, help="input side (px); the output is 4x")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--denoise", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--upscaler", default="tiny-esrgan-4x")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="Markdown file to update ('' for none)")
    args = parser.parse_args(argv)
    url, side = args.url, 4 * args.size
    load_start = os.getloadavg()
    version = "?"
    main_fields = {"prompt": "a harbour town at dusk, detailed", "negative_prompt": "blurry",
                   "steps": args.steps, "cfg_scale": 7, "sampler_name": "Euler", "seed": 1234,
                   "init_images": [png_base64(source_image(args.size))], "save_images": False}

    log("warm-up (models, upscaler)")
    warm = dict(main_fields, init_images=[png_base64(source_image(64))], steps=2, width=64, height=64,
                script_name=TOOL, script_args=[{"upscaler": args.upscaler, "upscale_by": 4,
                                                "tiler_denoise": 0.5, "tiler_tile_size": 256}])
    answer = call(url, "/sdapi/v1/img2img", warm)
    version = next((part.split(": ", 1)[1] for part in json.loads(answer["info"])["infotexts"][0].split(", ")
                    if part.startswith("Version: ")), "?")

    def ours(denoise: float) -> tuple[np.ndarray, float, dict]:
        body = dict(main_fields, script_name=TOOL, script_args=[{
            "upscaler": args.upscaler, "upscale_by": 4, "tiler_denoise": denoise,
            "tiler_tile_size": args.tile, "tiler_overlap": args.overlap, "tiler_mode": "independent",
            "tiler_batch": 1, "tiled_only": True}])
        started = time.perf_counter()
        answer = call(url, "/sdapi/v1/img2img", body)
        wall = time.perf_counter() - started
        return decode(answer["images"][0]), wall, call(url, "/tilesampler/v1/jobs/last")

    def sd_upscale() -> tuple[np.ndarray, float]:
        body = dict(main_fields, width=args.tile, height=args.tile, denoising_strength=args.denoise,
                    script_name="sd upscale", script_args=["", args.overlap, args.upscaler, 4])
        started = time.perf_counter()
        answer = call(url, "/sdapi/v1/img2img", body)
        wall = time.perf_counter() - started
        return decode(answer["images"][0]), wall

    plan = TilePlan.from_values({"resample_tile_size": args.tile, "resample_overlap": args.overlap,
                                 "resample_mode": "independent", "resample_weights": "gaussian",
                                 "resample_batch": 1, "resample_denoise": args.denoise}, args.steps)
    our_tiles = plan.tiles(side // LATENT_FACTOR, side // LATENT_FACTOR)
    their_tiles = sd_upscale_seam_tiles(side, args.tile, args.overlap)
    tile_area = (our_tiles[0].h * our_tiles[0].w) / (side // LATENT_FACTOR) ** 2
    grid = sd_upscale_grid(side, args.tile, args.overlap)
    their_steps = int(min(args.denoise, 0.999) * args.steps) + 1
    same_start = round((their_steps) / args.steps, 4)

    rows = []
    log("SD upscale")
    image, wall = sd_upscale()
    assert image.shape == (side, side, 3), image.shape
    rows.append(Row("A1111 SD upscale", len(grid) ** 2, their_steps,
                    len(grid) ** 2 * their_steps * (args.tile / side) ** 2, wall,
                    score(image, their_tiles), score(image, our_tiles),
                    f"denoise {args.denoise}: {their_steps} steps per tile (computed)"))
    for name, denoise in (("ours (Refine & upscale, independent)", args.denoise),
                          ("ours, same start as SD upscale", same_start)):
        log(name)
        image, wall, job = ours(denoise)
        assert image.shape == (side, side, 3), image.shape
        evaluations = job["stages"]["resample"]["evaluations"]
        tiles = job["refine_upscale"]["tiles"]
        rows.append(Row(name, tiles, evaluations // max(1, tiles), evaluations * tile_area, wall,
                        score(image, our_tiles), score(image, their_tiles),
                        f"denoise {denoise}: {evaluations} evaluations counted"))
    load_end = os.getloadavg()

    header = ("| method | tiles | steps per tile | U-Net work (image-steps) | wall (s) | seam score, own borders "
              "| seam score, the other's borders | note |\n|---|---|---|---|---|---|---|---|")
    lines = [header] + [f"| {r.method} | {r.tiles} | {r.steps} | {r.work:.2f} | {r.wall:.0f} | {r.own:.3f} "
                        f"| {r.other:.3f} | {r.note} |" for r in rows]
    base = rows[0]
    verdicts = [f"{r.method}: {base.wall / r.wall:.2f}x the speed of SD upscale, seam score "
                f"{r.own:.3f} vs {base.own:.3f}" for r in rows[1:]]
    command = command_line(__file__, argv)
    section = "\n".join([
        RESULTS_HEADING, "",
        f"Machine: CPU {cpu_model()}, {os.cpu_count()} cores; WebUI {version} at {url}; "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}; load average {load_start[0]:.2f} at the start, "
        f"{load_end[0]:.2f} at the end (the machine is shared: read the ratios).", "",
        f"Command: `{command.strip()}`. Input {args.size}² (a smooth synthetic picture), upscaler "
        f"`{args.upscaler}` x4 to {side}², tiles {args.tile} px, overlap {args.overlap} px, denoise "
        f"{args.denoise}, Euler, {args.steps} steps, CFG 7, one request each, one after the other on one server.",
        "", *lines, "", *[f"- {v}" for v in verdicts], "",
        "U-Net work: ours counted by the job, SD upscale's computed from its tiles and A1111's img2img "
        "step count. Besides the U-Net, SD upscale encodes and decodes every tile with the VAE "
        f"({len(grid) ** 2} x {args.tile}², {len(grid) ** 2 * args.tile ** 2 / side ** 2:.2f}x the image's "
        "pixels each way) and runs a whole img2img job per tile; ours encodes and decodes the image once. "
        "Seam scores: `seam_score` of the 8-bit RGB output, band one latent cell (8 px) on each side "
        "of a border.", ""])
    print(section)
    if args.results:
        write_section(args.results, section)
        log(f"wrote {args.results}")


if __name__ == "__main__":
    main()
