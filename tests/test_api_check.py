"""The request checks on a parsed request: the same messages as ever for bad args, our
infotext keys checked with their key named, a selectable script's args, the size a
request samples at last."""
from lib_tilesampler.api_check import ApiRequest, check_alwayson_args, check_infotext, \
    check_script_args, first_error, request_fit_error
from lib_tilesampler.params import ParamError, infotext_values, parse_args

TITLE = "Tile Sampler"
CHECK = check_alwayson_args(TITLE)
INFOTEXT = check_infotext(TITLE)


def request(tab="txt2img", given=None, infotext=None, **fields):
    base = {"prompt": "", "width": 512, "height": 512, "enable_hr": False, "hr_scale": 2.0,
            "hr_resize_x": 0, "hr_resize_y": 0, "script_name": None, "script_args": [],
            "alwayson_scripts": {}, "infotext": None}
    base.update(fields)
    return ApiRequest(tab, base, frozenset(fields if given is None else given), infotext or {})


def args(value, title="tile sampler"):
    return request(alwayson_scripts={title: {"args": value}})


def test_good_named_and_positional_args_pass():
    assert CHECK(args([{"hypertile": True}])) is None
    assert CHECK(args([True, True, 256, 2, 0, False, False])) is None
    assert CHECK(request()) is None


def test_bad_named_key_is_named():
    error = CHECK(args([{"hypertile_tile": 256}], title="Tile Sampler"))
    assert error.startswith("Tile Sampler: unknown key(s) 'hypertile_tile'")


def test_too_many_positional_args_wrong_types_and_a_bad_entry():
    too_many = [False, False, 256, 2, 0, False, False] + [None] * 30
    assert "positional args" in CHECK(args(too_many))
    assert "hypertile_tile_size must be int" in CHECK(args([True, True, "x"]))
    assert "must be" in CHECK(request(alwayson_scripts={"tile sampler": [True]}))
    assert "must be" in CHECK(request(alwayson_scripts={"tile sampler": {"args": "x"}}))


def test_other_scripts_args_are_not_ours():
    assert CHECK(request(alwayson_scripts={"other": {"args": ["anything"]}})) is None


def test_extra_sees_the_values_and_the_request():
    seen = []
    check = check_alwayson_args(TITLE, extra=lambda values, r: seen.append((values, r.tab)) or "no")
    assert check(args([{"resample": True}])) == "Tile Sampler: no"
    assert seen[0][0]["resample"] is True and seen[0][1] == "txt2img"


def test_fit_error_uses_the_hires_size_of_the_request():
    values = parse_args([{"resample": True, "resample_tile_size": 1024}])
    small = request(width=512, height=512)
    assert "not smaller than the image (512x512)" in request_fit_error(values, small)
    hires = request(width=768, height=768, enable_hr=True, hr_scale=2.0)
    assert request_fit_error(values, hires) is None


def test_fit_error_waits_when_the_infotext_sets_the_size():
    values = parse_args([{"resample": True, "resample_tile_size": 1024}])
    pasted = request(infotext={"Size-1": "2048", "Size-2": "2048"}, given=())
    assert pasted.last_size() is None and request_fit_error(values, pasted) is None
    given = request(width=512, height=512, infotext={"Size-1": "2048", "Size-2": "2048"})
    assert given.last_size() == (512, 512)


def test_infotext_keys_of_ours_are_checked_and_named():
    assert INFOTEXT(request(infotext={"Steps": "20"})) is None
    assert INFOTEXT(request(infotext={"Resample": "True", "Resample tile size": "512"})) is None
    error = INFOTEXT(request(infotext={"Resample": "True", "Resample tile size": "huge"}))
    assert error.startswith("Tile Sampler: infotext key 'Resample tile size'") and "'huge'" in error
    assert "whole number" in INFOTEXT(request(infotext={"Resample steps": "30.0"}))
    assert "'Resample mode'" in INFOTEXT(request(infotext={"Resample mode": "sideways"}))
    assert "'HyperTile'" in INFOTEXT(request(infotext={"HyperTile": "yes"}))
    assert "at most 2048" in INFOTEXT(request(infotext={"HyperTile tile size": "4096"}))


def test_infotext_values_match_the_written_ones():
    values = infotext_values({"Resample": "True", "Resample denoise": "0.3", "Resample seed": "-1"})
    assert values["resample"] is True and values["resample_denoise"] == 0.3
    assert values["resample_seed"] == -1 and values["enabled"] is True
    assert infotext_values({"Steps": "20"}) == {}


def test_a_selectable_scripts_args_are_checked_when_it_is_named():
    def parse(script_args):
        if len(script_args) != 2:
            raise ParamError(f"expected 2 args, got {len(script_args)}")
        return {"a": script_args[0]}
    check = check_script_args("Tile Upscale", parse)
    assert check(request(script_name="tile upscale", script_args=[1, 2])) is None
    assert check(request(script_name="Tile Upscale", script_args=[1])) == \
        "Tile Upscale: expected 2 args, got 1"
    assert check(request(script_name="other", script_args=[1])) is None
    assert check(request(script_name="tile upscale", script_args="x")) == \
        "Tile Upscale: script_args must be a list"


def test_first_error_skips_a_check_that_fails_itself(capsys):
    def broken(_request):
        raise KeyError("bug")
    assert first_error(args([{"x": 1}]), [broken, CHECK]).startswith("Tile Sampler: unknown key")
    assert first_error(request(), [broken]) is None
    assert "API check" in capsys.readouterr().out


# ------------------------------------------------------------------ Script-tab script args
def _tool_request(args=None, infotext=None):
    from lib_tilesampler.api_check import ApiRequest
    fields = {"script_name": "Tile Sampler Tools"}
    if args is not None:
        fields["script_args"] = args
    return ApiRequest("txt2img", fields, frozenset(fields), infotext or {})


def test_script_values_merge_a_named_dict_over_the_pasted_infotext_and_positional_args_win():
    import pytest
    from lib_tilesampler.api_check import script_args_in_full, script_values
    from lib_tilesampler.tools import options as O
    pasted = {"Tile Sampler tool": "refine_upscale", "RU upscale by": "2.5", "RU tiler mode": "fused"}

    def values(args=None, infotext=None):
        return script_values(_tool_request(args, infotext), O.TITLE, O.TOOL_FIELDS, O.parse_tool_args,
                             O.tool_from_infotext)
    assert values([], pasted)["upscale_by"] == 2.5 and values([], pasted)["tiler_mode"] == "fused"
    merged = values([{"tiler_mode": "moving"}], pasted)
    assert merged["upscale_by"] == 2.5 and merged["tiler_mode"] == "moving"
    assert values(["Refine & upscale", False, 12], pasted)["upscale_by"] == 1.0
    assert values(None) == O.tool_defaults()
    assert script_values(_tool_request(), "Other", O.TOOL_FIELDS, O.parse_tool_args, O.tool_from_infotext) is None
    with pytest.raises(ParamError, match="upscale_by"):
        values([{"upscale_by": "big"}])
    rewrite = script_args_in_full(O.TITLE, O.TOOL_FIELDS, O.parse_tool_args, O.tool_from_infotext)
    full = rewrite(_tool_request([{"upscale_by": 3}]))["script_args"]
    assert len(full) == len(O.TOOL_FIELDS) and full[0] == "refine_upscale"
    assert O.parse_tool_args(full) == dict(O.tool_defaults(), upscale_by=3.0)
    assert rewrite(_tool_request([{"upscale_by": "big"}])) is None
