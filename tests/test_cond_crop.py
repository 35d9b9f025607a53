"""Per-tile conditioning: spatial tensors cropped, per-row tensors repeated tile-major."""
from collections import OrderedDict, namedtuple

import pytest
import torch

from denoisers import ROWS, sd1_cond
from lib_tilesampler.tiling.conditioning import crop_cond, roll_cond, stack_tiles, unstack_tiles
from lib_tilesampler.tiling.plan import Tile, plan_tiles

HW = (16, 24)
TILES = [Tile(0, 0, 8, 8), Tile(4, 16, 8, 8), Tile(8, 8, 8, 8)]


def tile_major(x, tiles):
    """The expected layout, built row by row: all rows of tile 0, then tile 1, ..."""
    return torch.stack([t.crop(x)[r] for t in tiles for r in range(x.shape[0])])


def test_stack_and_unstack_tiles_are_tile_major_and_inverse():
    x = torch.randn(ROWS, 4, *HW)
    stacked = stack_tiles(x, TILES)
    assert stacked.shape == (3 * ROWS, 4, 8, 8)
    assert torch.equal(stacked, tile_major(x, TILES))
    unstacked = unstack_tiles(stacked, 3)
    for i, t in enumerate(TILES):
        assert torch.equal(unstacked[i], t.crop(x))
    with pytest.raises(ValueError, match="one size"):
        stack_tiles(x, [Tile(0, 0, 8, 8), Tile(0, 8, 8, 4)])


def test_inpainting_c_concat_is_cropped_with_the_tile_and_text_rows_repeated():
    cond = sd1_cond(hw=HW, inpaint=True)
    out = crop_cond(cond, TILES, HW, ROWS)
    assert type(out) is dict and type(out["c_crossattn"]) is list and type(out["c_concat"]) is list
    assert torch.equal(out["c_concat"][0], tile_major(cond["c_concat"][0], TILES))
    assert out["c_concat"][0].shape == (3 * ROWS, 5, 8, 8)
    text = cond["c_crossattn"][0]
    assert torch.equal(out["c_crossattn"][0], text.repeat(3, 1, 1))          # tile-major repeat
    assert torch.equal(out["c_crossattn"][0][ROWS + 2], text[2])
    assert cond["c_concat"][0].shape == (ROWS, 5, *HW)                       # input untouched


def test_dummy_c_concat_is_repeated_per_row_or_passed_when_not_per_row():
    dummy_rows = torch.zeros(ROWS, 5, 1, 1)
    dummy_one = torch.zeros(1, 5, 1, 1)
    dummy_batch = torch.zeros(2, 5, 1, 1)          # the image batch, not the cond+uncond rows
    out = crop_cond({"c_concat": [dummy_rows, dummy_one, dummy_batch]}, TILES, HW, ROWS)
    assert out["c_concat"][0].shape == (3 * ROWS, 5, 1, 1)
    assert out["c_concat"][1] is dummy_one and out["c_concat"][2] is dummy_batch


def test_sdxl_cond_keeps_its_keys_and_sdxl_sized_tensors():
    g = torch.Generator().manual_seed(0)
    cond = {"crossattn": torch.randn(ROWS, 77, 2048, generator=g),
            "vector": torch.randn(ROWS, 2816, generator=g),
            "c_concat": torch.randn(ROWS, 5, *HW, generator=g)}
    out = crop_cond(cond, TILES[:2], HW, ROWS)
    assert list(out) == ["crossattn", "vector", "c_concat"]
    assert torch.equal(out["crossattn"], cond["crossattn"].repeat(2, 1, 1))
    assert torch.equal(out["vector"], cond["vector"].repeat(2, 1))
    assert torch.equal(out["c_concat"], tile_major(cond["c_concat"], TILES[:2]))


def test_other_values_pass_unchanged_and_containers_keep_their_types():
    Pair = namedtuple("Pair", "a b")
    patch = lambda h: h                                              # noqa: E731
    options = OrderedDict(cond_or_uncond=[1, 0], patches={"attn1_patch": [patch]},
                          sigmas=torch.ones(ROWS), name="x")
    cond = {"c_crossattn": (torch.randn(ROWS, 7, 32),), "pair": Pair(torch.randn(ROWS, 3), 5),
            "transformer_options": options, "scale": torch.tensor(2.0), "none": None,
            "mask": torch.ones(1, 1, *HW)}
    out = crop_cond(cond, TILES, HW, ROWS)
    assert type(out["c_crossattn"]) is tuple and out["c_crossattn"][0].shape[0] == 3 * ROWS
    assert type(out["pair"]) is Pair and out["pair"].b == 5 and out["pair"].a.shape == (3 * ROWS, 3)
    opts = out["transformer_options"]
    assert type(opts) is OrderedDict and opts is not options
    assert opts["cond_or_uncond"] is options["cond_or_uncond"] and opts["name"] == "x"
    assert opts["patches"] is options["patches"]
    assert opts["sigmas"].shape == (3 * ROWS,)                       # per-row: repeated
    assert out["scale"] is cond["scale"] and out["none"] is None
    assert out["mask"].shape == (3 * ROWS, 1, 8, 8)                  # broadcast mask: per tile, per row
    assert torch.equal(out["mask"], torch.ones(3 * ROWS, 1, 8, 8))


def test_spatial_tensor_of_another_batch_is_an_error():
    with pytest.raises(ValueError, match="leading dim"):
        crop_cond({"c_concat": [torch.zeros(3, 5, *HW)]}, TILES, HW, ROWS)


def test_roll_cond_rolls_only_spatial_tensors():
    cond = sd1_cond(hw=HW)
    rolled = roll_cond(cond, (-3, 5), HW)
    assert torch.equal(rolled["c_concat"][0], torch.roll(cond["c_concat"][0], (-3, 5), dims=(-2, -1)))
    assert rolled["c_crossattn"][0] is cond["c_crossattn"][0]


def test_one_tile_over_the_latent_keeps_values():
    cond = sd1_cond(hw=HW)
    out = crop_cond(cond, plan_tiles(*HW, 64, 64, 8), HW, ROWS)
    assert torch.equal(out["c_concat"][0], cond["c_concat"][0])
    assert torch.equal(out["c_crossattn"][0], cond["c_crossattn"][0])
