"""The Script tab's tools, host-independent: the mask-grid variation batch (``mask_grid``, ``mask_input``)."""
