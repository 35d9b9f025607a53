"""ControlNet hints, residuals and SDXL sizes per tile: a ``TilePlace`` travels through the
tiler, hints are cut to the tiles, and a per-pixel "ControlNet" built from real torch
modules gives the same result tiled as untiled, in the core and through both hosts' glue."""
import pytest
import torch

from denoisers import ROWS, row_t
from lib_tilesampler.hosts.a1111_control import A1111TileInputs, units_not_tiled
from lib_tilesampler.hosts.forge import chained_function_wrapper
from lib_tilesampler.hosts.forge_control import (TILE_CALL, ForgeTileInputs, cut_residuals,
                                                 skipping_controlnet_wrapper, tile_options)
from lib_tilesampler.tiling.conditioning import (TilePlace, crop_cond, pop_place, roll_cond,
                                                 tile_blocks, with_place)
from lib_tilesampler.tiling.denoisers import fused_denoiser, moving_seam_denoiser
from lib_tilesampler.tiling.hints import (SDXL_BASE, SDXL_REFINER, crop_level, crop_pixels,
                                          fit_pixels, holds_crop, sinusoidal_embedding,
                                          size_vector_for_tiles)
from lib_tilesampler.tiling.passes import place_within
from lib_tilesampler.tiling.plan import Tile

HW = (24, 32)
TILES = [Tile(0, 0, 16, 16), Tile(8, 16, 16, 16)]


def hint_image(rows=1, hw=HW, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, channels, hw[0] * 8, hw[1] * 8, generator=g)


