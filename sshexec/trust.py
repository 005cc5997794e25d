"""`sshexec trust`: fetch a worker's host key and add it to its known_hosts file."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .connection import _ssh_config, fingerprint, known_hosts_name
from .errors import ChangedHostKey, UnreachableError
from .inventory import Worker


@dataclass(frozen=True)
class HostKey:
    worker: str
    name: str  # the known_hosts name: host, or [host]:port
    key: paramiko.PKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def line(self) -> str:
        return f"{self.name} {self.key.get_name()} {self.key.get_base64()}"


def resolve(worker: Worker) -> tuple[str, int]:
    """The real host name and port of a worker, after ~/.ssh/config."""
    import fabric

    conn = fabric.Connection(worker.host, user=worker.user, port=worker.port, config=_ssh_config())
    return conn.host, conn.port


def fetch_host_key(worker: Worker, key_type: str | None = None) -> HostKey:
    """The host key the worker offers (no authentication is attempted)."""
    host, port = resolve(worker)
    try:
        sock = socket.create_connection((host, port), timeout=worker.connect_timeout)
    except OSError as exc:
        raise UnreachableError(worker.name, f"cannot reach {host}:{port}: {exc}", hint="check that the worker is up") from None
    transport = paramiko.Transport(sock)
    try:
        if key_type:
            opts = transport.get_security_options()
            opts.key_types = [key_type] + [k for k in opts.key_types if k != key_type]
        transport.banner_timeout = worker.connect_timeout
        transport.start_client(timeout=worker.connect_timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise UnreachableError(worker.name, f"SSH handshake with {host}:{port} failed: {exc}") from None
    finally:
        transport.close()
    return HostKey(worker.name, known_hosts_name(host, port), key)


def known_key(worker: Worker, name: str) -> dict[str, paramiko.PKey]:
    """Keys already in the worker's known_hosts for `name`, by key type."""
    if not worker.known_hosts.exists():
        return {}
    keys = paramiko.HostKeys(str(worker.known_hosts))
    return dict(keys.lookup(name) or {})


def add_host_key(worker: Worker, hk: HostKey, *, replace: bool = False) -> bool:
    """Write hk into known_hosts. False if it was already there.

    A different key of the same type is a changed key: refused unless `replace`.
    """
    existing = known_key(worker, hk.name)
    old = existing.get(hk.key.get_name())
    if old is not None and old == hk.key:
        return False
    if existing and not replace:
        olds = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in existing.values())
        raise ChangedHostKey(
            worker.name,
            f"known_hosts already has a different key for {hk.name} ({olds}); the worker offers {hk.fingerprint}",
            fingerprint=hk.fingerprint,
            hint="if the worker was really reinstalled, run again with --replace",
        )
    path: Path = worker.known_hosts
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    if replace:
        lines = [line for line in lines if not _names(line, hk.name)]
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.append(hk.line + "\n")
    tmp = path.with_name(path.name + ".sshexec-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(lines)
    os.replace(tmp, path)
    return True


def _names(line: str, name: str) -> bool:
    """True if this known_hosts line is about `name` (plain or hashed)."""
    entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
    if entry is None:
        return False
    for host in entry.hostnames:
        if host == name or host.startswith("|1|") and paramiko.HostKeys.hash_host(name, host) == host:
            return True
    return False
