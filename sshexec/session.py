"""One worker during one run: its connection, what is known about it, and the remote verbs."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .bundle import executor_tar, write_bundle
from .config.inventory import Feed, Worker
from .core.retry import retry
from .core.secrets import Secret
from .docker import (
    CLEAN_STEP,
    PULL,
    STAGE,
    STOP,
    SWEEP,
    UPLOAD_EXECUTOR,
    ImageInfo,
    WorkerFacts,
    run_part,
)
from .docker_errors import is_transient, pull_error, stage_error
from .errors import ConnectError, PullError, WorkerError
from .executor import executor_hash
from .gc import record_pull
from .ssh import Connection

log = logging.getLogger("sshexec")

PULL_TIMEOUT = 1800.0
PULL_ATTEMPTS = 3
PULL_DELAY, PULL_MAX_DELAY = 1.0, 8.0  # waits of 1 s then 2 s, less jitter


@dataclass
class PullProgress:
    """Layers seen in `docker pull` output: enough for a progress bar."""

    layers: set = field(default_factory=set)
    done: set = field(default_factory=set)
    status: str = ""
    downloaded: bool = False  # the image was not all here before: sshexec pulled it (gc.py records it)

    _LINE = re.compile(rb"^([0-9a-f]{12}): (.*)$")

    def feed(self, line: bytes) -> bool:
        m = self._LINE.match(line.strip())
        if not m:
            text = line.strip().decode("utf-8", "replace")
            if text:
                self.status = text[:80]
                self.downloaded = self.downloaded or text.startswith("Status: Downloaded newer image")
            return False
        layer, what = m.group(1), m.group(2)
        self.layers.add(layer)
        if what.startswith((b"Pull complete", b"Already exists")):
            self.done.add(layer)
        return True


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


def pull_image(
    conn: Connection,
    image: str,
    feed: Feed | None,
    password: Secret | None,
    *,
    cfg_dir: str,
    on_pull: Callable[[PullProgress], None] | None = None,
    cancel=None,
    attempts: int = PULL_ATTEMPTS,
    sleep: Callable[[float], None] | None = None,
) -> ImageInfo:
    """docker pull on the worker, logging in first with the feed's credentials when it has some.

    The credentials go to a DOCKER_CONFIG under work_root/`cfg_dir` that the
    scriptlet removes on every exit path; the password travels on stdin.
    Transient registry failures are retried with backoff: at most
    sum(retry.delays(PULL_ATTEMPTS, PULL_DELAY, 2, PULL_MAX_DELAY)) = 3 s of waiting
    with the defaults; a cancel ends the wait at once.
    """
    w = conn.worker
    login = feed is not None and feed.username is not None
    args = (image, feed.registry if login else "", feed.username if login else "", w.work_root, cfg_dir)
    stdin = password.reveal().encode() if login and password else b""
    tried = [0]

    def attempt() -> ImageInfo:
        tried[0] += 1
        progress = PullProgress()
        pending = bytearray()
        out_tail = bytearray()

        def on_out(data: bytes) -> None:
            pending.extend(data)
            *complete, rest = bytes(pending).split(b"\n")
            pending[:] = rest
            for line in complete:
                progress.feed(line)
            if on_pull:
                on_pull(progress)
            out_tail.extend(data)
            del out_tail[:-8192]

        err = bytearray()
        code = conn.stream(PULL.command(w.docker, *args), stdin=stdin, on_stdout=on_out, on_stderr=err.extend, timeout=PULL_TIMEOUT, cancel=cancel)
        text = bytes(out_tail).decode("utf-8", "replace")
        if code == 0:
            m = re.search(r"^image\t([^\t]*)\t(.*)$", text, re.M)
            if m:
                info = ImageInfo.parse(image, m.group(2).split("\t"))
                if progress.downloaded:
                    record_pull(conn, image, info.id)  # gc --images may remove what sshexec pulled, and only that
                return info
            raise PullError(w.name, f"pulled {image} but could not inspect it: {text[-300:]}")
        raise pull_error(w, image, code, bytes(err).decode("utf-8", "replace") + "\n" + text, feed.name if feed else None)

    def warn(n: int, exc: BaseException, wait: float) -> None:
        log.warning("%s: pull of %s failed (%s); retrying in %.1fs (%d/%d)", w.name, image, getattr(exc, "message", exc), wait, n, attempts)

    try:
        return retry(attempt, attempts=attempts, delay=PULL_DELAY, max_delay=PULL_MAX_DELAY, retry_if=is_transient, cancel=cancel, on_retry=warn, sleep=sleep)
    except WorkerError as exc:
        if tried[0] > 1:
            exc.message += f" (after {tried[0]} attempts)"
        raise


def is_unhealthy(exc: BaseException) -> bool:
    """Errors that make `target: any` try another worker: nothing of the script ran yet."""
    from .errors import DaemonDown, DockerMissing, DockerPermission, NoFreeSlot

    return isinstance(exc, (ConnectError, DockerMissing, DaemonDown, DockerPermission, NoFreeSlot))
