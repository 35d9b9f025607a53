"""The Script tab's tools: refine + upscale, mask grid."""
