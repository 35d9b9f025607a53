// Tile Sampler: fills the accordion's preview lines (HyperTile's windows, the resample's
// tiles, the job's U-Net calls, work and ETA) and the Script tab's "Tile Sampler tools" line
// (the tool's stages, tiles or cells, U-Net calls, work and ETA). The numbers come from Python
// (lib_tilesampler/preview.py, the code the jobs themselves run, also behind
// POST /tilesampler/v1/plan): this script only gathers the values on the page as JSON, puts
// them in the hidden request box of the accordion (or the Script) and clicks its hidden button
// (debounced), so the preview goes through the UI's own connection and works under its login.
(function () {
    "use strict";

    const TABS = ["txt2img", "img2img"];
    const TOOLS = "Tile Sampler tools";   // the Script's title, as the API's script_name
    const DELAY_MS = 300;         // wait for the user to stop typing or dragging
    const REFRESH_MS = 5000;      // ask again after a while (the ETA improves with every job)
    const sent = {};              // the last request sent per preview
    const sentAt = {};
    const timers = {};

    const prefix = (tab) => "script_" + tab + "_tile_sampler_";
    const toolPrefix = (tab) => "script_" + tab + "_tile_sampler_tools_";
    const byId = (id) => gradioApp().getElementById(id);

    // The value of a control by its elem_id: an InputAccordion's header checkbox, a
    // checkbox, a radio's choice, a slider's number box, a dropdown's or textbox's text.
    function valueOf(id) {
        const header = byId(id + "-visible-checkbox");
        if (header) return header.checked;
        const root = byId(id);
        if (!root) return undefined;
        if (root.querySelector("input[type=radio]")) {
            const chosen = root.querySelector("input[type=radio]:checked");
            return chosen ? chosen.value : undefined;
        }
        const box = root.querySelector("input[type=checkbox]");
        if (box) return box.checked;
        const number = root.querySelector("input[type=number]");
        if (number) return number.value === "" ? undefined : Number(number.value);
        const text = root.querySelector("textarea, input, select");
        return text ? text.value : undefined;
    }

    // The values of the controls the plan_spec under `start` names, or null without one.
    function argsOf(start) {
        const spec = byId(start + "plan_spec");
        const keys = spec && spec.querySelector("[data-keys]");
        if (!keys) return null;
        const args = {};
        for (const key of keys.dataset.keys.split(" ")) {
            const value = valueOf(start + key);
            if (value !== undefined) args[key] = value;
        }
        return args;
    }

    // The request of POST /tilesampler/v1/plan for what the tab shows now, or null when the
    // tab's accordion is not on the page.
    function gather(tab) {
        const args = argsOf(prefix(tab));
        if (args === null) return null;
        const request = {tab: tab, args: args};
        const fields = {width: "width", height: "height", steps: "steps", batch_size: "batch_size",
                        n_iter: "batch_count", sampler_name: "sampling", scheduler: "scheduler",
                        cfg_scale: "cfg_scale", denoising_strength: "denoising_strength"};
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

    // The same with the Script's tool (script_name and script_args as the API takes them), or
    // null when the Script tab does not show "Tile Sampler tools".
    function gatherTool(tab) {
        const json = gather(tab);
        const tool = byId(toolPrefix(tab) + "tool");
        const args = argsOf(toolPrefix(tab));
        if (json === null || args === null || !tool || tool.offsetParent === null) return null;
        const request = JSON.parse(json);
        request.script_name = TOOLS;
        request.script_args = [args];
        const image = tab === "img2img" && gradioApp().querySelector("#img2img_image img");
        if (image && image.naturalWidth) request.init_size = [image.naturalWidth, image.naturalHeight];
        return JSON.stringify(request);
    }

    function send(start, json) {
        const box = byId(start + "plan_request");
        const input = box && box.querySelector("textarea, input");
        const button = byId(start + "plan_button");
        if (!input || !button) return;
        input.value = json;
        updateInput(input);
        button.click();
        sent[start] = json;
        sentAt[start] = Date.now();
    }

    function schedule() {
        for (const tab of TABS) {
            for (const [start, make] of [[prefix(tab), gather], [toolPrefix(tab), gatherTool]]) {
                const json = make(tab);
                const stale = Date.now() - (sentAt[start] || 0) > REFRESH_MS;
                if (json === null || (json === sent[start] && !stale)) continue;
                clearTimeout(timers[start]);
                timers[start] = setTimeout(function () {
                    const now = make(tab);
                    if (now !== null) send(start, now);
                }, DELAY_MS);
            }
        }
    }

    // Exposed for the tests (tests/test_javascript_page.py and tests/browser/).
    window.tilesamplerPlanRequest = gather;
    window.tilesamplerToolPlanRequest = gatherTool;

    onUiLoaded(schedule);
    onAfterUiUpdate(schedule);
    document.addEventListener("input", schedule, true);
    document.addEventListener("change", schedule, true);
})();
