"""HyperTile: window geometry (``geometry``) and how it is installed on modules (``install``)."""
