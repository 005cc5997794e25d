"""The workers' health for the server: `sshexec check` of the inventory, cached, with its age.

A check connects to every worker, so pages and API clients share one cached
report; a refresh runs a new check (one at a time: a refresh asked while one
runs waits for it and shares its result).

In a cluster, the node holding the maintenance lease checks the workers every
`serve --check-every` and stores the report in the database (`settings`,
"workers_health"): every node then answers with the newest report, its own or
that one, so the workers are checked once per cluster rather than once per node.
"""

from __future__ import annotations

import threading
import time

from ..views import HealthReport

SHARED = "workers_health"  # the settings row of the maintenance node's last check


class HealthCache:
    def __init__(self, inventory: str | None, parallel: int, db=None):
        self.inventory = inventory
        self.parallel = parallel
        self.db = db  # the cluster's database: the maintenance node's report is shared there
        self._report: HealthReport | None = None
        self._lock = threading.Lock()

    def share(self) -> HealthReport:
        """Check now and store the report for every node (the maintenance node, on its schedule)."""
        from ..store.cluster import put_setting

        report = self.report(refresh=True)
        put_setting(self.db, SHARED, report.model_dump(mode="json"))
        return report

    def _shared(self) -> None:
        """Take the cluster's stored report if it is newer than this node's."""
        from ..errors import SshexecError
        from ..store.cluster import get_setting

        try:
            data = get_setting(self.db, SHARED)
        except SshexecError:
            return
        if data and (self._report is None or (data.get("checked_at") or 0) > (self._report.checked_at or 0)):
            self._report = HealthReport(**data)

    def report(self, *, refresh: bool = False) -> HealthReport:
        """The last check (run now if there is none, or if `refresh`), with its age."""
        asked = time.time()
        with self._lock:
            if self.db is not None and not refresh:
                self._shared()
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
