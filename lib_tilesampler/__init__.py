"""sd-webui-tilesampler core: pure torch + einops, no import of a WebUI's modules
(except inside ``hosts/``, one adapter per host)."""
__version__ = "0.1.0"
