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
    calls = " + ".join(f"{s['unet_calls']} {s['name']}" for s in plan["stages"] if s["unet_calls"])
    images = f" for {plan['images']} images" if plan["images"] > 1 else ""
    line = f"Job: {calls} U-Net calls; work {total['work']:.1f} units{images}"
    if plan.get("tool") and total["plain_work"]:
        line += f" ({total['work'] / total['plain_work']:.2f}{TIMES} a plain run)"
    elif total["work_without_resample"] and total["work"] != total["work_without_resample"]:
        line += f" ({total['work'] / total['work_without_resample']:.2f}{TIMES} the job without the resample)"
    if total["eta_seconds"] is not None:
        line += f"; ETA \u2248 {duration(total['eta_seconds'])} (measured on this model)"
    else:
        line += "; ETA after a first job with this model"
    return line


def tool_lines(plan: Mapping[str, Any]) -> list[str]:
    """What the Script's tool will do (its stages, tiles or cells), then the job's cost."""
    tool = plan.get("tool")
    if not tool:
        return []
    stages = {s["name"]: s for s in plan["stages"]}
    if tool["name"] == "refine_upscale":
        parts = []
        sampled = [f"{name} {stages[name]['steps']}" for name in ("base", "refiner") if name in stages]
        if sampled:
            parts.append(f"{' + '.join(sampled)} steps at {_size(*tool['input'])}")
        upscaler = "" if tool["upscaler"] == "None" else f" with {tool['upscaler']}"
        parts.append(f"upscale{upscaler} to {_size(*tool['output'])}"
                     + (" (from the width and height: the input image is not known)"
                        if not tool["refine"] and tool["input_from"] == "size" else ""))
        if "resample" in stages:
            tiled = stages["resample"]
            tw, th = tool["tile"]
            runs = f"{tiled['runs']} sampler runs" if tool["mode"] == "independent" else "1 sampler run"
            parts.append(f"{_size(*tool['grid'])} tiles of {_size(tw, th)} px, {tool['mode']}: "
                         f"{runs} of {tool['steps_run']} steps")
        else:
            parts.append("tiler denoise 0: no re-denoise")
        head = "Refine & upscale: " + " → ".join(parts)
    else:
        rows, cols = tool["grid"]
        source = f"a {_size(plan['width'], plan['height'])} source, then " if tool["source"] else ""
        batches = f"{tool['batches']} batch" + ("es" if tool["batches"] > 1 else "")
        head = (f"Mask grid: {source}{rows}{TIMES}{cols} = {tool['cells']} cells of "
                f"{_size(*tool['cell'])} px, {tool['mode']}: {tool['outputs']} outputs from "
                f"{tool['sampled_rows']} sampled images in {batches}, steps {tool['start']}–"
                f"{tool['end']} of {tool['steps']} ({tool['steps_run']} steps)")
    return [head, cost_line(plan)]


def tool_preview_html(plan: Mapping[str, Any]) -> str:
    """The Script tab's preview: ``tool_lines`` as HTML, the plan as JSON in ``data-plan``."""
    data = f' data-plan="{html.escape(json.dumps(plan, sort_keys=True))}"'
    return _block(tool_lines(plan), "tilesampler-tool", data)


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


def tool_error_html(message: str) -> str:
    """The Script tab's preview for a request it cannot plan."""
    return _block([f"\u26a0 {message}"], "tilesampler-tool")


def error_html(message: str) -> tuple[str, str, str]:
    """What the preview shows for a request it cannot plan."""
    return "", "", _block([f"\u26a0 {message}"], "tilesampler-cost")
