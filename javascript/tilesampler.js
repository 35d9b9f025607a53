// Tile Sampler: live previews of the HyperTile windows and of the resample tile grid for the
// current image size, so the cost is visible before generating. Mirrors
// lib_tilesampler/hypertile/geometry.py (window_count_options) and lib_tilesampler/tiling/plan.py (plan_tiles).
(function () {
    "use strict";

    function numberOf(id) {
        const root = gradioApp().getElementById(id);
        const input = root && root.querySelector("input[type=number], input[type=range]");
        return input ? Number(input.value) : NaN;
    }

    function checked(id) {
        const root = gradioApp().getElementById(id);
        const input = root && root.querySelector("input[type=checkbox]");
        return Boolean(input && input.checked);
    }

    function windowCounts(side, minWindow, swap) {
        const counts = [];
        for (let size = Math.max(1, Math.min(minWindow, side)); size <= side && counts.length < swap; size++) {
            if (side % size === 0) counts.push(side / size);
        }
        return counts.length ? counts : [1];
    }

    function describe(tab) {
        const id = (key) => "script_" + tab + "_tile_sampler_" + key;
        const width = numberOf(tab + "_width"), height = numberOf(tab + "_height");
        const tile = numberOf(id("hypertile_tile_size")), swap = numberOf(id("hypertile_swap_size"));
        const maxDepth = numberOf(id("hypertile_max_depth"));
        if (![width, height, tile, swap, maxDepth].every(Number.isFinite)) return "";
        const scale = checked(id("hypertile_scale_depth"));
        let h = Math.ceil(height / 8), w = Math.ceil(width / 8);
        const lines = [];
        for (let depth = 0; depth <= maxDepth; depth++) {
            const minWindow = Math.floor(Math.max(32, tile) / 8) * (scale ? 2 ** depth : 1);
            const nh = windowCounts(h, minWindow, swap), nw = windowCounts(w, minWindow, swap);
            const best = nh[0] * nw[0];
            lines.push("level " + depth + ": " + h + "\u00d7" + w + " tokens \u2192 " +
                (best > 1 ? nh.join("/") + " \u00d7 " + nw.join("/") + " windows (attention up to " + best + "\u00d7 cheaper)"
                          : "stays whole (no divisor leaves windows of " + minWindow + " cells)"));
            h = Math.ceil(h / 2); w = Math.ceil(w / 2);
        }
        return lines.join("<br>");
    }

    function dropdownValue(id) {
        const root = gradioApp().getElementById(id);
        const input = root && root.querySelector("input, select");
        return input ? input.value : "";
    }

    // Latent-tile resample: tile grid and U-Net work per step (sum of tile areas / image area),
    // as lib_tilesampler/tiling/plan.py plans it (tiles spread evenly, last one flush with the edge).
    function describeResample(tab) {
        const id = (key) => "script_" + tab + "_tile_sampler_" + key;
        let width = numberOf(tab + "_width"), height = numberOf(tab + "_height");
        if (tab === "txt2img" && (checked("txt2img_hr-checkbox") || checked("txt2img_enable_hr"))) {
            const scale = numberOf("txt2img_hr_scale");
            if (Number.isFinite(scale)) { width = Math.floor(width * scale / 8) * 8; height = Math.floor(height * scale / 8) * 8; }
        }
        const tile = numberOf(id("resample_tile_size")), overlap = numberOf(id("resample_overlap"));
        if (![width, height, tile, overlap].every(Number.isFinite)) return "";
        if (tile >= width && tile >= height) return "tile not smaller than the image (" + width + "\u00d7" + height + "): nothing to tile";
        const moving = dropdownValue(id("resample_mode")) === "moving";
        // as lib_tilesampler.tiling.plan.axis_span: as few tiles of at most `tile` px as keep the
        // overlap, shrunk to the least side that does (rounded up to 64 px within the tile)
        const span = (size) => {
            if (size <= tile) return [1, size];
            if (moving) return [Math.ceil(size / tile), tile];
            const cap = tile - tile % 64 > overlap ? tile - tile % 64 : tile;
            const n = Math.ceil((size - overlap) / (cap - overlap));
            const aligned = Math.ceil(Math.ceil((size + (n - 1) * overlap) / n) / 64) * 64;
            return [n, aligned <= cap ? aligned : cap];
        };
        const [ny, th] = span(height), [nx, tw] = span(width);
        const work = moving ? 1 : (ny * nx * th * tw) / (width * height);
        return ny + "\u00d7" + nx + " tiles of " + tw + "\u00d7" + th + " px over " + width + "\u00d7" + height +
            "; U-Net work per step \u2248 " + work.toFixed(2) + "\u00d7 an untiled pass";
    }

    function show(box, text) {
        if (box && box.dataset.text !== text) {
            box.dataset.text = text;
            box.innerHTML = text ? "<small>" + text + "</small>" : "";
        }
    }

    function update() {
        for (const tab of ["txt2img", "img2img"]) {
            show(gradioApp().getElementById("script_" + tab + "_tile_sampler_hypertile_preview"), describe(tab));
            show(gradioApp().getElementById("script_" + tab + "_tile_sampler_resample_preview"), describeResample(tab));
        }
    }

    onUiLoaded(update);
    onAfterUiUpdate(update);
    document.addEventListener("input", update);
})();
