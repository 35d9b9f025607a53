"""Latent tiling: plans and weights (``plan``), per-tile conditioning (``conditioning``),
tiled denoisers (``denoisers``), independent tiles (``independent``) and one resample pass
(``passes``)."""
