"""The Script tab's tools, host-independent: refine + upscale (``refine_upscale``, ``sigmas``)
and the mask-grid variation batch (``mask_grid``, ``mask_input``)."""
