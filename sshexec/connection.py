"""The SSH connection to one worker: the only module that touches paramiko errors.

Host keys are always verified against the worker's known_hosts file: an unknown
key is refused (`UnknownHostKey`, with the fingerprint and how to trust it), a
changed key is refused loudly (`ChangedHostKey`). Nothing is ever added to
known_hosts here; `sshexec trust` is the only writer.

Every blocking call has a deadline of our own: paramiko alone waits forever on
a peer that stops answering.
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
from dataclasses import dataclass
from typing import Callable, Iterator

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from .errors import (
    AuthError,
    ChangedHostKey,
    ConnectionLost,
    RemoteTimeout,
    UnknownHostKey,
    UnreachableError,
)
from .inventory import Worker

log = logging.getLogger("sshexec")

WINDOW_SIZE = 8 * 1024 * 1024
MAX_PACKET = 32 * 1024
POLL = 0.25
IDLE_PROBE = 5.0  # seconds of silence before checking that the worker still answers


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    return key.fingerprint


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _UnknownKey(Exception):
    def __init__(self, hostname: str, key: paramiko.PKey):
        self.hostname, self.key = hostname, key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Unknown host keys are refused, never added."""

    def missing_host_key(self, client, hostname, key):
        raise _UnknownKey(hostname, key)


@dataclass(frozen=True)
class Result:
    """What one remote command did."""

    worker: str
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failed(self) -> bool:
        return not self.ok

    def __bool__(self) -> bool:
        return self.ok

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def tail(self, lines: int = 10) -> str:
        """The last lines of stderr (or stdout when stderr is empty), for error messages."""
        data = self.stderr.strip() or self.stdout.strip()
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


_fabric_config = None
_fabric_lock = threading.Lock()


def _ssh_config():
    """One fabric Config for the process: ~/.ssh/config, or $SSHEXEC_SSH_CONFIG if set."""
    global _fabric_config
    with _fabric_lock:
        if _fabric_config is None:
            import fabric

            override = os.environ.get("SSHEXEC_SSH_CONFIG")
            if override is not None:
                _fabric_config = fabric.Config(runtime_ssh_path=override or os.devnull)
            else:
                _fabric_config = fabric.Config()
        return _fabric_config


