"""Mask-grid variation batch: cell geometry, masks from every accepted input, per-cell masks,
feather, latent masks and the pixel-space fork (bitwise source outside each cell)."""
import base64
import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image

from lib_tilesampler.tools.mask_grid import (MODES, CellGrid, MaskGridError, border_ramp, cell_geometry,
                                             cell_label, cell_masks, cell_seeds, check_mode, chunk_cells,
                                             feather, fit_mask_to_cell, fork_in_pixels,
                                             fork_then_sample_batches, grid_mask, latent_masks)
from lib_tilesampler.tools.mask_input import MAX_MASK_PIXELS, MAX_MASK_SIDE, load_mask

# (width, height, rows, columns): the default 1x3, odd aspect ratios, 3x3, 1x1
GRIDS = [(768, 512, 2, 3), (768, 512, 1, 3), (768, 768, 3, 3), (512, 768, 1, 1),
         (960, 640, 4, 5), (1216, 832, 2, 4), (64, 48, 3, 8)]


def soft_mask(height: int, width: int) -> torch.Tensor:
    """A mask with all three kinds of value: 1 (a disc), 0 (the corners), and a ramp."""
    y = torch.linspace(-1, 1, height)[:, None]
    x = torch.linspace(-1, 1, width)[None, :]
    r = (x ** 2 + y ** 2).sqrt()
    return ((1.2 - r) / 0.5).clamp(0, 1)


def soft_cell_mask(grid: CellGrid) -> torch.Tensor:
    return soft_mask(grid.cell_h, grid.cell_w)


def images(grid: CellGrid, dtype=torch.uint8, seed=0, n=None):
    g = torch.Generator().manual_seed(seed)
    shape = (3, grid.height, grid.width) if n is None else (n, 3, grid.height, grid.width)
    if dtype == torch.uint8:
        src = torch.randint(0, 256, (3, grid.height, grid.width), generator=g, dtype=torch.uint8)
        return src, torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return (torch.rand(3, grid.height, grid.width, generator=g).to(dtype),
            torch.rand(shape, generator=g).to(dtype))


def outside(grid: CellGrid, i: int) -> torch.Tensor:
    """True outside cell ``i`` (built from its origin, not from the masks)."""
    keep = torch.ones(grid.height, grid.width, dtype=torch.bool)
    y, x = grid.origin(i)
    keep[y:y + grid.cell_h, x:x + grid.cell_w] = False
    return keep


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