class PixelControlNet(torch.nn.Module):
    """A "ControlNet" whose residual at a latent cell depends only on that cell's 8x8 pixels
    of the hint (a stride-8 convolution), and a "U-Net" that mixes it with x per cell."""

    def __init__(self, hint_channels=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.hint = torch.nn.Conv2d(hint_channels, 4, kernel_size=8, stride=8)
        self.mix = torch.nn.Conv2d(8, 4, kernel_size=1)

    def residual(self, hint, rows):
        r = self.hint(hint)
        return r.expand(rows, *r.shape[1:]) if r.shape[0] == 1 else r

    def unet(self, x, t, residual):
        with torch.no_grad():
            return self.mix(torch.cat([x, residual], dim=1)) + t.view(-1, 1, 1, 1)


# ------------------------------------------------------------------------------ core
def test_one_tile_over_the_whole_latent_gets_the_whole_hint():
    place = TilePlace.whole(HW, ROWS)
    for hint in (hint_image(1), hint_image(ROWS)):
        assert torch.equal(crop_pixels(hint, place), hint)
    assert place.is_whole and not place.for_tiles(TILES, ROWS).is_whole


def test_hint_is_cut_to_the_tiles_tile_major_one_row_per_row():
    hint = hint_image(1)
    place = TilePlace.whole(HW, ROWS).for_tiles(TILES, ROWS)
    out = crop_pixels(hint, place)
    assert out.shape == (2 * ROWS, 3, 128, 128)
    assert torch.equal(out[0], hint[0, :, :128, :128])
    assert torch.equal(out[ROWS + 1], hint[0, :, 64:192, 128:256])
    per_row = hint_image(ROWS, seed=1)
    out = crop_pixels(per_row, place)
    assert torch.equal(out[ROWS + 2], per_row[2, :, 64:192, 128:256])
    with pytest.raises(ValueError, match="latent"):
        crop_pixels(hint[..., :64], place)


def test_place_goes_through_crop_cond_and_roll_cond_with_the_latent():
    cond = with_place({"c_crossattn": [torch.randn(ROWS, 7, 32)]}, TilePlace.whole(HW, ROWS))
    tiled = crop_cond(cond, TILES, HW, ROWS)
    _, place = pop_place(tiled)
    assert place.tiles == tuple(TILES) and place.rows == ROWS
    rolled = roll_cond(cond, (-3, -5), HW)
    _, place = pop_place(rolled)
    assert place.offset == (3, 5)
    hint = hint_image(1)
    latent_rolled = torch.roll(hint, (-24, -40), dims=(-2, -1))        # the rolled image
    tile_place = place.for_tiles([Tile(0, 0, 8, 8)], ROWS)
    assert torch.equal(crop_pixels(hint, tile_place), latent_rolled[..., :64, :64])


def test_tile_blocks_split_a_tile_batch_into_single_tile_calls():
    place = TilePlace.whole(HW, ROWS).for_tiles(TILES, ROWS)
    x, t = torch.randn(2 * ROWS, 4, 16, 16), row_t(2 * ROWS)
    cond = {"c_crossattn": [torch.randn(2 * ROWS, 7, 32)], "dummy": torch.zeros(1, 5, 1, 1)}
    blocks = list(tile_blocks(x, t, cond, place))
    assert len(blocks) == 2
    x1, t1, c1, p1 = blocks[1]
    assert torch.equal(x1, x[ROWS:]) and torch.equal(t1, t[ROWS:])
    assert torch.equal(c1["c_crossattn"][0], cond["c_crossattn"][0][ROWS:]) and c1["dummy"] is cond["dummy"]
    assert p1.tiles == (TILES[1],) and p1.rows == ROWS


def test_residuals_are_cut_at_their_own_resolution():
    place = TilePlace.whole(HW, ROWS).for_tiles(TILES, ROWS)
    for k in (1, 2, 4, 8):
        residual = torch.randn(ROWS, 3, HW[0] // k, HW[1] // k)
        out = crop_level(residual, place)
        assert out.shape == (2 * ROWS, 3, 16 // k, 16 // k)
        assert torch.equal(out[ROWS], residual[0, :, 8 // k:(8 + 16) // k, 16 // k:32 // k])


def test_fit_pixels_covers_and_centres_like_crop_and_resize():
    image = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 1, 4, 8)
    assert fit_pixels(image, 4, 8) is image
    out = fit_pixels(image, 8, 8)                        # 2x up to 8 x 16, then the middle 8
    assert out.shape == (1, 1, 8, 8)
    assert torch.equal(out[0, 0, 0], torch.tensor([2., 2, 3, 3, 4, 4, 5, 5]))


def controlled(net, hint):
    """A host's inner denoiser: the ControlNet runs on the hint of the call's tiles."""
    def denoise(x, t, cond):
        cond, place = pop_place(cond)
        h = hint if place is None else crop_pixels(hint, place)
        return net.unet(x, t, net.residual(h, x.shape[0]))
    return denoise


def placed(tiled):
    """The host's outer call: the whole latent's place goes into the conditioning."""
    return lambda x, t, cond: tiled(x, t, with_place(cond, TilePlace.whole(x.shape[-2:], x.shape[0])))


@pytest.mark.parametrize("hint_rows", [1, ROWS])
@pytest.mark.parametrize("batch", [1, 2])
def test_per_pixel_controlnet_tiled_equals_untiled_in_fused_and_moving_mode(hint_rows, batch):
    net = PixelControlNet()
    hint = hint_image(hint_rows)
    x, t, cond = torch.randn(ROWS, 4, *HW), row_t(), {"c_crossattn": [torch.randn(ROWS, 7, 32)]}
    with torch.no_grad():
        expected = controlled(net, hint)(x, t, cond)
        fused = placed(fused_denoiser(controlled(net, hint), 16, 16, 8, "gaussian", batch, align=8))
        torch.testing.assert_close(fused(x, t, cond), expected, rtol=1e-5, atol=1e-5)
        for wrap in (False, True):
            moving = placed(moving_seam_denoiser(controlled(net, hint), 16, 16, seed=3, wrap=wrap,
                                                 tile_batch=batch))
            torch.testing.assert_close(moving(x, t, cond), expected, rtol=1e-5, atol=1e-5)


def test_a_tile_sampled_as_a_whole_latent_gets_its_part_of_the_hint():
    net = PixelControlNet()
    hint = hint_image(1)
    tile = TILES[1]
    x, t = torch.randn(ROWS, 4, *HW), row_t()
    with torch.no_grad():
        expected = tile.crop(controlled(net, hint)(x, t, {}))
        run = placed(place_within(tile, HW)(controlled(net, hint)))
        torch.testing.assert_close(run(tile.crop(x), t, {}), expected)


# ---------------------------------------------------------------------- SDXL sizes
def sdxl_vector(rows, layout, crop=(0, 0), size=(1024, 1536), pooled=64):
    numbers = [size[0], size[1], crop[0], crop[1]] + ([size[0], size[1]] if layout.target else [6.0])
    emb = sinusoidal_embedding(torch.tensor(numbers, dtype=torch.float32), 256).reshape(1, -1)
    return torch.cat([torch.randn(1, pooled), emb], dim=1).repeat(rows, 1)


def test_sinusoidal_embedding_is_ldms_timestep_embedding():
    util = pytest.importorskip("ldm.modules.diffusionmodules.util")
    values = torch.tensor([0.0, 64.0, 1024.0, 1536.0])
    torch.testing.assert_close(sinusoidal_embedding(values, 256), util.timestep_embedding(values, 256))


@pytest.mark.parametrize("layout", [SDXL_BASE, SDXL_REFINER])
def test_sdxl_tiles_get_their_crop_corner_and_size(layout):
    vector = sdxl_vector(ROWS, layout, crop=(16, 8))
    assert holds_crop(vector, layout, (16, 8)) and not holds_crop(vector, layout, (0, 0))
    place = TilePlace.whole(HW, ROWS).for_tiles(TILES, ROWS)
    out = size_vector_for_tiles(vector.repeat(2, 1), place, layout, crop_top_left=(16, 8))
    for i, tile in enumerate(TILES):
        expected = sdxl_vector(ROWS, layout, crop=(16 + tile.y * 8, 8 + tile.x * 8), size=(1024, 1536))
        block = out[i * ROWS:(i + 1) * ROWS]
        if layout.target:
            expected[:, -512:] = sinusoidal_embedding(torch.tensor([128.0, 128.0]), 256).reshape(1, -1)
        torch.testing.assert_close(block[:, 64:], expected[:, 64:])
        assert torch.equal(block[:, :64], vector[:, :64])                # the text part is kept


# ------------------------------------------------------------------------ Forge glue
class ControlNet:
    """Stands for Forge's ``backend.patcher.controlnet.ControlNet`` node (matched by class
    name): ``get_control`` runs the per-pixel net on ``cond_hint`` (resized from the
    original when it does not fit x, as Forge does), broadcast over the rows."""

    def __init__(self, net, hint, previous=None):
        self.net, self.cond_hint_original, self.cond_hint = net, hint, None
        self.previous_controlnet, self.transformer_options = previous, {}
        self.control_model = net
        self.seen = []

    def get_control(self, x, t, cond, batched_number):
        if self.cond_hint is None or self.cond_hint.shape[-2] != x.shape[-2] * 8:
            self.cond_hint = fit_pixels(self.cond_hint_original, x.shape[-2] * 8, x.shape[-1] * 8)
        self.seen.append((tuple(self.cond_hint.shape), list(self.transformer_options["cond_or_uncond"])))
        residual = self.net.residual(self.cond_hint, x.shape[0])
        if self.previous_controlnet is not None:
            residual = residual + self.previous_controlnet.get_control(x, t, cond, batched_number)["output"][0]
        return {"input": [], "middle": [], "output": [residual]}


class OtherControl(ControlNet):
    """A control type Forge knows nothing of: cannot be given a tile's hint."""


def forge_functions():
    resize = lambda image, w, h, method, crop: fit_pixels(image, h, w)
    return resize, (lambda hint, rows, chunks: hint), tile_options.__defaults__[0]


def forge_run(head, net, x, t, wrap):
    """Forge's calc_cond_uncond_batch: control of the whole call, then the wrapper."""
    options = {"cond_or_uncond": [0, 1], "sigmas": t[:ROWS // 2], "cond_mark": torch.tensor([0., 0, 1, 1]),
               "cond_indices": [0, 1], "uncond_indices": [2, 3]}
    node = head
    while node is not None:                       # Forge gives every node the call's options
        node.transformer_options, node = options, node.previous_controlnet
    c = {"c_crossattn": torch.randn(ROWS, 7, 32, generator=torch.Generator().manual_seed(1)),
         "transformer_options": options, "control_model": head,
         "control": head.get_control(x, t, {}, 2)}
    seen_options = []

    def apply_model(x_, t_, **c_):
        seen_options.append(c_["transformer_options"])
        return net.unet(x_, t_, c_["control"]["output"][0])

    inputs = ForgeTileInputs(True, (0, 0), lambda m: None, forge_functions())
    wrapper = chained_function_wrapper(None, lambda: wrap, lambda: inputs)
    with torch.no_grad():
        out = wrapper(apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": [0, 1]})
    return out, seen_options


@pytest.mark.parametrize("node", [ControlNet, OtherControl])
def test_forge_tiles_get_their_controlnet_residuals_and_chunk_lists(node):
    net, other = PixelControlNet(), PixelControlNet(seed=1)
    hint = hint_image(1)
    x, t = torch.randn(ROWS, 4, *HW), row_t()
    head = node(net, hint, previous=ControlNet(other, hint_image(1, seed=2)))
    expected, _ = forge_run(head, net, x, t, None)
    wrap = lambda d: fused_denoiser(d, 16, 16, 8, "gaussian", 2, align=8)
    out, options = forge_run(head, net, x, t, wrap)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    tile_calls = [o for o in options if len(o["cond_or_uncond"]) == 4]
    assert tile_calls and all(o["cond_indices"] == [0, 1, 4, 5] and o["uncond_indices"] == [2, 3, 6, 7]
                              and torch.equal(o["sigmas"], t[:ROWS // 2]) for o in tile_calls)
    assert head.cond_hint.shape[-2:] == (HW[0] * 8, HW[1] * 8)          # the nodes are put back
    if node is ControlNet:
        assert (2 * ROWS, 3, 128, 128) in [s for s, _ in head.seen]


def test_forge_whole_residuals_are_cut_for_a_tile_of_the_whole_latent_only():
    place = TilePlace.whole(HW, ROWS).for_tiles(TILES[:1], ROWS)
    control = {"output": [torch.randn(ROWS, 4, *HW), None], "input": []}
    out = cut_residuals(control, place, HW)
    assert torch.equal(out["output"][0], control["output"][0][..., :16, :16]) and out["output"][1] is None
    assert out["output"] is not control["output"]
    assert cut_residuals(control, place, (16, 16))["output"][0] is control["output"][0]


def test_forge_skips_the_whole_latents_controlnet_only_for_a_call_about_to_be_tiled():
    calls = []
    inner = lambda **kw: calls.append(kw["x"].shape) or ["residual"]
    head = ControlNet(PixelControlNet(), hint_image(1))
    args = dict(x=torch.zeros(1, 4, 8, 8), hint=torch.zeros(1, 3, 64, 64), timesteps=torch.zeros(1),
                context=torch.zeros(1, 7, 32), y=None, model=head, inner_model=inner)
    assert skipping_controlnet_wrapper(None, lambda: head)(**args) == [] and not calls
    head.transformer_options = {TILE_CALL: True}                       # our own tile call
    assert skipping_controlnet_wrapper(None, lambda: head)(**args) == ["residual"]
    head.transformer_options = {}
    assert skipping_controlnet_wrapper(None, lambda: None)(**args) == ["residual"]   # not tiling
    mixed = ControlNet(PixelControlNet(), hint_image(1), previous=OtherControl(PixelControlNet(), hint_image(1)))
    assert skipping_controlnet_wrapper(None, lambda: mixed)(**dict(args, model=mixed)) == ["residual"]
    theirs = lambda **kw: ["theirs"]
    assert skipping_controlnet_wrapper(theirs, lambda: None)(**args) == ["theirs"]


# ------------------------------------------------------------------------ A1111 glue
class ControlParams:
    """Stands for sd-webui-controlnet's ``ControlParams``: the hint setter clears the
    hook's per-hint caches."""

    def __init__(self, kind, hint, hr_hint=None):
        self.control_model_type = type("Kind", (), {"name": kind})()
        self.preprocessor = {"name": "none"}
        self._hint_cond, self.hr_hint_cond = hint, hr_hint
        self.used_hint_cond = self.used_hint_cond_latent = self.used_hint_inpaint_hijack = None
        self.effective_region_mask = None
        self.cfg_injection = False
        self.control_model = None

    @property
    def hint_cond(self):
        return self._hint_cond

    @hint_cond.setter
    def hint_cond(self, value):
        self._hint_cond = value
        self.used_hint_cond = self.used_hint_cond_latent = self.used_hint_inpaint_hijack = None


class Adapter:
    """Stands for sd-webui-controlnet's ``PlugableAdapter``: computes its features on the
    first call and keeps them (``control``) until reset."""

    def __init__(self, net):
        self.net, self.control = net, None

    def __call__(self, hint, rows):
        if self.control is None:
            self.control = self.net.residual(hint, 1 if hint.shape[0] == 1 else rows)
        return self.control


def hooked_unet(params, nets):
    """What the hook does at each U-Net call: pick the hint by height, run the nets."""
    def forward(x, t, cond):
        residual = 0
        for param, net in zip(params, nets):
            if param.used_hint_cond is None:
                param.used_hint_cond = param.hint_cond
            if isinstance(param.hr_hint_cond, torch.Tensor):
                h = x.shape[-2] * 8
                near_first = abs(h - param.hint_cond.shape[2]) < abs(h - param.hr_hint_cond.shape[2])
                param.used_hint_cond = param.hint_cond if near_first else param.hr_hint_cond
            if isinstance(param.control_model, Adapter):
                out = param.control_model(param.used_hint_cond, x.shape[0])
                residual = residual + out.expand(x.shape[0], *out.shape[1:])
            else:
                residual = residual + net.residual(param.used_hint_cond, x.shape[0])
        return nets[0].unet(x, t, residual)
    return forward


@pytest.mark.parametrize("hires", [False, True])
def test_a1111_tiles_get_their_hints_and_the_params_are_put_back(hires):
    nets = [PixelControlNet(), PixelControlNet(seed=1)]
    first = (HW[0] // 2, HW[1] // 2)
    lowres = [hint_image(1, first), hint_image(ROWS, first, seed=1)]
    full = [hint_image(1), hint_image(ROWS, seed=1)]
    if hires:   # a hires pass: the first pass's hints are smaller, the hires ones fit the latent
        params = [ControlParams("ControlNet", lo, hi) for lo, hi in zip(lowres, full)]
    else:
        params = [ControlParams("ControlNet", full[0]), ControlParams("T2I_Adapter", full[1])]
        params[1].control_model = Adapter(nets[1])
    x, t, cond = torch.randn(ROWS, 4, *HW), row_t(), {"c_crossattn": [torch.randn(ROWS, 7, 32)]}
    unet = hooked_unet(params, nets)
    with torch.no_grad():
        expected = unet(x, t, cond)                     # an adapter keeps the whole image's features
        before = [dict(vars(p)) for p in params]
        inputs = A1111TileInputs(lambda: params, True, (0, 0), lambda m: None)

        def denoiser(x_, t_, cond_):
            cond_, place = pop_place(cond_)
            return unet(x_, t_, cond_) if place is None or place.is_whole else inputs.call(unet, x_, t_, cond_, place)
        out = placed(fused_denoiser(denoiser, 16, 16, 8, "gaussian", 2, align=8))(x, t, cond)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for p, state in zip(params, before):
        assert all(getattr(p, k) is v for k, v in state.items() if k != "used_hint_cond")


def test_units_that_cannot_follow_the_tiles_are_named():
    ok = [ControlParams("ControlNet", hint_image(1)), ControlParams("AttentionInjection", hint_image(1)),
          ControlParams("IPAdapter", None)]
    assert units_not_tiled(ok) == []
    masked_ip = ControlParams("IPAdapter", None)
    masked_ip.effective_region_mask = torch.ones(1, 1, 8, 8)
    bad = [ControlParams("Controlllite", hint_image(1)), masked_ip, ControlParams("ControlNet", [hint_image(1)]),
           ControlParams("GLIGEN", None)]
    reasons = units_not_tiled(bad)
    assert [needs_whole for _, needs_whole in reasons] == [True] * 4
    assert "unit 0 (Controlllite" in reasons[0][0] and "region mask" in reasons[1][0]
    assert "not one image" in reasons[2][0] and "GLIGEN is not known" in reasons[3][0]
