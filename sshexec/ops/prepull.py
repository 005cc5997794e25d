"""`sshexec prepull`: pull an image on every worker of a pool, in parallel, so first runs are fast.

Each worker's pull is a small run of its own, `prepull-<hex>`: the registry
credentials (a DOCKER_CONFIG) live in work_root/runs/prepull-<hex>/<worker>/, which the
pull scriptlet removes when it ends, prepull sweeps again on every exit path,
and anything that sweeps dead runs' directories (a later run's sweep, gc) finds.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..config.inventory import Feed, Worker
from ..core.fanout import fan_out
from ..core.secrets import Masker, Secret, masked_logs
from ..errors import SshexecError, WorkerError
from ..ssh import Connection
from ..worker.docker import SWEEP, run_part
from ..worker.locks import beating
from ..worker.pull import PullProgress, pull_image

log = logging.getLogger("sshexec")


@dataclass(frozen=True)
class PrepullResult:
    worker: str
    ok: bool
    duration: float
    image_id: str | None = None
    error: SshexecError | None = None

    def to_dict(self) -> dict:
        return {
            "worker": self.worker,
            "ok": self.ok,
            "duration": round(self.duration, 3),
            "image_id": self.image_id,
            "error": self.error.to_dict() if self.error else None,
        }


def prepull(
    workers: list[Worker],
    image: str,
    *,
    feed: Feed | None = None,
    parallel: int = 16,
    on_progress: Callable[[str, PullProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[PrepullResult]:
    """Pull `image` on every worker; one result per worker, failures included."""
    pw = feed.password() if feed is not None else None
    password = Secret(pw) if pw is not None else None

    def one(w: Worker) -> PrepullResult:
        t0 = time.monotonic()
        run_id = f"prepull-{secrets.token_hex(6)}"
        try:
            with Connection(w, cancel=cancel) as conn, beating(conn, run_id):  # gc leaves a live prepull alone
                try:
                    info = pull_image(
                        conn, image, feed, password,
                        cfg_dir=f"{run_part(run_id, w.name)}/docker-config",
                        on_pull=(lambda p: on_progress(w.name, p)) if on_progress else None,
                        cancel=cancel,
                    )  # fmt: skip
                finally:
                    _sweep(conn, w, run_id)
            return PrepullResult(w.name, True, time.monotonic() - t0, info.id)
        except SshexecError as exc:
            return PrepullResult(w.name, False, time.monotonic() - t0, error=exc)

    with masked_logs(Masker([password.reveal()] if password else [])):
        results = fan_out(workers, one, parallel=parallel, cancel=cancel, grace=10)
    out = []
    for name, r in results.items():
        if isinstance(r, PrepullResult):
            out.append(r)
        else:
            err = r if isinstance(r, SshexecError) else WorkerError(name, f"unexpected error: {r}")
            out.append(PrepullResult(name, False, 0.0, error=err))
    return out


def _sweep(conn: Connection, w: Worker, run_id: str) -> None:
    """Remove the prepull's run directory (credentials included); a failure is only worth a warning."""
    try:
        res = conn.run(SWEEP.command(w.docker, w.work_root, run_id, w.name, ""), timeout=60)
        if not res.ok:
            log.warning("%s: could not remove %s/%s: %s", w.name, w.work_root, run_part(run_id, w.name), res.tail(3))
    except Exception as exc:  # noqa: BLE001 - the pull's own result matters more
        log.warning("%s: could not remove %s/%s: %s", w.name, w.work_root, run_part(run_id, w.name), exc)
