// Tile Sampler: fills the accordion's preview lines (HyperTile's windows, the resample's
// tiles, the job's U-Net calls, work and ETA). The numbers come from Python
// (lib_tilesampler/preview.py, the code the job itself runs, also behind
// POST /tilesampler/v1/plan): this script only gathers the values on the page as JSON, puts
// them in the accordion's hidden request box and clicks its hidden button (debounced), so the
// preview goes through the UI's own connection and works under its login.
(function () {
    "use strict";

    const TABS = ["txt2img", "img2img"];
    const DELAY_MS = 300;         // wait for the user to stop typing or dragging
    const REFRESH_MS = 5000;      // ask again after a while (the ETA improves with every job)
    const sent = {};              // the last request sent per tab
    const sentAt = {};
    const timers = {};

    const prefix = (tab) => "script_" + tab + "_tile_sampler_";
    const byId = (id) => gradioApp().getElementById(id);

    // The value of a control by its elem_id: an InputAccordion's header checkbox, a
    // checkbox, a slider's number box, a dropdown's or textbox's text.
    function valueOf(id) {
        const header = byId(id + "-visible-checkbox");
        if (header) return header.checked;
        const root = byId(id);
        if (!root) return undefined;
        const box = root.querySelector("input[type=checkbox]");
        if (box) return box.checked;
        const number = root.querySelector("input[type=number]");
        if (number) return number.value === "" ? undefined : Number(number.value);
        const text = root.querySelector("textarea, input, select");
        return text ? text.value : undefined;
    }

    // The request of POST /tilesampler/v1/plan for what the tab shows now, or null when the
    // tab's accordion is not on the page.
    function gather(tab) {
        const spec = byId(prefix(tab) + "plan_spec");
        const keys = spec && spec.querySelector("[data-keys]");
        if (!keys) return null;
        const args = {};
        for (const key of keys.dataset.keys.split(" ")) {
            const value = valueOf(prefix(tab) + key);
            if (value !== undefined) args[key] = value;
        }
        const request = {tab: tab, args: args};
        const fields = {width: "width", height: "height", steps: "steps", batch_size: "batch_size",
                        n_iter: "batch_count", sampler_name: "sampling",
                        denoising_strength: "denoising_strength"};
        if (tab === "txt2img") {
            Object.assign(fields, {enable_hr: "hr", hr_scale: "hr_scale", hr_resize_x: "hr_resize_x",
                                   hr_resize_y: "hr_resize_y", hr_second_pass_steps: "hires_steps"});
        }
        for (const [field, id] of Object.entries(fields)) {
            const value = valueOf(tab + "_" + id);
            if (value !== undefined) request[field] = value;
        }
        return JSON.stringify(request);
    }

    function send(tab, json) {
        const box = byId(prefix(tab) + "plan_request");
        const input = box && box.querySelector("textarea, input");
        const button = byId(prefix(tab) + "plan_button");
        if (!input || !button) return false;
        input.value = json;
        updateInput(input);
        button.click();
        sent[tab] = json;
        sentAt[tab] = Date.now();
        return true;
    }

    function schedule() {
        for (const tab of TABS) {
            const json = gather(tab);
            const stale = Date.now() - (sentAt[tab] || 0) > REFRESH_MS;
            if (json === null || (json === sent[tab] && !stale)) continue;
            clearTimeout(timers[tab]);
            timers[tab] = setTimeout(function () {
                const now = gather(tab);
                if (now !== null) send(tab, now);
            }, DELAY_MS);
        }
    }

    // Exposed for the tests (tests/test_javascript_page.py and tests/browser/).
    window.tilesamplerPlanRequest = gather;

    onUiLoaded(schedule);
    onAfterUiUpdate(schedule);
    document.addEventListener("input", schedule, true);
    document.addEventListener("change", schedule, true);
})();
