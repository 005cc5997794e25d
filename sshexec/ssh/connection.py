"""An open SSH connection to one worker: commands, streams and SFTP over its channels.

Connecting (the route through jump hosts, every hop's host key, authentication)
is the job of _dial.py (with _route.py and _login.py); this module runs things once
connected. With them, it is the only place where paramiko's errors are caught.

Every blocking call has a deadline of our own: paramiko alone waits forever on
a peer that stops answering. Session channels are gated per connection
(`gate.Gate`): sshd refuses channels past its MaxSessions (10 by default),
so at most MAX_CHANNELS are open at once, and once the server refused one, no
more than it ever accepted at once.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import paramiko

from ..config.inventory import Worker
from ..core.retry import retry
from ..errors import ConnectionLost, RemoteTimeout, UnreachableError, reason
from ._companion import MAX_PACKET, WINDOW_SIZE, Ahead, KeptLinkMixin
from ._dial import Link, open_link
from . import pool
from ._gate import Gate
from ._idle import IDLE_PROBE, idle_probe_seconds  # noqa: F401 (IDLE_PROBE: the default, read by tests)
from ._sftp import _SFTPClient
from .result import Aborted, CancelledRemote, Result, StdinClosed

log = logging.getLogger("sshexec")

POLL = 0.25
MAX_CHANNELS = 8  # session channels open at once on one connection (sshd's MaxSessions is 10 by default)


class Connection(KeptLinkMixin):
    """An open SSH connection to one worker. Use as a context manager.

    `retries` connection attempts are made (core/retry.py: waits of `backoff`,
    then twice that, each less up to half of jitter) when the worker is
    unreachable; authentication and host-key failures are never retried. A
    set `cancel` ends the waiting between attempts (Cancelled).
    """

    def __init__(self, worker: Worker, *, retries: int | None = None, backoff: float = 0.75, cancel: threading.Event | None = None):
        self.worker = worker
        self.retries = max(1, retries if retries is not None else int(os.environ.get("SSHEXEC_CONNECT_RETRIES", "3")))
        self.backoff = backoff
        self.cancel = cancel
        self._link: Link | None = None
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self.gate = Gate(MAX_CHANNELS, what="an SSH channel")
        self.attempts = 0
        self.reused = False  # the last open() borrowed a kept connection (pool.py)
        self.on_retry: Callable[[int, Exception], None] | None = None

    # -- connecting ---------------------------------------------------------

    def __enter__(self) -> "Connection":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    def open(self) -> "Connection":
        """Connect (through the worker's jump hosts). Unreachable: `retries` attempts with backoff."""
        if self.is_open:
            return self
        self.attempts = 0
        key = None
        if pool.active() and pool.idle_limit() > 0:  # SSHEXEC_CONNECTION_IDLE=0: neither kept nor borrowed
            key = pool.login_key(self.worker)
            kept = pool.borrow(self.worker, key)
            if kept is not None:
                self.reused = True
                self._link, self._transport = kept, kept.transport
                self.gate = Gate(MAX_CHANNELS, what="an SSH channel")
                return self

        def attempt() -> Link:
            self.attempts += 1
            try:
                return open_link(self.worker)
            except (paramiko.SSHException, EOFError) as exc:
                # The one boundary: whatever paramiko says while connecting is an unreachable worker
                # (infrastructure, retried), in our words; its own text is kept only as the reason.
                raise UnreachableError(self.worker.name, f"SSH connection to {self.worker.address} failed: {reason(exc)}", hint="check that an SSH server answers there") from None

        def on_retry(n: int, exc: BaseException, wait: float) -> None:
            log.warning("%s (attempt %d of %d); retrying in %.1fs", getattr(exc, "message", exc), n, self.retries, wait)
            if self.on_retry:
                self.on_retry(n, exc)

        try:
            link = retry(
                attempt, attempts=self.retries, delay=self.backoff, backoff=2.0,
                retry_if=lambda exc: isinstance(exc, UnreachableError), cancel=self.cancel, on_retry=on_retry,
            )  # fmt: skip
        except UnreachableError as exc:
            exc.attempts = self.attempts
            if self.attempts > 1:
                exc.message = f"{exc.message} (after {self.attempts} attempts)"
            raise
        link.pool_key = key
        self.reused = False
        self._link, self._transport = link, link.transport
        self.gate = Gate(MAX_CHANNELS, what="an SSH channel")
        return self

    def close(self) -> None:
        """Close the connection; in a process that keeps connections (pool.py), a clean one is kept instead."""
        link, self._link, self._transport = self._link, None, None
        if link is not None and pool.active() and pool.give_back(self.worker, link):
            return
        self._link, self._transport = link, None
        self.discard()

    def discard(self) -> None:
        """Close the connection, never keeping it: it failed a check."""
        link, self._link, self._transport = self._link, None, None
        if link is not None:
            try:
                link.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
                pass

    # -- running commands ---------------------------------------------------

    def _require(self) -> paramiko.Transport:
        t = self._transport
        if t is None or not t.is_active():
            raise ConnectionLost(self.worker.name, f"connection to {self.worker.name} lost", hint="check the worker and run again")
        return t

    def _open_session(self, timeout: float) -> paramiko.Channel:
        """A session channel, within `timeout`: waits for a free one past the server's MaxSessions."""
        end = time.monotonic() + timeout
        pause = 0.05
        while True:
            t = self._require()
            if not self.gate.acquire(max(0.0, end - time.monotonic())):
                raise RemoteTimeout(self.worker.name, f"no SSH channel became free within {timeout:g}s (the worker's sshd limits sessions per connection: MaxSessions)")
            try:
                chan = t.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET, timeout=max(1.0, end - time.monotonic()))
            except paramiko.SSHException as exc:
                self.gate.release()
                # A refusal is a ChannelException, or, when several threads open channels at
                # once, paramiko's generic "Unable to open channel." (the reason went to another).
                refused = isinstance(exc, paramiko.ChannelException) or "Unable to open channel" in str(exc)
                if not refused or not t.is_active():
                    raise self._lost(exc) from None
                if time.monotonic() + pause >= end:
                    raise ConnectionLost(self.worker.name, f"the worker refused an SSH channel for {timeout:g}s ({reason(exc)})", hint="check MaxSessions in the worker's sshd_config") from None
                if self._shed_companions():
                    continue  # a companion held the session sshd had for us (MaxSessions): it is never needed
                # The server counts a channel as open until it has seen our close: give it a moment.
                self.gate.refused()
                time.sleep(pause * (0.5 + random.random()))
                pause = min(1.0, pause * 2)
            except (EOFError, OSError) as exc:
                self.gate.release()
                raise self._lost(exc) from None
            except BaseException:
                self.gate.release()
                raise
            else:
                self.gate.admitted(chan, closed=lambda: chan.closed)
                return chan

    def _close_session(self, chan: paramiko.Channel) -> None:
        try:
            chan.close()
        finally:
            self.gate.release(chan)

    @contextmanager
    def session(self, command: str | None, *, timeout: float = 30.0, ready: Ahead | None = None) -> Iterator[paramiko.Channel]:
        """A session channel running `command` (started within `timeout` seconds), closed on the way out;
        or `ready`'s, the command started ahead and taken from this link (take_ahead), counted like any other."""
        chan = self._open_session(timeout) if ready is None else self._admit(ready, timeout)
        try:
            if ready is None:
                with self._watchdog(chan, timeout):
                    try:
                        chan.exec_command(command)
                    except (paramiko.SSHException, EOFError, OSError) as exc:
                        raise self._lost(exc) from None
            yield chan
        finally:
            self._close_session(chan)

    def _lost(self, exc: BaseException | None = None) -> ConnectionLost:
        detail = f" ({reason(exc)})" if exc else ""
        return ConnectionLost(
            self.worker.name,
            f"connection to {self.worker.name} lost{detail}",
            hint="the worker stopped answering; check it (sshexec check) and run again",
        )

    @contextmanager
    def _watchdog(self, chan: paramiko.Channel, timeout: float) -> Iterator[None]:
        """Close `chan` if the block takes longer than `timeout`: paramiko's waits have no deadline."""
        fired = threading.Event()

        def fire():
            fired.set()
            chan.close()

        timer = threading.Timer(timeout, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
        if fired.is_set():
            raise RemoteTimeout(self.worker.name, f"the worker did not answer within {timeout:g}s")

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float = 60.0) -> Result:
        """Run a command to completion and capture its output (for short commands)."""
        out: list[bytes] = []
        err: list[bytes] = []
        code = self.stream(command, stdin=stdin, on_stdout=out.append, on_stderr=err.append, timeout=timeout)
        return Result(self.worker.name, code, b"".join(out), b"".join(err))

    def stream(
        self,
        command: str,
        *,
        stdin: bytes | Callable[[Callable[[bytes], None]], object] | None = None,
        keep_stdin_open: bool = False,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        on_abort: Callable[[str], None] | None = None,
        on_channel: Callable[[paramiko.Channel], None] | None = None,
        abort_grace: float = 10.0,
        idle_probe: float | None = None,
        ready: Ahead | None = None,
        preamble: bytes = b"",
    ) -> int:
        """Run a command, handing its output to callbacks as it arrives; return its exit code.

        `stdin` is bytes, or a function that is called with a `send` function
        and streams its data through it. ConnectionLost when the worker stops
        answering (probed after `idle_probe` seconds of silence: by default IDLE_PROBE, or SSHEXEC_IDLE_PROBE).

        Past `timeout`, or once `cancel` is set, the command is aborted: without
        `on_abort` at once (RemoteTimeout / CancelledRemote); with it,
        `on_abort("timeout" | "cancel")` is called to stop the remote side, and
        the output is drained for up to `abort_grace` seconds so the command can
        finish its own cleanup; then `Aborted` carries its exit code (or None).

        `ready`: a command started ahead (take_ahead) runs in place of `command`; `preamble` goes before stdin
        (what it waits for).
        """
        if idle_probe is None:
            idle_probe = idle_probe_seconds()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.session(command, timeout=min(timeout or 30.0, 30.0), ready=ready) as chan:
            return self._pump(chan, stdin, keep_stdin_open, on_stdout, on_stderr, deadline, timeout, cancel, on_abort, on_channel, abort_grace, idle_probe, preamble)

    def _pump(self, chan, stdin, keep_stdin_open, on_stdout, on_stderr, deadline, timeout, cancel, on_abort, on_channel, abort_grace, idle_probe, preamble=b"") -> int:
        aborted: str | None = None
        abort_end = 0.0
        try:
            chan.settimeout(POLL * 8)
            if on_channel is not None:
                on_channel(chan)
            try:
                if preamble:
                    self._send(chan, preamble, deadline, cancel)
                if isinstance(stdin, bytes):
                    self._send(chan, stdin, deadline, cancel)
                elif stdin is not None:
                    # A writer: stdin(send) streams its data (a tar, say) straight into the channel.
                    stdin(lambda data: self._send(chan, data, deadline, cancel))
                if not keep_stdin_open:
                    chan.shutdown_write()
            except StdinClosed:
                pass  # the command exited before reading everything: its exit status says why
            last_data = time.monotonic()
            while True:
                now = time.monotonic()
                if aborted is None:
                    if cancel is not None and cancel.is_set():
                        aborted = "cancel"
                    elif deadline is not None and now > deadline:
                        aborted = "timeout"
                    if aborted is not None:
                        if on_abort is None:
                            if aborted == "cancel":
                                raise CancelledRemote()
                            raise RemoteTimeout(self.worker.name, f"command timed out after {timeout:g}s")
                        on_abort(aborted)
                        abort_end = time.monotonic() + abort_grace
                elif now > abort_end:
                    raise Aborted(aborted, None)
                select.select([chan], [], [], POLL)
                got = False
                while chan.recv_ready():
                    on_stdout(chan.recv(65536))
                    got = True
                while chan.recv_stderr_ready():
                    on_stderr(chan.recv_stderr(65536))
                    got = True
                if got:
                    last_data = time.monotonic()
                    continue
                # paramiko marks a channel closed without a status (a killed sshd) as
                # having one, -1: only a status the server really sent counts.
                has_status = chan.status_event.is_set() and chan.exit_status != -1
                if has_status and (chan.eof_received or chan.closed):
                    code = chan.recv_exit_status()
                    if aborted is not None:
                        raise Aborted(aborted, code)
                    return code
                if chan.closed or not self.is_open:
                    raise self._lost()
                if time.monotonic() - last_data > idle_probe:
                    self.probe()
                    last_data = time.monotonic()
        except (socket.timeout, TimeoutError):
            raise self._lost() from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from None

    def _send(self, chan, data: bytes, deadline: float | None, cancel) -> None:
        view = memoryview(data)
        while view:
            if cancel is not None and cancel.is_set():
                raise CancelledRemote()
            if deadline is not None and time.monotonic() > deadline:
                raise RemoteTimeout(self.worker.name, "sending data timed out")
            if chan.closed or chan.exit_status_ready():
                raise StdinClosed()
            try:
                n = chan.send(view[: MAX_PACKET * 8])
            except socket.timeout:
                self.probe()
                continue
            if n == 0:
                raise StdinClosed()
            view = view[n:]

    def probe(self, timeout: float = 8.0) -> None:
        """Check that the worker still answers (one global request, no session); ConnectionLost if not."""
        t = self._require()
        answered = threading.Event()

        def ask() -> None:
            try:
                # OpenSSH answers an unknown global request with a failure: any answer proves it alive.
                with self._probe_lock:
                    t.global_request("keepalive@openssh.com", wait=True)
                if t.is_active():
                    answered.set()
            except Exception:  # noqa: BLE001 - no answer is the answer
                pass

        threading.Thread(target=ask, name=f"sshexec-probe-{self.worker.name}", daemon=True).start()
        if not answered.wait(timeout):
            self.discard()  # also ends the asking thread: paramiko stops waiting once the transport is closed
            raise self._lost()

    def sftp(self) -> paramiko.SFTPClient:
        """An SFTP client on its own channel (counted by the channel gate until it is closed)."""
        self._require()
        chan = self._open_session(30.0)
        try:
            chan.invoke_subsystem("sftp")
            sftp = _SFTPClient(chan)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._close_session(chan)
            raise self._lost(exc) from None
        sftp.on_close = lambda: self.gate.release(chan)
        chan.settimeout(60)  # no SFTP call may wait forever on a dead peer
        return sftp
