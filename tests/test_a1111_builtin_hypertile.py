"""A1111's built-in HyperTile (Settings) is switched off on the modules ours tiles for the
job, the user is told in the image's info, and it is switched back on afterwards."""
from types import SimpleNamespace

import torch

from lib_tilesampler.hosts.a1111 import BUILTIN_HYPERTILE_PARAMS, A1111Host
from lib_tilesampler.job import Job
from lib_tilesampler.module_patch import PatchSet


def model_with_builtin_hypertile(enabled):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    setattr(model[1], BUILTIN_HYPERTILE_PARAMS, SimpleNamespace(enabled=enabled))
    return model


def test_the_builtin_hypertile_is_muted_said_and_put_back():
    job, told, patches = Job({}), [], PatchSet()
    job.reporter = told.append
    model = model_with_builtin_hypertile(True)
    A1111Host._mute_builtin_hypertile(job, [model], patches)
    assert getattr(model[1], BUILTIN_HYPERTILE_PARAMS).enabled is False
    assert len(told) == 1 and "built-in HyperTile" in told[0]
    patches.restore()
    assert getattr(model[1], BUILTIN_HYPERTILE_PARAMS).enabled is True


def test_nothing_is_said_when_the_builtin_hypertile_is_off():
    job, told, patches = Job({}), [], PatchSet()
    job.reporter = told.append
    model = model_with_builtin_hypertile(False)
    A1111Host._mute_builtin_hypertile(job, [model], patches)
    assert told == [] and getattr(model[1], BUILTIN_HYPERTILE_PARAMS).enabled is False
