"""One worker during one run: its connection, what is known about it, and the remote verbs."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..config.inventory import Feed, Worker
from ..core.secrets import Secret
from ..errors import ConnectError
from ..executor import executor_hash
from ..ssh import Connection
from .bundle import executor_tar, write_bundle
from .docker import (
    CLEAN_STEP,
    STAGE,
    STOP,
    SWEEP,
    UPLOAD_EXECUTOR,
    ImageInfo,
    WorkerFacts,
    run_part,
)
from .docker_errors import stage_error
from .pull import pull_image

log = logging.getLogger("sshexec")



class WorkerSession:
    """Per-run state of one worker. Thread-safe for the calls the run makes."""

    def __init__(self, worker: Worker, run_id: str, *, retries: int | None = None, on_retry: Callable | None = None, cancel: threading.Event | None = None):
        self.worker = worker
        self.run_id = run_id
        self.conn = Connection(worker, retries=retries, cancel=cancel)
        self.conn.on_retry = on_retry
        self.facts: WorkerFacts | None = None  # learnt from the first GO
        self.executor_ok = False
        self.images: dict[str, ImageInfo] = {}
        self.pulled: set[str] = set()
        self.dirty = False  # something of this run may be left on the worker
        self.beat_left = False  # the run's heartbeat may be on the worker (coord.py; runcoord.py gives it back)
        self.last_image: str | None = None
        self._early_error: BaseException | None = None  # connect_ahead's, for the first open() to raise
        self._lock = threading.RLock()

    @property
    def name(self) -> str:
        return self.worker.name

    def open(self) -> None:
        with self._lock:
            # A failed connect_ahead is this open's failure: its attempts (and retry warnings) count.
            early, self._early_error = self._early_error, None
            if early is not None and not self.conn.is_open:
                raise early
            self.conn.open()

    def connect_ahead(self) -> None:
        """Open the connection before a step needs it (in a thread of its own); never raises.

        The step's open() waits for it (the lock), then raises what it met, once.
        """
        with self._lock:
            try:
                self.conn.open()
            except BaseException as exc:  # noqa: BLE001 - handed to the step's open()
                self._early_error = exc

    def close(self) -> None:
        self.conn.close()

    # -- the step's directory ---------------------------------------------------

    def step_dir(self, step: str) -> str:
        """The step's directory on the worker (docker.py draws the layout); known once GO reported the root."""
        assert self.facts is not None
        return f"{self.facts.root}/{run_part(self.run_id, self.name)}/{step}"

    def stage_bundle(self, step: str, *, script: bytes, files, on_bytes: Callable[[int], None] | None = None) -> int:
        """Stream a big bundle into a fresh step directory (GO then runs it with size "staged")."""
        w = self.worker
        sent = [0]

        def writer(send):
            def counted(data: bytes) -> None:
                send(data)
                sent[0] += len(data)
                if on_bytes:
                    on_bytes(sent[0])

            write_bundle(counted, script=script, files=files)

        self.dirty = True
        # Generous, but bounded: a dead peer is caught sooner by the idle probe.
        code, _, err = self._run_stream(STAGE.command(w.docker, w.work_root, self.run_id, w.name, step), stdin=writer, timeout=3600)
        if code != 0:
            raise stage_error(w, code, err.decode("utf-8", "replace"))
        return sent[0]

    def upload_executor(self) -> None:
        if self.executor_ok:
            return
        w = self.worker
        code, out, err = self._run_stream(UPLOAD_EXECUTOR.command(w.docker, w.work_root, executor_hash(), w.name), stdin=executor_tar(), timeout=120)
        if code != 0:
            raise stage_error(w, code, err.decode("utf-8", "replace"))
        log.info("%s: executor %s uploaded", w.name, executor_hash())
        self.executor_ok = True

    # -- images -------------------------------------------------------------------

    def pull(self, image: str, feed: Feed | None, password: Secret | None, *, on_pull=None, cancel=None) -> ImageInfo:
        """Pull now (at most once per image per run: callers check `pulled`)."""
        with self._lock:
            self.dirty = True
            cfg = f"{run_part(self.run_id, self.name)}/docker-config-{time.monotonic_ns()}"
            info = pull_image(self.conn, image, feed, password, cfg_dir=cfg, on_pull=on_pull, cancel=cancel)
            self.pulled.add(image)
            self.images[image] = info
            return info

    # -- cleaning up ----------------------------------------------------------------

    def stop(self, container: str) -> None:
        """Stop a step's container (TERM, then KILL after 2 s); it removes itself (--rm)."""
        self.conn.run(STOP.command(self.worker.docker, container), timeout=30)

    def clean_step(self, step: str, image: str) -> bool:
        if self.facts is None:
            return True
        w = self.worker
        res = self.conn.run(CLEAN_STEP.command(w.docker, w.work_root, self.run_id, w.name, step, image), timeout=120)
        return res.ok

    def sweep(self, *, connect_timeout: float | None = None) -> bool:
        """Remove every container and file of this run from the worker. True when nothing is left."""
        w = self.worker
        if not self.conn.is_open:
            from dataclasses import replace

            fresh = Connection(replace(w, connect_timeout=connect_timeout or min(w.connect_timeout, 5.0)), retries=1)
            fresh.open()
            self.conn.close()
            self.conn = fresh
        res = self.conn.run(SWEEP.command(w.docker, w.work_root, self.run_id, w.name, self.last_image or ""), timeout=120)
        if res.ok:
            self.dirty = False
        return res.ok

    # -- plumbing ---------------------------------------------------------------------

    def _run_stream(self, command: str, *, stdin, timeout: float) -> tuple[int, bytes, bytes]:
        out, err = bytearray(), bytearray()
        code = self.conn.stream(command, stdin=stdin, on_stdout=out.extend, on_stderr=err.extend, timeout=timeout)
        return code, bytes(out), bytes(err)


def is_unhealthy(exc: BaseException) -> bool:
    """Errors that make `target: any` try another worker: nothing of the script ran yet."""
    from ..errors import DaemonDown, DockerMissing, DockerPermission, NoFreeSlot

    return isinstance(exc, (ConnectError, DockerMissing, DaemonDown, DockerPermission, NoFreeSlot))
