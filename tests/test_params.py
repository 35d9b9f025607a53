import pytest

from lib_tilesampler import params as P


def test_positional_args_follow_the_ui_order():
    values = P.parse_args([True, True, 384, 3, 1, True, False])
    assert values == {**P.defaults(), "enabled": True, "hypertile": True, "hypertile_tile_size": 384,
                      "hypertile_swap_size": 3, "hypertile_max_depth": 1,
                      "hypertile_scale_depth": True, "hypertile_vae": False}
    assert [f.key for f in P.FIELDS][:7] == ["enabled", "hypertile", "hypertile_tile_size",
                                             "hypertile_swap_size", "hypertile_max_depth",
                                             "hypertile_scale_depth", "hypertile_vae"]


def test_fewer_positional_args_keep_defaults():
    assert P.parse_args([True, True]) == {**P.defaults(), "enabled": True, "hypertile": True}


def test_named_dict_turns_the_extension_on_and_keeps_other_defaults():
    values = P.parse_args([{"hypertile": True, "hypertile_tile_size": 256}])
    assert values == {**P.defaults(), "enabled": True, "hypertile": True}
    # the API fills the positions after the dict with the UI defaults
    assert P.parse_args([{"hypertile": True}] + [P.FIELDS[i].default for i in range(1, len(P.FIELDS))]) \
        == {**P.defaults(), "enabled": True, "hypertile": True}
    assert P.parse_args([{"enabled": False, "hypertile": True}])["enabled"] is False


def test_named_and_positional_give_the_same_values():
    named = P.parse_args([{"hypertile": True, "hypertile_tile_size": 320, "hypertile_max_depth": 2}])
    positional = P.parse_args([True, True, 320, 2, 2, False, False])
    assert named == positional


@pytest.mark.parametrize("args,message", [
    ([{"hypertile": True, "tile": 256}], "unknown key(s) 'tile'"),
    ([{"hypertile_tile_size": "big"}], "hypertile_tile_size must be int"),
    ([{"hypertile_tile_size": 4096}], "at most 2048"),
    ([{"hypertile_tile_size": 255.5}], "whole number"),
    ([{"hypertile_max_depth": -1}], "at least 0"),
    ([{"hypertile": "yes"}], "hypertile must be bool"),
    ([{"hypertile": 1}], "hypertile must be bool"),
    ([True] * (len(P.FIELDS) + 1), f"got {len(P.FIELDS) + 1} positional args, expected at most {len(P.FIELDS)}"),
    ([{"resample_mode": "tiled"}], "resample_mode must be one of 'independent', 'fused', 'moving'"),
    ([{"resample_denoise": 1.5}], "resample_denoise must be at most 1.0"),
    ([{"hypertile": True}, True, 512], "either one dict"),
    ([True, True, None], "hypertile_tile_size must be int"),
])
def test_bad_values_are_errors_with_a_readable_message(args, message):
    with pytest.raises(P.ParamError) as info:
        P.parse_args(args)
    assert message in str(info.value)


def test_string_spellings_from_infotext_and_xyz_are_accepted():
    assert P.FIELDS_BY_KEY["hypertile"].check("True") is True
    assert P.FIELDS_BY_KEY["hypertile_tile_size"].check("256") == 256
    assert P.FIELDS_BY_KEY["hypertile_tile_size"].check(256.0) == 256


def test_infotext_round_trip():
    values = P.parse_args([{"hypertile": True, "hypertile_tile_size": 320, "hypertile_swap_size": 3,
                            "hypertile_max_depth": 1, "hypertile_scale_depth": True, "hypertile_vae": True}])
    text = P.to_infotext(values)
    assert text == {"HyperTile": True, "HyperTile tile size": 320, "HyperTile swap size": 3,
                    "HyperTile max depth": 1, "HyperTile scale depth": True, "HyperTile VAE": True}
    parsed = {k: str(v) for k, v in text.items()}           # infotext values come back as text
    assert P.from_infotext(parsed) == values


