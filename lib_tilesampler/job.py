"""One object per generation, and the stack of the generations in progress.

Everything the extension changes in the host for a generation (patches on modules,
samplers and patchers), what it has to say about it (notes for the infotext), and what
it measured (U-Net evaluations per stage) lives in that generation's ``Job``. Nothing is
stored on the host's shared objects: a generation started from inside another one (an
extension calling ``process_images`` on a copy of ``p``, the X/Y/Z plot's cells) gets a
``Job`` of its own, and closing it never touches the outer job's patches.

``JobStack`` holds the open jobs, outermost first. Closing a job also closes the jobs
opened after it (the nested ones that did not close themselves, e.g. after an
exception), and ``close_stale(key)`` closes jobs left open by a top-level generation
that ended without telling us (an exception the host swallowed before our hooks ran).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .module_patch import PatchSet


@dataclass
class StageCount:
    """What ran in one stage of a job: sampler runs and denoiser evaluations."""

    runs: int = 0
    evaluations: int = 0
    seconds: float = 0.0          # summed intervals between timed evaluations
    timed: int = 0                # evaluations whose duration is in ``seconds``
    work_per_evaluation: float = 0.0   # work units of one evaluation (see ``preview``)
    model: Optional[str] = None   # the model that ran it when not the job's (a refiner)


class Job:
    """The state of one generation: its options, its patches, its notes, its counts."""

    def __init__(self, values: dict, key: Any = None, label: str = "") -> None:
        self.values = values
        self.key = key                      # the top-level generation it belongs to
        self.label = label
        self.notes: list[str] = []
        self.facts: dict[str, Any] = {}      # what the job measured, for the console and API
        self.stages: dict[str, StageCount] = {}
        self.stage = "main"
        self.tiles: Optional[tuple[int, int]] = None   # (done, total) of a tiled stage
        self.tiles_label: Optional[str] = None        # its name in the progress text
        self.host: Any = None               # the host adapter's per-job state
        self.script: Any = None             # the script's per-job state
        self.counts_nested = False          # also count the evaluations of jobs opened inside it
        self.times_nested = False           # ... and time them with its own work per evaluation:
                                            # the jobs inside do not record their speed
        self.closed = False
        self.reporter: Optional[Callable[[str], None]] = None   # tells the user (UI, infotext)
        self.started = time.perf_counter()
        self.model: Optional[str] = None    # what the speed is measured for
        self._last_call: Optional[tuple[str, float]] = None
        self.ended: Optional[float] = None
        self._patches: list[PatchSet] = []
        self._on_close: list[Callable[[], None]] = []

    def track(self, patches: PatchSet) -> PatchSet:
        """Undo ``patches`` when the job closes (newest first)."""
        if self.closed:
            patches.restore()
        else:
            self._patches.append(patches)
        return patches

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when the job closes (after its patches are undone)."""
        self._on_close.append(fn)

    def note(self, message: str) -> bool:
        """Remember ``message`` for the infotext once; False when it was already there."""
        if message in self.notes:
            return False
        self.notes.append(message)
        return True

    def say(self, message: str) -> None:
        """Tell the user ``message`` once, through the script's reporter when it set one."""
        if self.reporter is not None:
            self.reporter(message)
        elif self.note(message):
            print(f"[Tile Sampler] {message}")

    def count(self, evaluations: int = 1, stage: Optional[str] = None,
              now: Optional[float] = None) -> None:
        """Count denoiser evaluations of the current (or the given) stage, and time them:
        the interval from the previous evaluation of the same sampler run is the duration
        of that one (the gaps between runs, decoding and upscaling are not counted)."""
        name = stage or self.stage
        counts = self.stages.setdefault(name, StageCount())
        counts.evaluations += evaluations
        now = time.perf_counter() if now is None else now
        if self._last_call is not None and self._last_call[0] == name:
            counts.seconds += now - self._last_call[1]
            counts.timed += 1
        self._last_call = (name, now)

    def count_run(self, stage: Optional[str] = None) -> None:
        """A sampler run of the stage starts."""
        self.stages.setdefault(stage or self.stage, StageCount()).runs += 1
        self.new_run()

    def new_run(self) -> None:
        """A sampler run starts: the next evaluation is not timed from the last one."""
        self._last_call = None

    def set_work(self, work_per_evaluation: float, stage: Optional[str] = None,
                 model: Optional[str] = None) -> None:
        """The work units of one evaluation of the current (or the given) stage, and the
        model that runs it when that is not the job's ``model`` (a tool's refiner)."""
        counts = self.stages.setdefault(stage or self.stage, StageCount())
        counts.work_per_evaluation = float(work_per_evaluation)
        if model is not None:
            counts.model = model

    def measured(self) -> tuple[float, float]:
        """``(seconds, work units)`` of the timed evaluations of stages of known work."""
        seconds = work = 0.0
        for s in self.stages.values():
            if s.timed and s.work_per_evaluation > 0:
                seconds += s.seconds
                work += s.timed * s.work_per_evaluation
        return seconds, work

    def measured_by_model(self) -> dict[Optional[str], tuple[float, float]]:
        """``measured()`` per model: a stage counts for its own model, else the job's."""
        out: dict[Optional[str], tuple[float, float]] = {}
        for s in self.stages.values():
            if s.timed and s.work_per_evaluation > 0:
                seconds, work = out.get(s.model or self.model, (0.0, 0.0))
                out[s.model or self.model] = (seconds + s.seconds, work + s.timed * s.work_per_evaluation)
        return out

    def close(self) -> None:
        """Undo every patch of the job and run its close callbacks; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.ended = time.perf_counter()
        errors = []
        for patches in reversed(self._patches):
            try:
                patches.restore()
            except Exception as e:  # keep restoring the rest
                errors.append(e)
        self._patches.clear()
        for fn in self._on_close:
            try:
                fn()
            except Exception as e:
                errors.append(e)
        self._on_close.clear()
        if errors:
            raise errors[0]

    def summary(self) -> dict:
        """What ran, for the console and the API: evaluations and runs per stage."""
        return {"label": self.label, "closed": self.closed,
                "seconds": round((self.ended or time.perf_counter()) - self.started, 3),
                "stages": {name: {"runs": s.runs, "evaluations": s.evaluations,
                                  "seconds": round(s.seconds, 3), "timed": s.timed,
                                  "work_per_evaluation": s.work_per_evaluation}
                           for name, s in self.stages.items()},
                "notes": list(self.notes), **self.facts}


@dataclass
class JobStack:
    """The jobs in progress, outermost first."""

    jobs: list[Job] = field(default_factory=list)
    last_closed: Optional[Job] = None
    on_empty: list[Callable[[], None]] = field(default_factory=list)

    def open(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def current(self) -> Optional[Job]:
        """The innermost open job (the one sampling now), or None."""
        return self.jobs[-1] if self.jobs else None

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self.jobs))

    def __len__(self) -> int:
        return len(self.jobs)

    def close(self, job: Job) -> None:
        """Close ``job`` and every job opened after it; a job not in the stack is closed
        on its own."""
        if job not in self.jobs:
            job.close()
            return
        index = self.jobs.index(job)
        doomed = self.jobs[index:]
        del self.jobs[index:]
        self._close_all(doomed)

    def close_all(self) -> None:
        doomed, self.jobs = self.jobs, []
        self._close_all(doomed)

    def close_stale(self, key: Any) -> int:
        """Close the jobs of top-level generations other than ``key``; how many."""
        stale = [j for j in self.jobs if j.key != key]
        self.jobs = [j for j in self.jobs if j.key == key]
        self._close_all(stale)
        return len(stale)

    def _close_all(self, doomed: list[Job]) -> None:
        errors = []
        for j in reversed(doomed):
            try:
                j.close()
            except Exception as e:
                errors.append(e)
        if doomed:
            self.last_closed = doomed[0]
        if not self.jobs:
            for fn in list(self.on_empty):
                fn()
        if errors:
            raise errors[0]


TOOL_ATTR = "_tilesampler_tool"
"""Set on a processing object that a Script tool of ours runs (its name): the always-on
script then leaves its latent tile resample off there (the tool tiles the job itself)."""

JOBS = JobStack()
"""The open jobs of this WebUI process (shared by the extension's scripts)."""
