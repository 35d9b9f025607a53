"""How fast this machine samples with each model: seconds per unit of work (one U-Net
evaluation of one 512 x 512 image, see ``preview``), from the model's recent jobs, kept
in memory only (a restart forgets it)."""
from __future__ import annotations

from collections import deque
from typing import Any, Optional


class SpeedBook:
    """The last ``keep`` measurements ``(seconds, work units)`` of each model."""

    def __init__(self, keep: int = 5) -> None:
        self.keep = keep
        self._samples: dict[str, deque] = {}

    def record(self, model: Optional[str], seconds: float, work: float) -> None:
        """Remember that ``work`` units took ``seconds`` with ``model``; measurements of
        no work or no time (nothing ran long enough to be timed) are ignored."""
        if not model or work <= 0 or seconds <= 0:
            return
        self._samples.setdefault(model, deque(maxlen=self.keep)).append((seconds, work))

    def record_job(self, job: Any) -> None:
        """Record what a closed ``job.Job`` timed, for each model it ran."""
        for model, (seconds, work) in job.measured_by_model().items():
            self.record(model, seconds, work)

    def seconds_per_unit(self, model: Optional[str]) -> Optional[float]:
        """The model's seconds per work unit over its recent jobs, or None when unknown."""
        samples = self._samples.get(model or "")
        if not samples:
            return None
        return sum(s for s, _ in samples) / sum(w for _, w in samples)

    def forget(self) -> None:
        self._samples.clear()


SPEED = SpeedBook()
"""The measurements of this WebUI process."""
