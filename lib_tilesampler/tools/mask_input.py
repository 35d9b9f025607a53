"""A cell mask from what a UI or an API request hands over, as a soft ``(H, W)`` float tensor.

Accepted (``load_mask``):
- a PIL image of any mode. An image with an alpha band that is not fully opaque everywhere
  is read from its alpha (an inpaint sketch layer: strokes of any colour over transparency;
  the same test as A1111's ``create_binary_mask``, so a mask behaves as in the host's own
  inpaint); any other image is read from its luminance (PIL's ``L``: 0.299 R + 0.587 G +
  0.114 B). 8-bit values are divided by 255; 16-bit (``I;16``, and ``I``, which is how older
  Pillows open 16-bit PNGs) by 65535; ``F`` images are taken as they are.
- a tensor: ``(H, W)``, or with leading dims of size 1 (a ComfyUI ``MASK`` is ``(1, H, W)``);
  float (values must lie in [0, 1]), bool, or uint8 (divided by 255).
- PNG/JPEG/WebP bytes, or a base64 string of them, with or without a data-URL prefix
  (``data:image/png;base64,``). A string is always base64, never a file path.

White (1) = regenerate, black (0) = keep. Masks stay soft: nothing is thresholded, so a
grey or blurred mask gives a partial blend in the pixel-space fork (``m`` in
``source (1 - m) + sampled m``); the host's own inpainting may still binarise its copy.

Limits (``MAX_MASK_SIDE``, ``MAX_MASK_PIXELS``): at most 16384 px per side and 2^26 px in
all (8192 x 8192; a float32 copy is 256 MiB). The pixel limit is below Pillow's
decompression-bomb warning (89.5 Mpx), and the size is read from the file's header before
anything is decoded, so a small file that would inflate to gigabytes is refused cheaply.

Every problem with the input is a ``MaskGridError`` (a ``ValueError``) whose message is a
sentence for the user (the caller shows it in the UI or answers HTTP 422 with it).
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_MASK_SIDE = 16384
MAX_MASK_PIXELS = 2 ** 26
_DATA_URL = re.compile(r"^data:[^,]*?(;base64)?,", re.IGNORECASE)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class MaskGridError(ValueError):
    """A bad mask-grid input; the message is shown to the user as it is."""


def check_mask_size(height: int, width: int) -> None:
    """Refuse an empty mask or one over ``MAX_MASK_SIDE`` / ``MAX_MASK_PIXELS``."""
    if height < 1 or width < 1:
        raise MaskGridError(f"Mask grid: the mask is empty ({width}×{height} px).")
    if max(height, width) > MAX_MASK_SIDE or height * width > MAX_MASK_PIXELS:
        raise MaskGridError(
            f"Mask grid: the mask is too large ({width}×{height} px); at most {MAX_MASK_SIDE} px "
            f"per side and {MAX_MASK_PIXELS:,} px in all. It is resized to one grid cell anyway: "
            "send it at the cell's size.")


def load_mask(obj: Any) -> torch.Tensor:
    """The mask in ``obj`` (PIL image, tensor, bytes or base64 string) as ``(H, W)`` float32
    in [0, 1] (on the tensor's device for a tensor, else on the CPU)."""
    if isinstance(obj, torch.Tensor):
        return _from_tensor(obj)
    if isinstance(obj, Image.Image):
        return _from_image(obj)
    if isinstance(obj, str):
        return _from_image(_open(_decode_base64(obj)))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _from_image(_open(bytes(obj)))
    raise MaskGridError(f"Mask grid: the mask must be an image, a tensor or a base64 PNG, "
                        f"not {type(obj).__name__}.")


def _decode_base64(text: str) -> bytes:
    """The bytes of a base64 string; a data-URL prefix, whitespace (line breaks), missing
    padding and the URL-safe alphabet (``-_``) are accepted."""
    body = "".join(text.split())
    prefix = _DATA_URL.match(body)
    if prefix:
        if not prefix.group(1):
            raise MaskGridError("Mask grid: the mask's data URL is not base64 (';base64,' is missing).")
        body = body[prefix.end():]
    if not body:
        raise MaskGridError("Mask grid: the mask is an empty string.")
    body = body.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MaskGridError("Mask grid: the mask is not valid base64 (expected a base64 PNG, "
                            "optionally with a 'data:image/png;base64,' prefix).") from None


def _open(data: bytes) -> Image.Image:
    """Open an image file from bytes, checking its size from the header before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise MaskGridError(f"Mask grid: the mask is too large; at most {MAX_MASK_SIDE} px per "
                            f"side and {MAX_MASK_PIXELS:,} px in all.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise MaskGridError("Mask grid: the mask's data is not an image (PNG, JPEG or WebP).") from None
    check_mask_size(image.height, image.width)
    try:
        image.load()
    except Exception:  # any decoder failure on untrusted bytes (OSError, SyntaxError, zlib.error...)
        raise MaskGridError("Mask grid: the mask's image data is damaged or cut short.") from None
    return image


def _from_image(image: Image.Image) -> torch.Tensor:
    check_mask_size(image.height, image.width)
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES and _alpha(image).getextrema() != (255, 255):
        values = np.asarray(_alpha(image), dtype=np.float32) / 255
    elif image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float32) / 65535
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
    elif image.mode == "1":
        values = np.asarray(image, dtype=np.float32)
    else:
        values = np.asarray(image.convert("L"), dtype=np.float32) / 255
    return _checked_range(torch.from_numpy(values.copy()))


def _from_tensor(mask: torch.Tensor) -> torch.Tensor:
    while mask.ndim > 2 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise MaskGridError(f"Mask grid: a mask tensor must be (H, W) or (1, H, W), "
                            f"not {tuple(mask.shape)}.")
    check_mask_size(*mask.shape)
    if mask.dtype == torch.bool:
        return mask.to(torch.float32)
    if mask.dtype == torch.uint8:
        return mask.to(torch.float32) / 255
    if not mask.is_floating_point():
        raise MaskGridError(f"Mask grid: a mask tensor must be float, bool or uint8, not {mask.dtype}.")
    return _checked_range(mask.to(torch.float32))


def _checked_range(mask: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any()) or bool((mask > 1).any()):
        raise MaskGridError("Mask grid: the mask's values must lie between 0 (keep) and 1 (regenerate).")
    return mask


def _alpha(image: Image.Image) -> Image.Image:
    """The alpha band (the last band: ``A``, or ``a`` in the premultiplied modes)."""
    return image.getchannel(len(image.getbands()) - 1)
