"""Mask-grid variation batch: masks from every accepted input."""
import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lib_tilesampler.tools.mask_input import MAX_MASK_PIXELS, MAX_MASK_SIDE, MaskGridError, load_mask


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width x height`` (8-bit grey) followed by a few bytes of
    pixel data: opening it is cheap, decoding it fails."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)))


# --- mask inputs ----------------------------------------------------------------------------

def test_grey_and_rgb_images_are_read_from_their_luminance():
    grey = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    assert torch.equal(load_mask(Image.fromarray(grey)), torch.from_numpy(grey / np.float32(255)))
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2] = 255
    mask = load_mask(Image.fromarray(rgb))
    assert mask.shape == (4, 4) and (mask[:2] == 1).all() and (mask[2:] == 0).all()
    assert load_mask(Image.fromarray(rgb).convert("1"))[0, 0] == 1


def test_alpha_is_the_mask_unless_the_image_is_fully_opaque():
    sketch = np.zeros((8, 8, 4), dtype=np.uint8)
    sketch[2:5, 2:5] = (200, 30, 90, 255)                     # a coloured stroke, opaque
    mask = load_mask(Image.fromarray(sketch, "RGBA"))
    assert (mask[2:5, 2:5] == 1).all() and mask.sum() == 9
    opaque = sketch.copy()
    opaque[..., 3] = 255
    opaque[..., :3] = 255                                     # fully opaque white: luminance
    assert (load_mask(Image.fromarray(opaque, "RGBA")) == 1).all()
    empty = np.full((8, 8, 4), 255, dtype=np.uint8)
    empty[..., 3] = 0                                         # a white, fully transparent layer
    assert (load_mask(Image.fromarray(empty, "RGBA")) == 0).all()
    la = Image.fromarray(sketch, "RGBA").convert("LA")
    assert torch.equal(load_mask(la), mask)
    palette = Image.fromarray(sketch, "RGBA").convert("P")    # transparency kept in the palette
    assert torch.equal(load_mask(palette), mask)


def test_sixteen_bit_and_float_images_keep_their_precision():
    deep = (np.arange(32 * 16, dtype=np.uint16).reshape(16, 32) * 127)
    mask = load_mask(Image.open(io.BytesIO(png_bytes(Image.fromarray(deep)))))
    assert torch.allclose(mask, torch.from_numpy(deep / 65535.0).float())
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert torch.equal(load_mask(Image.fromarray(floats, "F")), torch.from_numpy(floats))


def test_tensors_of_every_accepted_form_give_the_same_mask():
    mask = torch.rand(24, 40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(load_mask(mask), mask)
    assert torch.equal(load_mask(mask[None]), mask)                       # ComfyUI MASK
    assert torch.equal(load_mask(mask[None, None].double()), mask)
    assert torch.equal(load_mask(mask > 0.5), (mask > 0.5).float())
    assert torch.equal(load_mask(torch.full((2, 2), 255, dtype=torch.uint8)), torch.ones(2, 2))


@pytest.mark.parametrize("tensor,message", [
    (torch.rand(3, 8, 8), r"must be \(H, W\) or \(1, H, W\)"),
    (torch.full((4, 4), 1.5), "between 0 \\(keep\\) and 1"),
    (torch.full((4, 4), float("nan")), "between 0 \\(keep\\) and 1"),
    (torch.ones(4, 4, dtype=torch.int64), "float, bool or uint8"),
    (torch.ones(0, 4), "the mask is empty"),
    (torch.zeros(1, 1).expand(MAX_MASK_SIDE + 1, 1), "too large"),
    (torch.zeros(1, 1).expand(8193, 8193), "too large"),
])
def test_bad_tensors_are_refused(tensor, message):
    with pytest.raises(MaskGridError, match=message):
        load_mask(tensor)


def test_base64_with_and_without_data_url_equals_the_image():
    image = Image.fromarray(np.arange(20 * 30, dtype=np.uint8).reshape(20, 30) % 251)
    plain = base64.b64encode(png_bytes(image)).decode()
    expected = load_mask(image)
    assert torch.equal(load_mask(plain), expected)
    assert torch.equal(load_mask("data:image/png;base64," + plain), expected)
    wrapped = "\n".join(plain[i:i + 76] for i in range(0, len(plain), 76))
    assert torch.equal(load_mask(wrapped.rstrip("=")), expected)           # line breaks, no padding
    assert torch.equal(load_mask(png_bytes(image)), expected)


@pytest.mark.parametrize("text,message", [
    ("not base64 at all!", "not valid base64"),
    ("data:image/png;base64,@@@@", "not valid base64"),
    (base64.b64encode(b"hello, this is text").decode(), "not an image"),
    ("data:image/png,%89PNG", "not base64"),
    ("   ", "empty string"),
    (base64.b64encode(png_bytes(Image.new("L", (64, 64)))[:60]).decode(), "damaged or cut short"),
    (base64.b64encode(png_header_only(MAX_MASK_SIDE + 1, 1)).decode(), "too large"),
    (base64.b64encode(png_header_only(9000, 9000)).decode(), "too large"),       # > 2^26 px
    (base64.b64encode(png_header_only(15000, 15000)).decode(), "too large"),     # Pillow's bomb limit
])
def test_bad_strings_are_refused_before_anything_large_is_decoded(text, message):
    with pytest.raises(MaskGridError, match=message):
        load_mask(text)
    assert 9000 * 9000 > MAX_MASK_PIXELS


def test_other_objects_are_not_masks():
    with pytest.raises(MaskGridError, match="not list"):
        load_mask([[0, 1], [1, 0]])