# --- geometry -------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height,rows,columns", GRIDS)
def test_cells_tile_the_image_once_in_row_major_order_with_whole_latent_cells(width, height, rows, columns):
    grid = cell_geometry(width, height, rows, columns)
    assert (grid.cell_w * columns, grid.cell_h * rows) == (width, height)
    assert grid.latent_cell == (grid.cell_h // 8, grid.cell_w // 8)
    assert grid.cell_h % 8 == 0 and grid.cell_w % 8 == 0 and grid.count == rows * columns
    cover = torch.zeros(height, width, dtype=torch.int64)
    for i in range(grid.count):
        cover[grid.slices(i)] += 1
        assert grid.origin(i) == ((i // columns) * grid.cell_h, (i % columns) * grid.cell_w)
    assert (cover == 1).all()


def test_768x512_in_2x3_gives_256_px_cells_and_the_default_is_one_row_of_three():
    grid = cell_geometry(768, 512, 2, 3)
    assert (grid.cell_w, grid.cell_h, grid.latent_cell) == (256, 256, (32, 32))
    assert grid.origin(4) == (256, 256) and grid.origin(2) == (0, 512)
    default = cell_geometry(768, 512)
    assert (default.rows, default.columns, default.cell_w, default.cell_h) == (1, 3, 256, 512)
    assert cell_geometry(768, 512, 2.0, 3.0) == grid          # UI sliders send floats


@pytest.mark.parametrize("args,message", [
    ((768, 512, 0, 3), "rows must be from 1 to 16, not 0"),
    ((768, 512, 2, 17), "columns must be from 1 to 16, not 17"),
    ((768, 512, 2.5, 3), "rows must be a whole number"),
    ((768, 512, True, 3), "rows must be a whole number"),
    ((768, 512, float("nan"), 3), "rows must be a whole number"),
    ((768, 512, 1, 5), "width of 768 px does not split into 5 columns of whole latent cells"),
    ((768, 512, 3, 1), "height of 512 px does not split into 3 rows"),
    ((100, 512, 1, 1), "make the width a multiple of 8 px"),
    ((0, 512, 1, 1), "width must be from 8 to 16384 px"),
    ((768, 20000, 1, 1), "height must be from 8 to 16384 px"),
])
def test_bad_grids_are_refused_with_a_sentence_for_the_user(args, message):
    with pytest.raises(MaskGridError, match=message) as error:
        cell_geometry(*args)
    assert isinstance(error.value, ValueError) and str(error.value).startswith("Mask grid: ")


def test_a_width_that_does_not_split_names_the_column_counts_that_do():
    with pytest.raises(MaskGridError, match=r"768 / 5 = 153\.6 px\); columns that fit: 1, 2, 3, 4, 6, 8, 12, 16"):
        cell_geometry(768, 512, 1, 5)


# --- grid and per-cell masks ----------------------------------------------------------------

@pytest.mark.parametrize("width,height,rows,columns", GRIDS)
def test_grid_mask_is_the_cell_mask_tiled_rows_by_columns(width, height, rows, columns):
    grid = cell_geometry(width, height, rows, columns)
    cell = torch.rand(grid.cell_h, grid.cell_w, generator=torch.Generator().manual_seed(1))
    whole = grid_mask(cell, grid)
    assert torch.equal(whole, torch.tile(cell, (rows, columns)))
    for i in range(grid.count):
        assert torch.equal(whole[grid.slices(i)], cell)


@pytest.mark.parametrize("width,height,rows,columns", GRIDS)
def test_cell_masks_are_disjoint_row_major_and_sum_to_the_grid_mask(width, height, rows, columns):
    grid = cell_geometry(width, height, rows, columns)
    cell = torch.rand(grid.cell_h, grid.cell_w, generator=torch.Generator().manual_seed(2)) + 0.01
    masks = cell_masks(cell, grid)
    assert masks.shape == (rows * columns, height, width)
    assert ((masks > 0).sum(0) == 1).all()                    # every pixel in exactly one mask
    assert torch.equal(masks.sum(0), grid_mask(cell, grid))
    keep = torch.stack([outside(grid, i) for i in range(grid.count)])
    assert ((masks == 0) | ~keep).all()                       # zero outside its own cell
    for i in range(grid.count):
        assert torch.equal(masks[i][grid.slices(i)], cell)


def test_a_cell_mask_of_the_wrong_size_is_refused_until_fitted():
    grid = cell_geometry(768, 512, 2, 3)
    with pytest.raises(ValueError, match="fit_mask_to_cell first"):
        grid_mask(torch.ones(100, 100), grid)


# --- resizing to the cell -------------------------------------------------------------------

def test_a_mask_of_the_cell_size_is_kept_and_another_size_is_resized_and_flagged():
    grid = cell_geometry(768, 512, 2, 3)
    exact = torch.rand(256, 256)
    kept, resized = fit_mask_to_cell(exact, grid)
    assert kept is exact and resized is False
    wide = torch.zeros(200, 300)
    wide[:, :150] = 1
    fitted, resized = fit_mask_to_cell(wide, grid)
    assert resized is True and fitted.shape == (256, 256) and fitted.dtype == torch.float32
    assert 0 <= fitted.min() and fitted.max() <= 1
    assert torch.allclose(fitted[:, :120], torch.ones(256, 120)) and (fitted[:, 136:] == 0).all()  # left half white
    ones, _ = fit_mask_to_cell(torch.ones(37, 1000), cell_geometry(768, 512, 1, 3))
    assert ones.shape == (512, 256) and torch.allclose(ones, torch.ones_like(ones))


def test_shrinking_keeps_a_one_pixel_stroke_visible():
    grid = cell_geometry(768, 768, 3, 3)                      # cells of 256 px
    stroke = torch.zeros(1024, 1024)
    stroke[:, 501] = 1                                        # 1 px wide, 4x too fine for the cell
    fitted, _ = fit_mask_to_cell(stroke, grid)
    assert fitted.max(dim=1).values.min() > 0.2               # present on every row, softened


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


# --- feather --------------------------------------------------------------------------------

@pytest.mark.parametrize("radius", [0, 1, 8, 31])
def test_feather_ramps_down_inside_each_cell_and_never_outside(radius):
    grid = cell_geometry(768, 512, 2, 3)
    ramp = border_ramp(grid, radius)
    ones = feather(torch.ones(grid.cell_h, grid.cell_w), grid, radius)
    assert torch.equal(ones, ramp) and (ramp > 0).all() and (ramp <= 1).all()
    assert (ramp[radius:grid.cell_h - radius, radius:grid.cell_w - radius] == 1).all()
    if radius:
        assert (ramp[0] < 1).all() and (ramp[:, -1] < 1).all()
        assert (ramp[:radius + 1, 128].diff() > 0).all()                 # rising from the edge
    cell = soft_cell_mask(grid)
    full = feather(cell_masks(cell, grid), grid, radius)                 # on full-size masks
    assert torch.equal(full, cell_masks(feather(cell, grid, radius), grid))
    assert (full <= cell_masks(cell, grid)).all()
    for i in range(grid.count):
        assert (full[i][outside(grid, i)] == 0).all()


def test_a_feather_wider_than_half_a_cell_is_refused():
    grid = cell_geometry(64, 48, 3, 8)                                    # cells of 8 x 16 px
    border_ramp(grid, 3)
    with pytest.raises(MaskGridError, match="feather of 4 px does not fit cells of 8×16 px; use 0 to 3"):
        border_ramp(grid, 4)


# --- latent masks ---------------------------------------------------------------------------

def test_latent_masks_take_the_most_regenerated_pixel_of_each_8x8_block():
    grid = cell_geometry(768, 512, 2, 3)
    cell = torch.zeros(256, 256)
    cell[100, 37] = 0.25                                                 # one pixel, latent (12, 4)
    cell[200:208, 200:208] = 1
    latent = latent_masks(cell_masks(cell, grid))
    assert latent.shape == (6, 1, 64, 96)
    first = latent[0, 0]
    assert first[12, 4] == 0.25 and first[25, 25] == 1 and first.count_nonzero() == 2
    assert latent_masks(cell).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("width,height,rows,columns", GRIDS)
def test_latent_masks_of_different_cells_never_overlap(width, height, rows, columns):
    grid = cell_geometry(width, height, rows, columns)
    latent = latent_masks(cell_masks(torch.ones(grid.cell_h, grid.cell_w), grid))
    assert torch.equal(latent.sum(0)[0], torch.ones(height // 8, width // 8))


def test_latent_masks_refuse_sizes_that_are_not_whole_latent_cells():
    with pytest.raises(ValueError, match="8 px cells"):
        latent_masks(torch.ones(2, 20, 16))


# --- the pixel-space fork -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16])
@pytest.mark.parametrize("width,height,rows,columns", [(768, 512, 2, 3), (768, 512, 1, 3),
                                                       (768, 768, 3, 3), (512, 768, 1, 1)])
@pytest.mark.parametrize("per_cell_samples", [False, True])
def test_fork_is_the_source_outside_each_cell_and_the_sample_where_the_mask_is_one(
        dtype, width, height, rows, columns, per_cell_samples):
    grid = cell_geometry(width, height, rows, columns)
    source, sampled = images(grid, dtype, n=grid.count if per_cell_samples else None)
    masks = cell_masks(feather(soft_cell_mask(grid), grid, 12), grid)
    out = fork_in_pixels(source, sampled, masks)
    assert out.shape == (grid.count, 3, height, width) and out.dtype == dtype
    mine = sampled if per_cell_samples else sampled.expand(grid.count, -1, -1, -1)
    keep = torch.stack([outside(grid, i) for i in range(grid.count)])[:, None]
    take, part = (masks == 1)[:, None], ((masks > 0) & (masks < 1))[:, None]
    assert ((out == source) | ~keep).all()                              # bitwise, every output
    assert take.flatten(1).any(1).all() and ((out == mine) | ~take).all()
    between = (out >= torch.minimum(source, mine)) & (out <= torch.maximum(source, mine))
    assert (between | ~part).all()


def test_uint8_fork_rounds_the_float_blend_only_inside_the_soft_edge():
    grid = cell_geometry(64, 48, 3, 8)
    source, sampled = images(grid)
    masks = cell_masks(soft_cell_mask(grid), grid)
    out = fork_in_pixels(source, sampled, masks)
    m = masks[:, None].numpy()
    expected = np.rint(source.numpy().astype(np.float32) * (1 - m) + sampled.numpy().astype(np.float32) * m)
    assert np.array_equal(out.numpy(), expected.astype(np.uint8))


def test_nan_or_inf_in_the_sample_outside_a_cell_never_reaches_its_output():
    grid = cell_geometry(768, 512, 1, 3)
    source, sampled = images(grid, torch.float32)
    sampled[:, :, 300:] = float("nan")                                   # cells 1 and 2
    sampled[:, 0, 600] = float("inf")
    out = fork_in_pixels(source, sampled, cell_masks(torch.ones(512, 256), grid))
    assert torch.equal(out[0][:, :, 256:], source[:, :, 256:]) and not out[0].isnan().any()


def test_the_whole_path_from_a_base64_mask_is_deterministic():
    grid = cell_geometry(768, 512, 2, 3)
    text = base64.b64encode(png_bytes(Image.fromarray(
        (soft_mask(300, 600).numpy() * 255).astype(np.uint8)))).decode()

    def run():
        cell, resized = fit_mask_to_cell(load_mask(text), grid)
        assert resized
        source, sampled = images(grid)
        return fork_in_pixels(source, sampled, cell_masks(feather(cell, grid, 16), grid))
    assert torch.equal(run(), run())


def test_fork_refuses_mismatched_inputs():
    grid = cell_geometry(64, 48, 3, 8)
    source, sampled = images(grid)
    masks = cell_masks(torch.ones(grid.cell_h, grid.cell_w), grid)
    with pytest.raises(ValueError, match="dtypes"):
        fork_in_pixels(source, sampled.float(), masks)
    with pytest.raises(ValueError, match="sampled images for"):
        fork_in_pixels(source, sampled[None].expand(3, -1, -1, -1), masks)
    with pytest.raises(ValueError, match="must be"):
        fork_in_pixels(rearrange(source, "c h w -> h w c"), sampled, masks)


# --- batches, labels, seeds, modes ----------------------------------------------------------

@pytest.mark.parametrize("n,per_batch,sizes", [(6, 4, [4, 2]), (6, 1, [1] * 6), (6, 6, [6]),
                                               (6, 10, [6]), (9, 4, [4, 4, 1]), (0, 3, [])])
def test_chunks_cover_every_cell_once_in_order(n, per_batch, sizes):
    chunks = chunk_cells(n, per_batch)
    assert [len(c) for c in chunks] == sizes
    assert [i for c in chunks for i in c] == list(range(n))


def test_chunks_need_at_least_one_cell_per_batch():
    with pytest.raises(MaskGridError, match="cells per batch must be at least 1, not 0"):
        chunk_cells(6, 0)


def test_fork_then_sample_batches_carry_their_cells_pixel_and_latent_masks():
    grid = cell_geometry(768, 768, 3, 3)
    masks = cell_masks(soft_cell_mask(grid), grid)
    batches = fork_then_sample_batches(masks, 4)
    assert [b.cells for b in batches] == [range(0, 4), range(4, 8), range(8, 9)]
    assert torch.equal(torch.cat([b.masks for b in batches]), masks)
    assert torch.equal(torch.cat([b.latent for b in batches]), latent_masks(masks))
    assert batches[2].latent.shape == (1, 1, 96, 96)


def test_labels_are_one_based_and_row_major():
    grid = cell_geometry(768, 512, 2, 3)
    assert [cell_label(i, grid) for i in range(6)] == [
        "r1 c1 of 2×3", "r1 c2 of 2×3", "r1 c3 of 2×3", "r2 c1 of 2×3", "r2 c2 of 2×3", "r2 c3 of 2×3"]
    assert cell_label(0, cell_geometry(512, 768, 1, 1)) == "r1 c1 of 1×1"
    with pytest.raises(ValueError, match="not in a grid of 6 cells"):
        cell_label(6, grid)


def test_seeds_differ_per_cell_or_are_shared():
    assert cell_seeds(4294967294, 3) == [4294967294, 4294967295, 4294967296]   # as the WebUI: no wrap
    assert cell_seeds(7, 3, per_cell=False) == [7, 7, 7]
    with pytest.raises(ValueError, match="resolve the seed"):
        cell_seeds(-1, 3)


def test_modes_are_the_nodes_two():
    assert [check_mode(m) for m in MODES] == ["Sample then Fork", "Fork then Sample"]
    with pytest.raises(MaskGridError, match="mode must be"):
        check_mode("sample then fork")


def test_the_core_the_job_and_its_glue_import_no_webui_module_until_they_run():
    code = ("import sys, lib_tilesampler.tools.mask_grid, lib_tilesampler.tools.mask_grid_job, "
            "lib_tilesampler.hosts.mask_grid_run; "
            "print(sorted(m for m in ('modules', 'gradio', 'ldm', 'backend') if m in sys.modules))")
    root = __file__.rsplit("/tests/", 1)[0]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip() == "[]"
