"""One worker during one run: its connection, what is known about it, and the verbs a run uses there.

`WorkerSession` is the only writer of what it knows (the worker's facts, the
images seen and pulled, whether something of the run may be left there, whether
the run's heartbeat is there): callers read those, and change them only through
its verbs (go, stage_bundle, pull, clean_step, sweep, take_locks, give_back...).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import replace
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from ..config.inventory import Feed, Worker
from ..core.secrets import Secret
from ..errors import Cancelled, ConnectionLost
from ..executor import executor_hash
from ..ssh import Aborted, Connection
from .bundle import executor_tar, write_bundle
from .coord import Owner, beat_arg
from .docker import CLEAN_STEP, GO, GO_WAITING, STAGE, STOP, SWEEP, UPLOAD_EXECUTOR, ImageInfo, WorkerFacts, run_part
from .docker_errors import stage_error
from .facts import forget, known, remember
from .go import GoReply, GoState
from .heartbeat import beat
from .locks import TakeReply, give_back, take
from .pull import pull_image
from .scriptlet import quote

log = logging.getLogger("sshexec")


@lru_cache(maxsize=8)
def go_waiting(docker: tuple[str, ...]) -> str:
    """GO started ahead for this docker command: its command line, and its kind for ssh's take_ahead."""
    return GO_WAITING.command(docker)


