"""The page's preview lines, written from a plan of ``preview.plan_job`` (the page shows
them as they are; it does no plan maths of its own)."""
from __future__ import annotations

import html
import json
from typing import Any, Mapping

TIMES = "\u00d7"


def _size(width: int, height: int) -> str:
    return f"{width}{TIMES}{height}"


def _counts(options: list) -> str:
    return "/".join(str(n) for n in options)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def hypertile_lines(plan: Mapping[str, Any]) -> list[str]:
    """One line per stage: the windows HyperTile draws from at each level."""
    lines = []
    for stage in plan["hypertile"].get("stages", []):
        parts = []
        for level in stage["levels"]:
            h, w = level["tokens"]
            if level["speedup"] > 1:
                parts.append(f"level {level['depth']}: {_size(h, w)} tokens \u2192 "
                             f"{_counts(level['windows_h'])} {TIMES} {_counts(level['windows_w'])} "
                             f"windows (attention up to {level['speedup']}{TIMES} cheaper)")
            else:
                parts.append(f"level {level['depth']}: {_size(h, w)} tokens stay whole (no "
                             f"divisor leaves windows of {level['min_window']} tokens)")
        lines.append(f"{stage['name']} {_size(stage['width'], stage['height'])}: " + "; ".join(parts))
    return lines


def resample_lines(plan: Mapping[str, Any]) -> list[str]:
    """The resample's tiles, steps and work, or why it cannot run."""
    r = plan["resample"]
    if not r.get("enabled"):
        return []
    if r.get("error"):
        return [f"\u26a0 {r['error']}"]
    tw, th = r["tile"]
    ny, nx = r["grid"]
    tiles = f"{ny}{TIMES}{nx} tiles of {_size(tw, th)} px"
    if r["mode"] == "moving":
        tiles += " (a moving grid, no overlap)"
    else:
        tiles += f", overlap \u2265 {r['overlap']} px"
    line = f"{tiles} over {_size(plan['width'], plan['height'])}"
    if not r["steps_run"]:
        return [line, "denoise 0: the pass leaves the latent unchanged"]
    stage = next(s for s in plan["stages"] if s["name"] == "resample")
    if r["mode"] == "independent":
        runs = "1 sampler run" if r["batches"] == 1 else f"{r['batches']} sampler runs"
        how = f"{runs} of {r['steps_run']} steps"
    else:
        how = f"{r['steps_run']} steps of {r['batches']} U-Net calls"
    return [line, f"{r['mode']}: {how} ({r['steps_run']} of a {r['steps']}-step schedule), "
                  f"{stage['unet_calls']} U-Net calls, work {r['work_per_step']:.2f}{TIMES} "
                  "an untiled pass"]


def cost_line(plan: Mapping[str, Any]) -> str:
    """The whole job: U-Net calls per stage, work units, and the ETA once measured."""
    total = plan["total"]
    calls = " + ".join(f"{s['unet_calls']} {s['name']}" for s in plan["stages"])
    images = f" for {plan['images']} images" if plan["images"] > 1 else ""
    line = f"Job: {calls} U-Net calls; work {total['work']:.1f} units{images}"
    if total["work_without_resample"] and total["work"] != total["work_without_resample"]:
        line += f" ({total['work'] / total['work_without_resample']:.2f}{TIMES} the job without the resample)"
    if total["eta_seconds"] is not None:
        line += f"; ETA \u2248 {duration(total['eta_seconds'])} (measured on this model)"
    else:
        line += "; ETA after a first job with this model"
    return line


def _block(lines: list[str], cls: str, data: str = "") -> str:
    body = "<br>".join(html.escape(x) for x in lines)
    return f'<div class="tilesampler-preview {cls}"{data}>{body}</div>'


def preview_html(plan: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(HyperTile line, resample line, cost line)`` as HTML; the cost line carries the
    plan itself as JSON in ``data-plan`` (the browser tests compare it with the route's)."""
    data = f' data-plan="{html.escape(json.dumps(plan, sort_keys=True))}"'
    cost = cost_line(plan) if plan.get("enabled") else ""
    return (_block(hypertile_lines(plan), "tilesampler-hypertile"),
            _block(resample_lines(plan), "tilesampler-resample"),
            _block([cost] if cost else [], "tilesampler-cost", data))


def error_html(message: str) -> tuple[str, str, str]:
    """What the preview shows for a request it cannot plan."""
    return "", "", _block([f"\u26a0 {message}"], "tilesampler-cost")
