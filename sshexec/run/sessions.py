"""The run's sessions: one `WorkerSession` per worker the run touches, made, connected ahead, swept and closed here.

Everything else of the run (dispatch, coordination) asks this object for a
worker's session; nothing else makes one.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

from ..config.inventory import Worker
from ..core.fanout import DEFAULT_PARALLEL, fan_out
from ..core.secrets import Masker
from ..worker.session import WorkerSession

Event = Callable[[str, str, object], None]

SWEEP_GRACE = 20.0  # seconds a cancelled fan-out waits for its workers to clean up


class Sessions:
    """The sessions of run `run_id`. Thread-safe."""

    def __init__(
        self, run_id: str, *, retries: int | None = None, cancel: threading.Event | None = None, on_event: Event | None = None,
        parallel: int = DEFAULT_PARALLEL,
    ):  # fmt: skip
        self.run_id = run_id
        self.retries = retries
        self.cancel = cancel or threading.Event()
        self.on_event: Event = on_event or (lambda kind, worker, data: None)
        self.parallel = parallel
        self._sessions: dict[str, WorkerSession] = {}
        self._lock = threading.Lock()

    def get(self, worker: Worker) -> WorkerSession:
        """The run's session to `worker`, made on first use (nothing is contacted until it opens)."""
        with self._lock:
            s = self._sessions.get(worker.name)
            if s is None:
                on_retry = lambda n, exc: self.on_event("retry", worker.name, (n, exc))  # noqa: E731
                s = WorkerSession(worker, self.run_id, retries=self.retries, on_retry=on_retry, cancel=self.cancel)
                self._sessions[worker.name] = s
            return s

    def all(self) -> list[WorkerSession]:
        with self._lock:
            return list(self._sessions.values())

    def is_connected(self, name: str) -> bool:
        """The run already talks to this worker (a `target: any` step prefers such a one)."""
        with self._lock:
            s = self._sessions.get(name)
        return s is not None and s.is_open

    def connect_ahead(self, workers: Iterable[Worker]) -> None:
        """Connect now, each in a thread of its own, so that a step does not wait for the handshake later."""
        for w in workers:
            threading.Thread(target=self.get(w).connect_ahead, name=f"sshexec-connect-{w.name}", daemon=True).start()

    def sweep(self, masker: Masker, *, forced: bool = False) -> list[str]:
        """Remove what this run left on workers where something did not end cleanly; the workers where something stays.

        `forced` (a second cancel): stop waiting for the sweeps after SWEEP_GRACE seconds.
        """
        dirty = [s for s in self.all() if s.dirty]
        if not dirty:
            return []
        by_name = {s.name: s for s in dirty}
        res = fan_out([s.worker for s in dirty], lambda w: by_name[w.name].sweep(), parallel=self.parallel, grace=SWEEP_GRACE, cancel=self.cancel if forced else None)
        left = []
        for name, r in res.items():
            if r is not True:
                left.append(name)
                self.on_event("leftover", name, masker.mask_text(str(r)))
        return left

    def close(self) -> None:
        for s in self.all():
            s.close()
