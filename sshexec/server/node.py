"""One `sshexec serve` node of a cluster: it checks in, claims queued runs up to its task cap, watches
its runs, finds lost nodes, fires schedules and, while it holds the lease, does the cluster's maintenance.

One thread, one loop, every POLL seconds:

- its runs as the database has them (store/cluster.py watch): a cancel asked through another node,
  or a run another node found interrupted, is cancelled here within POLL (+ the step's stop);
- fencing: without the database for `stale / 2` seconds, it cancels its own runs, since survivors
  will mark them interrupted at `stale` (and its late writes are refused by the claim's epoch);
- every `checkin` seconds: check in (drain asked?), mark silent nodes lost, fire due schedule ticks,
  and take or renew the "maintenance" lease; its holder applies the `retention` setting;
- claim queued runs, FIFO, up to `task_cap` running at once, unless draining.

With SQLite there is one node, and the same loop serves as today.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from .. import __version__
from ..errors import DatabaseError, InputError, SshexecError
from ..store import cluster, queue, schedules
from ..store.audit import AuditLog

log = logging.getLogger("sshexec")

POLL = 0.5  # seconds: a cancel through another node ends the run within this plus the step's stop
MAINTENANCE = "maintenance"
RETENTION_EVERY = 3600.0  # seconds between two retention prunes by the maintenance node


class Node:
    def __init__(
        self, runs, db, *, name: str | None = None, task_cap: int = 5, stale: float = 30.0, checkin: float | None = None,
        url: str | None = None, retention_every: float = RETENTION_EVERY, health=None, health_every: float = 0.0,
    ):  # fmt: skip
        self.runs = runs  # ServerRuns: starts a claimed run, holds the active ones
        self.db = db
        self.name = name or socket.gethostname()
        self.task_cap = task_cap
        self.stale = stale
        self.checkin = checkin or max(0.5, min(5.0, stale / 6))
        self.url = url
        self.retention_every = retention_every
        self.checks = health  # server/workers.py HealthCache: checked once per cluster, by the maintenance node
        self.health_every = health_every  # seconds; 0: no scheduled check
        self._last_health = 0.0
        self.draining_self = False  # SIGTERM: drain, then stop
        self.draining = False
        self.maintainer = False
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()
        self._last_checkin = 0.0
        self._last_prune = 0.0
        self._fenced_at: float | None = None
        self._db_down_said = False

    # -- life ----------------------------------------------------------------------------

    def start(self) -> "Node":
        holder = cluster.live_holder(self.db, self.name, self.stale)
        if holder is not None and (holder.host, holder.pid) != (socket.gethostname(), os.getpid()):
            raise InputError(
                f"node {self.name!r} is checked in already, from {holder.host} (pid {holder.pid}), {time.time() - holder.last_seen:.0f} s ago",
                field="--node", hint="give this server another --node NAME, or stop that one first",
            )  # fmt: skip
        cluster.register(self.db, self.name, host=socket.gethostname(), pid=os.getpid(), url=self.url, task_cap=self.task_cap, version=__version__)
        self._thread = threading.Thread(target=self._loop, name=f"node-{self.name}", daemon=True)
        self._thread.start()
        log.info("node %s: up, task cap %d, node_stale %.0f s", self.name, self.task_cap, self.stale)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            cluster.stopped(self.db, self.name)
            if self.maintainer:
                cluster.release_lease(self.db, MAINTENANCE, self.name)
        except SshexecError as exc:
            log.warning("node %s: could not record its stop: %s", self.name, exc.message)

    def drain_self(self) -> None:
        """Claim no more runs, answer the health check 503, and say so in the database."""
        self.draining_self = True
        self.draining = True
        self.wake.set()

    def health(self) -> tuple[bool, str]:
        """(200 or not, why): a draining node, or one without its database, takes no traffic."""
        if self.draining:
            return False, "draining"
        if time.monotonic() - self._last_ok > self.stale / 2:
            return False, "no database"
        return True, "up"

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
                self._last_ok = time.monotonic()
                if self._db_down_said:
                    log.warning("node %s: the database answers again", self.name)
                    self._db_down_said = False
            except DatabaseError as exc:
                if not self._db_down_said:
                    log.warning("node %s: %s", self.name, exc.message)
                    self._db_down_said = True
            except Exception:  # noqa: BLE001 - the loop is the node's life: log, go on
                log.exception("node %s: unexpected error in its loop", self.name)
            self._fence()
            self.wake.wait(POLL)
            self.wake.clear()

    def _fence(self) -> None:
        """Without the database for stale/2 seconds: cancel this node's runs (survivors will call them interrupted)."""
        silent = time.monotonic() - self._last_ok
        if silent <= self.stale / 2:
            self._fenced_at = None
            return
        if self._fenced_at is None:
            self._fenced_at = time.monotonic()
            active = self.runs.active_ids()
            if active:
                log.warning("node %s: no database for %.0f s: cancelling its runs %s (fencing)", self.name, silent, ", ".join(active))
            for run_id in active:
                self.runs.cancel_here(run_id, f"node {self.name}, which lost its database for {silent:.0f} s (fencing)")

    def _round(self) -> None:
        self._watch()
        now = time.monotonic()
        if now - self._last_checkin >= self.checkin or self.draining_self != self.draining:
            self._check_in()
            self._last_checkin = now
        if self.draining or self._stop.is_set():
            return
        free = self.task_cap - len(self.runs.active_ids())
        if free > 0 and queue.waiting(self.db):
            for claim in queue.claim(self.db, self.name, free):
                self.runs.start_claimed(claim)

    def _watch(self) -> None:
        active = self.runs.active_ids()
        for run_id, (status, epoch, asked) in cluster.watch(self.db, self.name, active).items():
            if status not in ("running", "queued", "waiting"):  # waiting: for an approval, still this node's run
                self.runs.cancel_here(run_id, f"node {self.name}: the run is {status} in the history (another node found this one lost)", fenced=True)
            elif asked:
                self.runs.cancel_here(run_id, asked)

    def _check_in(self) -> None:
        # A node that was stopped (SIGSTOP) past node_stale comes back here: the silence is measured
        # before it says it is alive again, so its runs are fenced first.
        if time.monotonic() - self._last_ok > self.stale / 2:
            self._fence()
        asked, was_lost = cluster.check_in(self.db, self.name, draining_self=self.draining_self)
        if was_lost and cluster.node(self.db, self.name) is None:  # its row is gone (a database restored from before it)
            cluster.register(self.db, self.name, host=socket.gethostname(), pid=os.getpid(), url=self.url, task_cap=self.task_cap, version=__version__)
        if was_lost:
            log.warning("node %s: other nodes had found it lost; its runs of then stay interrupted", self.name)
            self._watch()
        self.draining = asked
        audit = AuditLog(self.db)
        for run in cluster.sweep_lost(self.db, self.stale, by=self.name, requeue_of=self.runs.requeue_on_loss):
            log.warning("node %s: run %s of lost node %s interrupted%s", self.name, run.run_id, run.node, f", requeued as {run.requeued_as}" if run.requeued_as else "")
            if run.requeued_as:
                detail = {"retry_of": run.run_id, "lost_node": run.node, "why": "waiting for approval" if run.waiting else "on_node_loss: requeue"}
                audit.try_record("run.trigger", who=f"node:{self.name}", source=f"node {self.name}", target=run.requeued_as, detail=detail)
        for name, tick, run_id in schedules.fire_due(self.db, self.name):
            log.info("node %s: schedule %s fired its tick %s: run %s", self.name, name, time.strftime("%H:%M:%S", time.gmtime(tick)), run_id)
            audit.try_record("run.trigger", who=f"schedule:{name}", source=f"node {self.name}", target=run_id, detail={"schedule": name, "tick": tick})
            self.wake.set()
        was = self.maintainer
        self.maintainer = cluster.hold_lease(self.db, MAINTENANCE, self.name, self.stale)
        if self.maintainer and not was:
            log.info("node %s: holds the cluster's maintenance", self.name)
        if self.maintainer:
            self._maintenance()

    def _maintenance(self) -> None:
        """Once per cluster, by the lease's holder: the workers' health check, and the `retention` setting's prune."""
        from ..store.prune import prune

        if self.checks is not None and self.health_every > 0 and time.monotonic() - self._last_health >= self.health_every:
            self._last_health = time.monotonic()
            threading.Thread(target=self._check_workers, name="health", daemon=True).start()  # connects to every worker: off the loop
        setting = cluster.get_setting(self.db, "retention")
        if not setting or time.monotonic() - self._last_prune < float(setting.get("every", self.retention_every)):
            return
        self._last_prune = time.monotonic()
        done = prune(self.runs.history, older_than=float(setting["older_than"]), keep=int(setting.get("keep", 0)))
        if done.runs:
            log.info("node %s: retention pruned %d runs (%d log bytes, %d artifacts)", self.name, len(done.runs), done.log_bytes, done.artifacts)

    def _check_workers(self) -> None:
        try:
            report = self.checks.share()
            log.info("node %s: workers checked for the cluster: %d of %d healthy", self.name, sum(w.healthy for w in report.workers), len(report.workers))
        except Exception as exc:  # noqa: BLE001 - a scheduled check must not end the node
            log.warning("node %s: the scheduled check of the workers failed: %s", self.name, exc)
