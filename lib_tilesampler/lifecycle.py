"""Job lifecycle helpers that do not depend on a host: make cleanup run however a job ends."""
from __future__ import annotations

from typing import Any, Callable


def restore_on_close(job: Any, restore: Callable[[], None]) -> None:
    """Make ``job.close()`` call ``restore()`` first.

    Both WebUIs run every UI and API job inside ``contextlib.closing(p)``, so ``close``
    runs on success, on an exception anywhere in the job and after an interrupt. Wrapping
    it twice is harmless (only the first wrap is kept).
    """
    if getattr(job, "_tilesampler_close_wrapped", False):
        return
    original = job.close

    def close() -> Any:
        try:
            restore()
        finally:
            return original()

    job.close = close
    job._tilesampler_close_wrapped = True