class Connection:
    """An open SSH connection to one worker. Use as a context manager.

    `retries` connection attempts are made, with jittered exponential backoff,
    when the worker is unreachable; authentication and host-key failures are
    never retried.
    """

    def __init__(self, worker: Worker, *, retries: int | None = None, backoff: float = 0.5):
        self.worker = worker
        self.retries = max(1, retries if retries is not None else int(os.environ.get("SSHEXEC_CONNECT_RETRIES", "3")))
        self.backoff = backoff
        self._fabric = None
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()
        self.attempts = 0
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
        if self.is_open:
            return self
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            self.attempts = attempt
            try:
                self._open_once()
                return self
            except UnreachableError as exc:
                if attempt == self.retries:
                    exc.attempts = attempt
                    if self.retries > 1:
                        exc.message = f"{exc.message} (after {attempt} attempts)"
                    raise
                log.warning("%s (attempt %d of %d); retrying", exc.message, attempt, self.retries)
                if self.on_retry:
                    self.on_retry(attempt, exc)
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_once(self) -> None:
        import fabric

        w = self.worker
        identity = str(w.identity_file) if w.identity_file else None
        pkey = _load_key(w.name, identity) if identity else None
        conn = fabric.Connection(
            w.host,
            user=w.user,
            port=w.port,
            config=_ssh_config(),
            connect_timeout=int(max(1, w.connect_timeout)),
            connect_kwargs={
                "pkey": pkey,
                "look_for_keys": identity is None,
                "allow_agent": identity is None,
                "banner_timeout": w.connect_timeout,
                "auth_timeout": w.connect_timeout,
                "channel_timeout": w.connect_timeout,
            },
        )
        # fabric's default is to add unknown keys silently: replace it before connecting.
        client = conn.client
        client.set_missing_host_key_policy(_RefuseUnknown())
        client.get_host_keys().clear()
        if w.known_hosts.exists():
            try:
                client.get_host_keys().load(str(w.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise UnknownHostKey(w.name, f"cannot read known_hosts {w.known_hosts}: {exc}", fingerprint="") from None
        hostname, port = conn.host, conn.port
        where = f"{hostname}:{port}"
        try:
            if conn.gateway is None:
                # Our own socket, for TCP_NODELAY: with Nagle on, every extra channel
                # on the connection waits ~40 ms for a delayed ACK.
                sock = socket.create_connection((hostname, port), timeout=w.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.connect_kwargs["sock"] = sock
            conn.open()
        except _UnknownKey as exc:
            conn.close()
            raise UnknownHostKey(
                w.name,
                f"host key of {where} is unknown ({exc.key.get_name()} {fingerprint(exc.key)}); refusing to connect",
                fingerprint=fingerprint(exc.key),
                hint=f"if that fingerprint is right, run: sshexec trust --worker {w.name}",
            ) from None
        except paramiko.BadHostKeyException as exc:
            conn.close()
            raise ChangedHostKey(
                w.name,
                f"HOST KEY CHANGED for {where}: known_hosts ({w.known_hosts}) has "
                f"{fingerprint(exc.expected_key)}, the worker now offers {fingerprint(exc.key)}. "
                "Refusing to connect: this may be a man-in-the-middle attack",
                fingerprint=fingerprint(exc.key),
                hint=f"if the worker was really reinstalled, run: sshexec trust --worker {w.name} --replace",
            ) from None
        except paramiko.AuthenticationException as exc:
            conn.close()
            who = conn.user
            key = identity or "your SSH agent / default keys"
            raise AuthError(
                w.name,
                f"authentication failed for user {who} at {where} with {key} ({exc})",
                hint="check identity_file and user in the inventory, and that the public key is in the worker's authorized_keys",
            ) from None
        except socket.gaierror as exc:
            conn.close()
            raise UnreachableError(w.name, f"cannot resolve {hostname}: {exc.strerror}", hint="check host in the inventory or your ~/.ssh/config") from None
        except (NoValidConnectionsError, ConnectionError) as exc:
            conn.close()
            raise UnreachableError(
                w.name,
                f"cannot reach {where}: {_reason(exc)}",
                hint="check that the worker is up, that sshd listens on that port, and host/port in the inventory",
            ) from None
        except (socket.timeout, TimeoutError) as exc:
            conn.close()
            raise UnreachableError(
                w.name,
                f"timed out connecting to {where} after {w.connect_timeout:g}s",
                hint="check that the worker is up and that no firewall drops the connection",
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            conn.close()
            raise UnreachableError(
                w.name,
                f"SSH handshake with {where} failed: {_reason(exc)}",
                hint="check that an SSH server answers on that port",
            ) from None
        self._fabric = conn
        self._transport = conn.transport
        self._transport.set_keepalive(15)

    def close(self) -> None:
        conn, self._fabric, self._transport = self._fabric, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
                pass

    # -- running commands ---------------------------------------------------

    def _require(self) -> paramiko.Transport:
        t = self._transport
        if t is None or not t.is_active():
            raise ConnectionLost(self.worker.name, f"connection to {self.worker.name} lost", hint="check the worker and run again")
        return t

    def channel(self, command: str, *, timeout: float = 30.0) -> paramiko.Channel:
        """Open a session channel and start `command` on it, within `timeout` seconds."""
        t = self._require()
        try:
            chan = t.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET, timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from None
        with self._watchdog(chan, timeout):
            try:
                chan.exec_command(command)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._lost(exc) from None
        return chan

    def _lost(self, exc: BaseException | None = None) -> ConnectionLost:
        detail = f" ({_reason(exc)})" if exc else ""
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
        idle_probe: float = IDLE_PROBE,
    ) -> int:
        """Run a command, handing its output to callbacks as it arrives; return its exit code.

        `stdin` is bytes, or a function that is called with a `send` function
        and streams its data through it. ConnectionLost when the worker stops
        answering (probed after `idle_probe` seconds of silence).

        Past `timeout`, or once `cancel` is set, the command is aborted: without
        `on_abort` at once (RemoteTimeout / CancelledRemote); with it,
        `on_abort("timeout" | "cancel")` is called to stop the remote side, and
        the output is drained for up to `abort_grace` seconds so the command can
        finish its own cleanup; then `Aborted` carries its exit code (or None).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        chan = self.channel(command, timeout=min(timeout or 30.0, 30.0))
        aborted: str | None = None
        abort_end = 0.0
        try:
            chan.settimeout(POLL * 8)
            if on_channel is not None:
                on_channel(chan)
            try:
                if isinstance(stdin, bytes):
                    self._send(chan, stdin, deadline, cancel)
                elif stdin is not None:
                    # A writer: stdin(send) streams its data (a tar, say) straight into the channel.
                    stdin(lambda data: self._send(chan, data, deadline, cancel))
                if not keep_stdin_open:
                    chan.shutdown_write()
            except _StdinClosed:
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
        finally:
            chan.close()

    def _send(self, chan, data: bytes, deadline: float | None, cancel) -> None:
        view = memoryview(data)
        while view:
            if cancel is not None and cancel.is_set():
                raise CancelledRemote()
            if deadline is not None and time.monotonic() > deadline:
                raise RemoteTimeout(self.worker.name, "sending data timed out")
            if chan.closed or chan.exit_status_ready():
                raise _StdinClosed()
            try:
                n = chan.send(view[: MAX_PACKET * 8])
            except socket.timeout:
                self.probe()
                continue
            if n == 0:
                raise _StdinClosed()
            view = view[n:]

    def probe(self, timeout: float = 8.0) -> None:
        """Check that the worker still answers (opens and closes a channel); ConnectionLost if not."""
        t = self._require()
        try:
            chan = t.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise self._lost(exc) from None
        chan.close()

    def sftp(self) -> paramiko.SFTPClient:
        t = self._require()
        try:
            sftp = paramiko.SFTPClient.from_transport(t, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from None
        sftp.get_channel().settimeout(60)  # no SFTP call may wait forever on a dead peer
        return sftp


_keys: dict[str, paramiko.PKey] = {}


def _load_key(worker: str, path: str) -> paramiko.PKey:
    """The private key of identity_file, loaded once per process."""
    key = _keys.get(path)
    if key is not None:
        return key
    try:
        key = paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise AuthError(worker, f"identity_file {path} does not exist", hint="fix identity_file in the inventory") from None
    except paramiko.PasswordRequiredException:
        raise AuthError(worker, f"identity_file {path} is protected by a passphrase", hint="load it into ssh-agent and remove identity_file from the inventory") from None
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise AuthError(worker, f"cannot read identity_file {path}: {exc}", hint="it must be an OpenSSH or PEM private key") from None
    _keys[path] = key
    return key


class _StdinClosed(Exception):
    """The remote command stopped reading its stdin."""


class CancelledRemote(Exception):
    """Raised inside `stream` when the cancel event is set; the caller cleans up."""


class Aborted(Exception):
    """`stream` stopped a command (timeout or cancel) through `on_abort`; `exit_code` is None if it never ended."""

    def __init__(self, reason: str, exit_code: int | None):
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NoValidConnectionsError):
        errs = {str(e).split("] ", 1)[-1] for e in exc.errors.values()}
        return "; ".join(sorted(errs)) or "connection refused"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
