"""A tiny in-process SSH server (paramiko's server side) for unit tests of connecting.

It accepts one key for one user, records every authentication attempt, runs
"exec" requests through a callback, and forwards `direct-tcpip` channels to
127.0.0.1 ports, so a chain bastion -> worker can be built without Docker.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import paramiko


@dataclass
class Seen:
    auth: list = field(default_factory=list)  # (user, key fingerprint) of every public-key attempt
    connections: int = 0
    forwards: list = field(default_factory=list)  # (host, port)
    sessions: int = 0
    refused: int = 0  # session channels refused past max_sessions


class _Server(paramiko.ServerInterface):
    def __init__(self, fake: "FakeSSH"):
        self.fake = fake
        self.event = threading.Event()

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        self.fake.seen.auth.append((username, key.fingerprint))
        if username == self.fake.user and key.get_base64() == self.fake.client_key.get_base64():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            # Counted here, where the limit is checked: accept() may come much later.
            with self.fake._lock:
                if self.fake.max_sessions is not None and self.fake.open_sessions >= self.fake.max_sessions:
                    self.fake.seen.refused += 1
                    return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
                self.fake.open_sessions += 1
                self.fake.seen.sessions += 1
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.fake.seen.forwards.append(destination)
        if destination[0] not in ("127.0.0.1", "localhost"):
            return paramiko.OPEN_FAILED_CONNECT_FAILED
        self.fake._forwards[chanid] = destination
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        # Later, not now: paramiko confirms the request only after this returns, and a
        # channel closed before that confirmation reads as "Channel closed" on the client.
        threading.Timer(0.05, self.fake._exec, args=(channel, command)).start()
        return True

    def check_global_request(self, kind, msg):
        return False  # like OpenSSH: an unknown global request gets a failure (still an answer)


class FakeSSH:
    """Listens on 127.0.0.1; use as a context manager. `host_key` is what it offers."""

    def __init__(self, client_key: paramiko.PKey, *, user: str = "deploy", host_key: paramiko.PKey | None = None, max_sessions: int | None = None, on_exec=None):
        self.user = user
        self.client_key = client_key
        self.host_key = host_key or paramiko.ECDSAKey.generate()
        self.max_sessions = max_sessions
        self.open_sessions = 0
        self.on_exec = on_exec or (lambda command: (0, b"", b""))
        self.seen = Seen()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._transports: list[paramiko.Transport] = []
        self._forwards: dict[int, tuple] = {}

    def __enter__(self) -> "FakeSSH":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._listener.close()
        for t in self._transports:
            t.close()

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.seen.connections += 1
            t = paramiko.Transport(sock)
            t.add_server_key(self.host_key)
            self._transports.append(t)
            server = _Server(self)
            try:
                t.start_server(server=server)
            except (paramiko.SSHException, EOFError, OSError):
                continue
            threading.Thread(target=self._serve, args=(t,), daemon=True).start()

    def _serve(self, t: paramiko.Transport) -> None:
        while t.is_active() and not self._stop.is_set():
            chan = t.accept(0.5)
            if chan is None:
                continue
            dest = self._forwards.pop(chan.get_id(), None)
            if dest is not None:
                threading.Thread(target=self._forward, args=(chan, dest), daemon=True).start()
            else:
                threading.Thread(target=self._watch_session, args=(chan,), daemon=True).start()

    def _watch_session(self, chan) -> None:
        while not chan.closed and not self._stop.is_set():
            self._stop.wait(0.05)
        with self._lock:
            self.open_sessions -= 1

    def _exec(self, chan, command: bytes) -> None:
        code, out, err = self.on_exec(command.decode())
        if out:
            chan.sendall(out)
        if err:
            chan.sendall_stderr(err)
        chan.send_exit_status(code)
        # No close from here: like sshd, the session stays counted until the client closes it.
        chan.shutdown_write()

    def _forward(self, chan, dest) -> None:
        try:
            upstream = socket.create_connection(dest, timeout=5)
        except OSError:
            chan.close()
            return

        def pump(src_recv, dst_send, closer):
            try:
                while True:
                    data = src_recv(65536)
                    if not data:
                        break
                    dst_send(data)
            except (OSError, EOFError, paramiko.SSHException):  # the other side went away
                pass
            finally:
                try:
                    closer()
                except (OSError, EOFError, paramiko.SSHException):  # its transport is closed already
                    pass

        threading.Thread(target=pump, args=(chan.recv, upstream.sendall, lambda: upstream.close()), daemon=True).start()
        pump(upstream.recv, chan.sendall, chan.close)