class WorkerSession:
    """Per-run state of one worker. Thread-safe for the calls the run makes."""

    def __init__(self, worker: Worker, run_id: str, *, retries: int | None = None, on_retry: Callable | None = None, cancel: threading.Event | None = None):
        self.worker = worker
        self.run_id = run_id
        self._conn = Connection(worker, retries=retries, cancel=cancel)
        self._conn.on_retry = on_retry
        self._facts: WorkerFacts | None = None  # learnt from the first GO
        self._executor_ok = False
        self._images: dict[str, ImageInfo] = {}
        self._pulled: set[str] = set()
        self._dirty = False  # something of this run may be left on the worker
        self._beat_left = False  # the run's heartbeat may be on the worker (coord.py; run/coordination.py gives it back)
        self._last_image: str | None = None  # an image to clean root-owned files with
        self._early_error: BaseException | None = None  # connect_ahead's, for the first open() to raise
        self._lock = threading.RLock()

    # -- what is known (read-only: the verbs below change it) ----------------------

    @property
    def name(self) -> str:
        return self.worker.name

    @property
    def conn(self) -> Connection:
        return self._conn

    @property
    def is_open(self) -> bool:
        return self._conn.is_open

    @property
    def facts(self) -> WorkerFacts | None:
        return self._facts

    @property
    def executor_ok(self) -> bool:
        return self._executor_ok

    @property
    def images(self) -> Mapping[str, ImageInfo]:
        return MappingProxyType(self._images)

    @property
    def pulled(self) -> frozenset[str]:
        return frozenset(self._pulled)

    @property
    def dirty(self) -> bool:
        """Something of this run may be left on the worker: the run sweeps it at the end."""
        return self._dirty

    @property
    def beat_left(self) -> bool:
        """The run's heartbeat may be on the worker: the run gives it back at the end."""
        return self._beat_left

    def open(self) -> None:
        with self._lock:
            # A failed connect_ahead is this open's failure: its attempts (and retry warnings) count.
            early, self._early_error = self._early_error, None
            if early is not None and not self._conn.is_open:
                raise early
            self._conn.open()

    def connect_ahead(self) -> None:
        """Open the connection before a step needs it (in a thread of its own); never raises.

        The step's open() waits for it (the lock), then raises what it met, once.
        """
        with self._lock:
            try:
                self._conn.open()
            except BaseException as exc:  # noqa: BLE001 - handed to the step's open()
                self._early_error = exc

    def close(self) -> None:
        self._conn.close()

    # -- the step's directory ---------------------------------------------------

    def step_dir(self, step: str) -> str:
        """The step's directory on the worker (docker.py draws the layout); known once GO reported the root."""
        assert self.facts is not None
        return f"{self.facts.root}/{run_part(self.run_id, self.name)}/{step}"

    def stage_bundle(self, step: str, *, image: str, script: bytes, files, on_bytes: Callable[[int], None] | None = None) -> int:
        """Stream a big bundle into a fresh step directory (GO then runs it with size "staged"); `image` cleans it up."""
        w = self.worker
        sent = [0]

        def writer(send):
            def counted(data: bytes) -> None:
                send(data)
                sent[0] += len(data)
                if on_bytes:
                    on_bytes(sent[0])

            write_bundle(counted, script=script, files=files)

        with self._lock:
            self._dirty = True
            self._last_image = image
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
        self._executor_ok = True

    # -- images -------------------------------------------------------------------

    def pull(self, image: str, feed: Feed | None, password: Secret | None, *, on_pull=None, cancel=None) -> ImageInfo:
        """Pull now (at most once per image per run: callers check `pulled`)."""
        with self._lock:
            self._dirty = True
            cfg = f"{run_part(self.run_id, self.name)}/docker-config-{time.monotonic_ns()}"
            forget(self._conn, self.worker.docker, image)  # GO inspects it again: the tag may name another image now
            info = pull_image(self._conn, image, feed, password, cfg_dir=cfg, on_pull=on_pull, cancel=cancel)
            self._pulled.add(image)
            self._images[image] = info
            return info

    # -- running a step: GO --------------------------------------------------------

    def go(
        self, step: str, *, container: str, image: str, bundle: bytes | None, user: str, docker_args: Sequence[str], owner: Owner,
        header: bytes, on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None], on_started: Callable[[], None],
        timeout: float, cancel: threading.Event, want: str = "",
    ) -> GoReply:  # fmt: skip
        """One GO round trip (docker.py): stage `bundle` (None: stage_bundle did), check, run the container.

        The executor's `header` (the variables, secrets included) is sent only
        once GO said "staged": head and tar are done reading the bundle by then.
        Past `timeout`, or once `cancel` is set, the container is stopped and
        its cleanup awaited. Cancelled if the cancel came before it started.
        `want` (sha256:...): the image must be that digest here, else GO refuses it (E_DIGEST) before running it.
        On a kept connection, GO skips the image's inspect when this connection checked it before and nothing
        about images changed on the worker since (facts.py).
        """
        w = self.worker
        size = str(len(bundle)) if bundle is not None else "staged"
        hb = beat_arg(w.lock_stale, w.max_steps, owner)
        line, ticket = known(self._conn, w.docker, image)
        args = (w.work_root, self.run_id, w.name, step, container, image, executor_hash(), size, user, hb, want, line, *docker_args)
        ready, preamble, command = None, b"", None
        if self._conn.memo() is not None:
            # A kept connection: GO started ahead, if one waits (docker.GO_WAITING), and another for the next command.
            waiting = go_waiting(tuple(w.docker))
            if not any("\n" in a for a in args):  # its arguments are one line
                ready = self._conn.take_ahead(waiting)
            self._conn.ahead_later(waiting, waiting)
        if ready is not None:
            preamble = (quote(args) + "\n").encode("utf-8", "surrogateescape")  # as through_sh encodes a fresh GO's
        else:
            command = GO.command(w.docker, *args)
        with self._lock:
            self._dirty = True
            self._beat_left = True  # GO writes the run's heartbeat; it drops it when it leaves nothing behind
            self._last_image = image
        channel: list = []

        def staged() -> None:
            if not cancel.is_set():
                channel[0].sendall(header)
            on_started()

        def abort(reason: str) -> None:
            try:
                channel[0].shutdown_write()  # the executor's watchdog stops the script too
            except Exception:  # noqa: BLE001 - the channel may be gone already
                pass
            self.stop(container)

        def once(state: GoState, command: str | None, ready=None, preamble: bytes = b"") -> int:
            channel.clear()
            return self._conn.stream(
                command, stdin=bundle, keep_stdin_open=True, on_channel=channel.append, on_stdout=on_stdout, on_stderr=state.feed,
                timeout=timeout, cancel=cancel, on_abort=abort, ready=ready, preamble=preamble,
            )  # fmt: skip

        state = GoState(image, staged, on_stderr)
        code, aborted, lost, finished = None, None, None, False
        try:
            code = once(state, command, ready, preamble)
            if ready is not None and "go" not in state.facts and not state.started:
                # GO started ahead ended before it read its line (killed on the worker meanwhile): it did nothing.
                log.info("%s: GO started ahead had ended before the step came; a fresh one runs it", w.name)
                state = GoState(image, staged, on_stderr)
                code = once(state, GO.command(w.docker, *args))
            finished = True
        except Aborted as exc:
            finished = exc.exit_code is not None
            if not state.started and exc.reason == "cancel":
                raise Cancelled(f"step {step} on {w.name} was cancelled before it started") from None
            aborted = exc.reason
        except ConnectionLost as exc:
            lost = exc
        finally:
            with self._lock:
                if state.root is not None:
                    self._facts = state.root
                if state.info is not None:
                    self._images[image] = state.info
                    self._executor_ok = True  # GO looks at the image only once the executor is there
            if line and code == 125:
                forget(self._conn, w.docker)  # docker run's own failure: the image may be gone ("No such image")
            elif state.started and state.image_line:
                remember(self._conn, w.docker, ticket, image, state.image_line)
        return GoReply(
            started=state.started, code=code, facts=state.facts, early=state.early.decode("utf-8", "replace"),
            aborted=aborted, lost=lost, finished=finished, left_marked=state.left_marked, known=bool(line),
        )  # fmt: skip

    def step_removed(self) -> None:
        """GO removed the step's directory itself, and the run's heartbeat with it unless a lock keeps it (locks.py)."""
        with self._lock:
            self._dirty = False
            self._beat_left = False

    @contextmanager
    def files(self) -> Iterator:
        """SFTP on the worker (normalize, stat, getfo...), closed on the way out: how artifacts are fetched."""
        sftp = self._conn.sftp()
        try:
            yield sftp
        finally:
            sftp.close()

    # -- the run's heartbeat and locks -----------------------------------------------

    def ensure_heartbeat(self, owner: Owner) -> None:
        """Write the run's heartbeat before something that outlives one round trip (GO writes its own)."""
        with self._lock:
            if self._beat_left:
                return
            self._beat_left = True
        beat(self._conn, self.run_id, owner)

    def take_locks(self, owner: Owner, names: Iterable[str]) -> TakeReply:
        """TAKE the run's locks here (and write its heartbeat)."""
        self.open()
        with self._lock:
            self._beat_left = True
        return take(self._conn, self.run_id, owner, names)

    def give_back(self, names: Iterable[str] = (), *, everything: bool = False) -> None:
        """Give back locks (`everything`: every lock and the heartbeat of the run), over a fresh connection if the run's was lost."""
        give_back(self._reach(), self.run_id, names, everything=everything)
        if everything:
            with self._lock:
                self._beat_left = False

    # -- cleaning up ----------------------------------------------------------------

    def stop(self, container: str) -> None:
        """Stop a step's container (TERM, then KILL after 2 s); it removes itself (--rm)."""
        self._conn.run(STOP.command(self.worker.docker, container), timeout=30)

    def clean_step(self, step: str, image: str) -> bool:
        """Remove the step's directory (root-owned files too, through `image`). True when nothing of it is left."""
        if self._facts is None:
            return True
        w = self.worker
        res = self._conn.run(CLEAN_STEP.command(w.docker, w.work_root, self.run_id, w.name, step, image), timeout=120)
        if res.ok:
            with self._lock:
                self._dirty = False
        return res.ok

    def sweep(self) -> bool:
        """Remove every container and file of this run from the worker. True when nothing is left."""
        w = self.worker
        res = self._reach().run(SWEEP.command(w.docker, w.work_root, self.run_id, w.name, self._last_image or ""), timeout=120)
        if res.ok:
            with self._lock:
                self._dirty = False
        return res.ok

    # -- plumbing ---------------------------------------------------------------------

    def _run_stream(self, command: str, *, stdin, timeout: float) -> tuple[int, bytes, bytes]:
        out, err = bytearray(), bytearray()
        code = self._conn.stream(command, stdin=stdin, on_stdout=out.extend, on_stderr=err.extend, timeout=timeout)
        return code, bytes(out), bytes(err)

    def _reach(self) -> Connection:
        """The run's connection, or a quick fresh one in its place when it was lost (cleaning up at the end)."""
        with self._lock:
            if not self._conn.is_open:
                w = self.worker
                fresh = Connection(replace(w, connect_timeout=min(w.connect_timeout, 5.0)), retries=1)
                fresh.open()
                self._conn.close()
                self._conn = fresh
            return self._conn
