"""A run's part in the coordination between operators: its heartbeat, its locks, and giving them back.

The Runner (runner.py) holds one `RunCoordination` and calls it at three points:
`start()` before the first step (the heartbeat thread, and the runbook's
`lock:` on every worker the run may touch), `around_step()` (a step's own
`lock:` on the step's workers while it runs), and `finish()` on every exit
path (every lock and heartbeat of the run given back where one may be).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ..config.inventory import Worker
from ..config.runbook import Step
from ..core.fanout import fan_out
from ..core.status import CANCELLED, ERROR
from ..errors import Cancelled, SshexecError, WorkerError
from ..step.result import StepResult
from ..worker.coord import Owner, age
from ..worker.heartbeat import Heartbeat, Target
from ..worker.locks import Acquired, acquire
from .result import StepRun
from .sessions import Sessions

log = logging.getLogger("sshexec")

Event = Callable[[str, str, object], None]


class RunCoordination:
    """Locks and heartbeats of one run, on the workers of its `sessions`."""

    def __init__(
        self,
        run_id: str,
        *,
        sessions: Sessions,
        lock_wait: float = 0.0,
        cancel: threading.Event | None = None,
        on_event: Event | None = None,
        parallel: int = 16,
    ):
        if lock_wait < 0:
            raise ValueError("lock_wait must be >= 0")
        self.run_id = run_id
        self.owner = Owner.here()
        self.sessions = sessions
        self.lock_wait, self.cancel, self.parallel = lock_wait, cancel or threading.Event(), parallel
        self.on_event: Event = on_event or (lambda kind, worker, data: None)
        self.held: dict[str, Acquired] = {}
        self._lock = threading.Lock()
        self.heartbeat: Heartbeat | None = None

    # -- the run's hooks ---------------------------------------------------------------

    def start(self, lock: str | None, workers: list[Worker]) -> list[StepResult]:
        """Start the heartbeat; take the runbook's lock. [] when the run may go on, else why not."""
        workers = list({w.name: w for w in workers}.values())
        stale = min((w.lock_stale for w in workers), default=60.0)
        self.heartbeat = Heartbeat(self.run_id, self.owner, self._targets, stale / 3, on_lost=self._lost).start()
        if lock is None:
            return []
        return self._take_or_result(lock, workers, "(runbook)")

    def around_step(self, step: Step, workers: list[Worker], run: Callable[[], StepRun]) -> StepRun:
        """Run the step holding its own lock on its workers (unless the run holds that lock already).

        When the lock cannot be taken, the step does not run: its result says why.
        """
        if step.lock is None or step.lock in self.held:
            return run()
        blocked = self._take_or_result(step.lock, workers, step.name)
        if blocked:
            return StepRun(blocked)
        try:
            return run()
        finally:
            self._give(step.lock)

    def finish(self, *, hard: bool = False) -> None:
        """Stop the heartbeat; give back every lock and heartbeat of the run (not after a forced quit)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        with self._lock:
            holders = {w.name for got in self.held.values() for w in got.nodes.values()}
            self.held.clear()
        if hard:
            return  # a second Ctrl-C: the heartbeat goes stale, and the locks with it
        todo = [s for s in self.sessions.all() if s.beat_left or s.name in holders]
        if not todo:
            return
        res = fan_out(todo, lambda s: s.give_back(everything=True), parallel=self.parallel, grace=10)
        for name, r in res.items():
            if isinstance(r, BaseException):
                log.warning("%s: could not give back the locks and heartbeat of run %s (%s); they go stale", name, self.run_id, getattr(r, "message", r))

    # -- taking and giving back ----------------------------------------------------------

    def take(self, lock: str, workers: list[Worker]) -> None:
        """Take `lock` on every worker (all or none, waiting up to lock_wait). LockBusy, WorkerError, Cancelled."""

        def one(w: Worker):
            return self.sessions.get(w).take_locks(self.owner, [lock])

        def back(ws: list[Worker]) -> None:
            fan_out(ws, lambda w: self.sessions.get(w).give_back([lock]), parallel=self.parallel)

        def waiting(w: Worker, holding) -> None:
            self.on_event("lock-wait", w.name, f"waiting for lock {lock} on {w.name}, held by {holding.describe()}")

        try:
            got = acquire(lock, workers, one, back, wait=self.lock_wait, cancel=self.cancel, on_wait=waiting, parallel=self.parallel)
        finally:
            self.on_event("lock-done", "", lock)
        for w, h in got.took_over:
            why = f"its heartbeat was {age(h.now - h.beat.since)} old (lock_stale {h.beat.stale}s)" if h.beat and h.beat.since is not None else "its heartbeat was gone"
            log.warning("%s: took over lock %s from %s: %s", w.name, lock, h.owner.describe(h.now) if h.owner else "nobody (an empty lock)", why)
        with self._lock:
            self.held[lock] = got

    def _give(self, lock: str) -> None:
        with self._lock:
            got = self.held.pop(lock, None)
        if got is None:
            return
        res = fan_out(list(got.nodes.values()), lambda w: self.sessions.get(w).give_back([lock]), parallel=self.parallel)
        for name, r in res.items():
            if isinstance(r, BaseException):
                log.warning("%s: could not give back lock %s (%s); it is given back when the run ends", name, lock, getattr(r, "message", r))

    def _take_or_result(self, lock: str, workers: list[Worker], step: str) -> list[StepResult]:
        try:
            self.take(lock, workers)
            return []
        except Cancelled:
            return [StepResult(step, "-", CANCELLED, None, 0.0, f"cancelled while waiting for lock {lock}")]
        except SshexecError as exc:
            worker = exc.worker if isinstance(exc, WorkerError) else "-"
            # The runbook's lock comes before any step: the run never started, and says so.
            said = f"the run did not start: {exc.message}" if step == "(runbook)" else exc.message
            return [StepResult(step, worker, ERROR, None, 0.0, said, error=exc)]

    def _lost(self, worker: str, lock: str) -> None:
        """Someone took `lock` on `worker` away from this run (warned already): stop claiming it there."""
        with self._lock:
            got = self.held.get(lock)
            if got is not None:
                for node, w in list(got.nodes.items()):
                    if w.name == worker:
                        del got.nodes[node]

    def _targets(self) -> list[Target]:
        """Where the heartbeat thread refreshes: sessions with a heartbeat, with the locks held through them."""
        with self._lock:
            held = [(lock, w.name) for lock, got in self.held.items() for w in got.nodes.values()]
        out = []
        for s in self.sessions.all():
            names = tuple(lock for lock, name in held if name == s.name)
            if names or s.beat_left:
                out.append((s.conn, names))
        return out
