"""Grid progress with an ETA, through logging (so it lands in logs and never spams a redirected file)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("dpbench")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class GridProgress:
    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.monotonic()

    def finished(self, run_id: str, status: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        log.info("grid: %d/%d runs done (%s: %s), elapsed %s, ETA %s", self.done, self.total, run_id, status,
                 _duration(elapsed), _duration(eta) if self.done < self.total else "—")
