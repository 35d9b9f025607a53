"""The labels of every control of ours (the accordion and the Script tab's "Tile Sampler
tools") are unique across the txt2img and img2img tabs, also against the host's own
labels there, and no label of an earlier version comes back on another control.

The WebUI's ui-config.json keys a script's control by script file, tab and label
(``customscript/<file>/<tab>/<label>/value``): two controls of one script with one label
share their saved value and range. Our two scripts and the host's controls live under
other keys, but a label seen twice on one page is as confusing, and unique labels keep
every key apart whatever the host does with them."""
from __future__ import annotations

from lib_tilesampler import params as P
from lib_tilesampler.tools import options as O

# Labels of the host's own controls on the txt2img and img2img tabs (the main settings, the
# hires fix, refiner, seed and sampler sections, inpaint, the Script tab's built-in scripts),
# as listed in the ui-config.json a fresh A1111 1.10.1 and Forge 2 wrote.
HOST_LABELS = {
    # both hosts
    "Prompt", "Negative prompt", "Styles", "Sampling method", "Sampling steps", "Schedule type",
    "Width", "Height", "Batch count", "Batch size", "CFG Scale", "Seed", "Extra",
    "Variation seed", "Variation strength", "Resize seed from width", "Resize seed from height",
    "Hires. fix", "Upscaler", "Upscale by", "Hires steps", "Denoising strength",
    "Resize width to", "Resize height to", "Hires sampling method", "Hires schedule type",
    "Hires prompt", "Hires negative prompt", "Refiner", "Checkpoint", "Switch at", "Script",
    "Override settings", "Resize mode", "Scale", "Mask blur", "Mask mode", "Masked content",
    "Inpaint area", "Only masked padding, pixels", "Mask transparency", "Image CFG Scale",
    "Input directory", "Output directory", "PNG info directory", "Soft inpainting",
    "Schedule bias", "Preservation strength", "Transition contrast boost", "Mask influence",
    "Difference threshold", "Difference contrast",
    # the Script tab's built-in scripts
    "X type", "X values", "Y type", "Y values", "Z type", "Z values", "Draw legend",
    "Keep -1 for seeds", "Vary seeds for X", "Vary seeds for Y", "Vary seeds for Z",
    "Include Sub Images", "Include Sub Grids", "Grid margins (px)",
    "Use text inputs instead of dropdowns", "Put variable parts at start of prompt",
    "Use different seed for each picture", "Select prompt", "Select joining char",
    "Iterate seed every line", "Use same random seed for all lines", "Insert prompts at the",
    "List of prompt inputs", "Loops", "Final denoising strength", "Denoising strength curve",
    "Append interrogated prompt at each iteration", "Pixels to expand", "Color variation",
    "Fall-off exponent (lower=higher detail)", "Tile overlap", "Scale Factor",
    "Original prompt", "Original negative prompt", "Decode CFG scale", "Decode steps",
    "Randomness", "Sigma adjustment for finding noise for image",
    # Forge 2's own controls and built-in extensions
    "Distilled CFG Scale", "Hires CFG Scale", "Hires Distilled CFG Scale", "Hires Checkpoint",
    "Hires VAE / Text Encoder", "Hires-Fix Option", "Enabled", "Method", "Tile Width",
    "Tile Height", "Tile Overlap", "Tile Batch Size", "Start step", "End step", "B1", "B2",
    "S1", "S2", "Strength", "Share attention in batch", "Blur Sigma", "Blur mask threshold",
    "Block Number", "Downscale Factor", "Start Percent", "End Percent", "Downscale After Skip",
    "Downscale Method", "Upscale Method", "Enable", "Control Type", "Preprocessor", "Model",
    "Control Weight", "Control Mode", "Resize Mode", "Pixel Perfect", "Threshold A",
    "Threshold B", "Preprocessor resolution",
}

# Labels of earlier versions, by key: none may come back on another key, or a ui-config.json
# those versions wrote would give that control another control's saved value and range.
RELEASED_ACCORDION_LABELS = {
    "hypertile_tile_size": ("Tile size (px)", "HyperTile tile (px)"),
    "resample_tile_size": ("Tile size (px)", "Resample tile (px)"),
    "resample_batch": ("Tile batch size", "Tile batch"),
    "resample_cfg": ("CFG (0 = same as main)", "CFG (0 = main)"),
    "resample_steps": ("Steps (0 = same as main)", "Steps (0 = main)"),
    "resample_seed": ("Seed (-1 = the image's seed)", "Seed (-1 = image's)"),
    "resample_scheduler": ("Schedule type",),
}
RELEASED_TOOL_LABELS = {
    "img2img_refine": ("Refine the input first",),
    "base_steps": ("Base steps (0 = main)",),
    "base_cfg": ("Base CFG (0 = main)",),
    "refiner_steps": ("Refiner steps (0 = main)",),
    "refiner_cfg": ("Refiner CFG (0 = main)",),
    "tiler_steps": ("Tiler steps (0 = base)", "Tiler steps (0 = main)"),
    "tiler_cfg": ("Tiler CFG (0 = base)", "Tiler CFG (0 = main)"),
    "upscaler": ("Upscaler",),
    "upscale_by": ("Upscale by",),
    "use_inpaint_mask": ("Use the inpaint mask",),
    "rows": ("Rows",),
    "columns": ("Columns",),
    "mode": ("Mode",),
    "leftover_noise": ("Return with leftover noise",),
    "seed_per_cell": ("A different seed per cell",),
}


def our_labels() -> list[tuple[str, str]]:
    """(script, label) of every labelled control of ours on one tab (both tabs have the same)."""
    return [("accordion", f.label) for f in P.FIELDS] + [("tools", f.label) for f in O.TOOL_FIELDS]


def test_every_label_of_ours_is_unique_across_both_scripts():
    seen: dict[str, str] = {}
    clashes = []
    for script, label in our_labels():
        key = label.strip().lower()
        if key in seen:
            clashes.append(f"{label!r} in {seen[key]} and {script}")
        seen[key] = script
    assert not clashes, clashes


def test_no_label_of_ours_is_a_host_label():
    host = {label.lower() for label in HOST_LABELS}
    same = [label for _, label in our_labels() if label.strip().lower() in host]
    assert not same, same


def test_labels_are_short_and_details_go_to_the_tooltip():
    long = [label for _, label in our_labels() if len(label) > 26]
    assert not long, long


def _released_clashes(fields, released) -> list[str]:
    current = {f.key: f.label for f in fields}
    out = []
    for key, labels in released.items():
        assert key in current, key
        for label in labels:
            for other, now in current.items():
                if other != key and now == label:
                    out.append(f"{label!r} was {key}'s label and is now {other}'s")
    return out


def test_no_released_label_returns_on_another_control():
    assert not _released_clashes(P.FIELDS, RELEASED_ACCORDION_LABELS)
    assert not _released_clashes(O.TOOL_FIELDS, RELEASED_TOOL_LABELS)

