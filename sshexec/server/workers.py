"""The workers' health for the server: `sshexec check` of the inventory, cached, with its age.

A check connects to every worker, so pages and API clients share one cached
report; a refresh runs a new check (one at a time: a refresh asked while one
runs waits for it and shares its result).
"""

from __future__ import annotations

import threading
import time

from ..views import HealthReport


class HealthCache:
    def __init__(self, inventory: str | None, parallel: int):
        self.inventory = inventory
        self.parallel = parallel
        self._report: HealthReport | None = None
        self._lock = threading.Lock()

    def report(self, *, refresh: bool = False) -> HealthReport:
        """The last check (run now if there is none, or if `refresh`), with its age."""
        asked = time.time()
        with self._lock:
            stale = self._report is None or (refresh and (self._report.checked_at or 0) < asked)
            if stale:
                self._report = self._check()
            report = self._report
        return report.model_copy(update={"age": round(max(0.0, time.time() - (report.checked_at or 0)), 3)})

    def cached(self) -> HealthReport | None:
        """The last check, if there was one; never runs one (the metrics read this)."""
        return self._report

    def _check(self) -> HealthReport:
        from ..config.inventory import load_inventory
        from ..core.fanout import fan_out
        from ..ops.check import check_worker

        workers = load_inventory(self.inventory).select()
        checked = time.time()
        results = fan_out(workers, check_worker, parallel=self.parallel)
        healths = []
        for h in results.values():
            if isinstance(h, BaseException):
                raise h  # check_worker reports worker problems in its result: this is a bug
            healths.append(h)
        return HealthReport(healthy=all(h.healthy for h in healths), workers=healths, checked_at=checked)
