"""Finding other extensions' always-on scripts of a job by title."""
from types import SimpleNamespace

from lib_tilesampler.hosts.job_scripts import script_titled, scripts_titled


class Script:
    def __init__(self, title, fails=False):
        self._title, self.fails = title, fails

    def title(self):
        if self.fails:
            raise RuntimeError("a broken extension")
        return self._title


def job(*scripts):
    return SimpleNamespace(scripts=SimpleNamespace(alwayson_scripts=list(scripts)))


def test_titles_match_case_insensitively_in_the_hosts_order_and_broken_titles_are_skipped():
    broken, cn, td, other = Script("x", fails=True), Script("ControlNet"), Script("Tiled Diffusion"), Script("Refiner")
    p = job(broken, td, other, cn)
    assert list(scripts_titled(p, ["controlnet", "TILED DIFFUSION"])) == [td, cn]
    assert script_titled(p, "CONTROLNET") is cn


def test_a_job_without_scripts_or_without_the_title_finds_nothing():
    assert script_titled(SimpleNamespace(), "ControlNet") is None
    assert script_titled(job(Script("Refiner"), Script(None)), "ControlNet") is None
    assert list(scripts_titled(SimpleNamespace(scripts=None), ["ControlNet"])) == []
