// Tile Sampler: a live preview of the HyperTile windows for the current image size, so the
// cost is visible before generating. Mirrors lib_tilesampler/hypertile.py (window_count_options).
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

    function update() {
        for (const tab of ["txt2img", "img2img"]) {
            const box = gradioApp().getElementById("script_" + tab + "_tile_sampler_hypertile_preview");
            if (!box) continue;
            const text = describe(tab);
            if (box.dataset.text !== text) {
                box.dataset.text = text;
                box.innerHTML = text ? "<small>" + text + "</small>" : "";
            }
        }
    }

    onUiLoaded(update);
    onAfterUiUpdate(update);
    document.addEventListener("input", update);
})();
