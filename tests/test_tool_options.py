"""The Script tab's options: positional and named args, infotext round trip, and the whole
positional args an API request with fewer gets (the hosts splice ``script_args`` into every
script's args)."""
import pytest

from lib_tilesampler.api_check import ApiRequest, script_args_in_full
from lib_tilesampler.params import ParamError
from lib_tilesampler.tools.options import (TITLE, TOOL_FIELDS, parse_tool_args, tool_defaults,
                                           tool_from_infotext, tool_infotext)

MASK = "iVBORw0KGgo="   # any string: the mask is judged when the tool runs


def whole_script_args(args, infotext):
    """The full positional args the API rewrite gives a request with ``args``."""
    rewrite = script_args_in_full(TITLE, TOOL_FIELDS, parse_tool_args, tool_from_infotext)
    request = ApiRequest("img2img", {"script_name": TITLE, "script_args": args}, infotext=infotext)
    changes = rewrite(request)
    return None if changes is None else changes["script_args"]


def infotext_of(values):
    """The infotext entries as the host writes and parses them back (text values)."""
    return {k: str(v) for k, v in tool_infotext(values).items()}


def test_named_and_positional_mask_grid_args_read_the_same():
    named = {"tool": "mask_grid", "mask": MASK, "rows": 2, "columns": 3, "mode": "Fork then Sample"}
    positional = [tool_defaults()[f.key] for f in TOOL_FIELDS]
    for f, i in ((f, i) for i, f in enumerate(TOOL_FIELDS) if f.key in named):
        positional[i] = named[f.key]
    assert parse_tool_args([named]) == parse_tool_args(positional)


def test_the_mask_grids_infotext_round_trips_without_the_mask():
    values = dict(tool_defaults(), tool="mask_grid", mask=MASK, rows=2, columns=3, start_step=3,
                  leftover_noise=True, feather=4)
    text = infotext_of(values)
    assert "MG mask" not in text and text["MG rows"] == "2" and text["MG leftover noise"] == "True"
    restored = tool_from_infotext(text)
    assert restored == dict(values, mask="")


def test_a_named_dict_becomes_all_positional_args_over_the_defaults():
    whole = whole_script_args([{"tool": "mask_grid", "mask": MASK, "rows": 2}], {})
    assert len(whole) == len(TOOL_FIELDS)
    assert parse_tool_args(whole) == dict(tool_defaults(), tool="mask_grid", mask=MASK, rows=2)


def test_the_infotexts_values_lie_under_the_given_ones():
    pasted = dict(tool_defaults(), tool="mask_grid", rows=2, columns=3, mode="Fork then Sample")
    whole = whole_script_args([{"mask": MASK, "columns": 2}], infotext_of(pasted))
    assert parse_tool_args(whole) == dict(pasted, mask=MASK, columns=2)
    whole = whole_script_args([], infotext_of(pasted))
    assert parse_tool_args(whole) == dict(pasted, mask="")


def test_leading_positional_values_are_completed_too():
    whole = whole_script_args(["Mask grid"], {})
    assert parse_tool_args(whole)["tool"] == "mask_grid" and len(whole) == len(TOOL_FIELDS)


def test_whole_args_stay_as_given():
    args = [tool_defaults()[f.key] for f in TOOL_FIELDS]
    assert whole_script_args(args, {}) == args


@pytest.mark.parametrize("args,infotext", [
    ([{"rows": 99}], {}),                                          # does not read: the check says
    ([{"mask": MASK}], {"Tile Sampler tool": "mask_grid", "MG rows": "many"}),
])
def test_unreadable_args_are_left_alone(args, infotext):
    assert whole_script_args(args, infotext) is None


def test_a_bad_infotext_value_names_its_key():
    with pytest.raises(ParamError, match="'MG rows'"):
        tool_from_infotext({"Tile Sampler tool": "mask_grid", "MG rows": "many"})
