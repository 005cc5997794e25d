"""Sending notifications: the JSON POSTs of store/notify.py's deliveries, signed, tried again with backoff.

    Notifier(db).start()      a thread that sends what is due, every POLL seconds (sshexec serve)
    Notifier(db).send_due()   one pass, now (sshexec run, for its own run's deliveries, once)

Each POST carries the body exactly as stored, with

    Content-Type: application/json
    X-Sshexec-Event: run.failed
    X-Sshexec-Delivery: 42                     (the same on every try: a receiver may de-duplicate on it)
    X-Sshexec-Signature: sha256=HEX            HMAC-SHA256 of the body's bytes with the endpoint's secret

A receiver checks the signature with hmac.compare_digest over the raw body. A
2xx answer delivers; anything else (another status, a refused connection, no
answer within TIMEOUT) is recorded and tried again after the endpoint's
backoff, doubled each time, up to its attempts; then the delivery is failed.
Sends run on threads of their own: a receiver that hangs holds one of them
for TIMEOUT, never a run, and never the other receivers for longer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ..store.notify import Due, NotifyStore

log = logging.getLogger("sshexec")

TIMEOUT = 10.0  # seconds a receiver has to answer one try
POLL = 0.5
SENDERS = 4  # deliveries sent at once


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(due: Due, *, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
    """One try: (HTTP status, None), or (None, what went wrong). Never raises for the receiver's faults."""
    body = due.body.encode()
    request = urllib.request.Request(due.endpoint.url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "sshexec-notify",
        "X-Sshexec-Event": due.event, "X-Sshexec-Delivery": str(due.id),
        "X-Sshexec-Signature": signature(due.endpoint.secret.reveal(), body),
    })  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the scheme was checked when the endpoint was saved
            return answer.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


class Notifier:
    """Sends due deliveries from the database, on SENDERS threads."""

    def __init__(self, db, *, timeout: float = TIMEOUT, poll: float = POLL):
        self.store = NotifyStore(db)
        self.timeout = timeout
        self.poll = poll
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="notify")
        self._busy = threading.Semaphore(SENDERS)
        self._thread: threading.Thread | None = None

    def send(self, due: Due) -> str:
        t0 = time.monotonic()
        status, error = post(due, timeout=self.timeout)
        state = self.store.tried(due, status_code=status, error=error, duration=time.monotonic() - t0)
        if state == "failed":
            log.warning("notification %s of %s to %s failed after %d tries: %s", due.id, due.event, due.endpoint.name, due.attempt, error or f"HTTP {status}")
        return state

    def _send_released(self, due: Due) -> None:
        try:
            self.send(due)
        except Exception:  # noqa: BLE001 - a sender thread has nobody else to tell; the lease lets it be tried again
            log.exception("notification %s: sending failed", due.id)
        finally:
            self._busy.release()

    def send_due(self, *, run_id: str | None = None, wait: bool = True) -> int:
        """Claim what is due (of `run_id` only, if given) and send it; with `wait`, until those tries are done. How many."""
        free = 0
        while self._busy.acquire(blocking=False):
            free += 1
        if not free:
            return 0
        try:
            claimed = self.store.claim(limit=free, run_id=run_id)
        except Exception:
            for _ in range(free):
                self._busy.release()
            raise
        for _ in range(free - len(claimed)):
            self._busy.release()
        futures = [self._pool.submit(self._send_released, d) for d in claimed]
        if wait:
            for f in futures:
                f.result()
        return len(claimed)

    def start(self) -> "Notifier":
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.send_due(wait=False)
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while: try again at the next poll
                log.warning("notifications: %s", getattr(exc, "message", exc))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop claiming; tries under way finish on their own threads (bounded by TIMEOUT) or are claimed again later."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