def test_nothing_is_written_when_off_and_nothing_restored_without_keys():
    assert P.to_infotext(P.defaults()) == {}
    assert P.to_infotext({**P.defaults(), "hypertile": True}) == {}   # master off
    assert P.from_infotext({"Steps": "20"}) == {}


def test_xyz_overrides_win_over_script_args():
    class Job:
        tilesampler_hypertile_tile_size = "384"
        tilesampler_hypertile = "True"
    values = P.override_from(Job(), P.defaults())
    assert values["hypertile_tile_size"] == 384 and values["hypertile"] is True and values["enabled"]
    assert [f.key for f in P.FIELDS if f.xyz] == [
        "hypertile", "hypertile_tile_size", "hypertile_swap_size", "hypertile_max_depth",
        "resample_mode", "resample_tile_size", "resample_overlap", "resample_denoise"]


def test_resample_must_fit_the_image_and_overlap_the_tile():
    on = P.parse_args([{"resample": True, "resample_tile_size": 512, "resample_overlap": 64}])
    assert P.resample_fit_error(on, 1024, 768) is None
    assert "not smaller than the image (512x512)" in P.resample_fit_error(on, 512, 512)
    assert P.resample_fit_error(on, 512, 1024) is None           # one axis to tile is enough
    bad = dict(on, resample_overlap=512)
    assert "must be smaller than resample_tile_size" in P.resample_fit_error(bad, 2048, 2048)
    assert P.resample_fit_error(dict(bad, resample_mode="moving"), 2048, 2048) is None
    assert P.resample_fit_error(P.defaults(), 64, 64) is None    # off: nothing to check


def test_final_size_follows_the_hires_settings():
    assert P.final_size(512, 768) == (512, 768)
    assert P.final_size(512, 768, True, 2.0) == (1024, 1536)
    assert P.final_size(512, 768, True, 1.5) == (768, 1152)
    assert P.final_size(512, 768, True, 2.0, 1024, 0) == (1024, 1536)
    assert P.final_size(512, 768, True, 2.0, 0, 1152) == (768, 1152)
    assert P.final_size(512, 768, True, 2.0, 640, 640) == (640, 640)


def test_inside_a_job_the_values_after_a_dict_are_the_base_it_overrides():
    """The WebUI pastes a request's ``infotext`` into the positions after the named dict."""
    pasted = [None] * (len(P.FIELDS) - 1)
    pasted[P.FIELDS.index(P.FIELDS_BY_KEY["resample_tile_size"]) - 1] = 512
    pasted[P.FIELDS.index(P.FIELDS_BY_KEY["hypertile_tile_size"]) - 1] = 128
    values = P.parse_args([{"hypertile_tile_size": 256}] + pasted, merge_tail=True)
    assert values["enabled"] and values["resample_tile_size"] == 512
    assert values["hypertile_tile_size"] == 256
    with pytest.raises(P.ParamError, match="not both"):
        P.parse_args([{"hypertile_tile_size": 256}] + pasted)


def test_an_adaptive_sampler_cannot_run_the_moving_mode_and_the_message_says_why():
    from lib_tilesampler.params import SAME, moving_sampler_error
    base = P.parse_args([{"resample": True, "resample_mode": "moving", "resample_sampler": "DPM adaptive"}])
    assert "resample_sampler DPM adaptive cannot run the moving mode" in moving_sampler_error(base, "Euler")
    same = dict(base, resample_sampler=SAME)
    assert "resample_sampler DPM adaptive" in moving_sampler_error(same, "DPM adaptive")
    assert moving_sampler_error(same, "Euler") is None
    during = dict(base, resample_sampler="Euler", resample_where="during")
    assert "the sampler DPM adaptive cannot run the main sampling" in moving_sampler_error(during, "DPM adaptive")
    assert moving_sampler_error(dict(during, resample_where="after"), "DPM adaptive") is None
    for mode in ("fused", "independent"):
        assert moving_sampler_error(dict(base, resample_mode=mode), "DPM adaptive") is None
    assert moving_sampler_error(dict(base, resample=False), "DPM adaptive") is None
