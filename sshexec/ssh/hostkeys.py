"""Host keys: the known_hosts file, fingerprints, and the check every hop of a connection passes.

sshexec verifies every host key it meets, bastions included, against the
worker's known_hosts file: an unknown key is refused (`UnknownHostKey`, with
its fingerprint and the `sshexec trust` command that would add it), a changed
key is refused loudly (`ChangedHostKey`). Nothing is added to known_hosts here;
`sshexec trust` is the only writer, through `add_known_host()`, which holds a
lock while it rewrites the file.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paramiko

from ..errors import ChangedHostKey, UnknownHostKey

# When known_hosts holds an ssh-rsa key, servers are asked for these signature types.
_RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    return key.fingerprint


def known_hosts_name(host: str, port: int) -> str:
    """The name a host has in known_hosts: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


_cache: dict[tuple[str, int, int, int], paramiko.HostKeys] = {}
_cache_lock = threading.Lock()


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    """The keys of a known_hosts file (empty if it does not exist), cached while the file is unchanged."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return paramiko.HostKeys()
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        keys = _cache.get(key)
        if keys is None:
            keys = paramiko.HostKeys()
            keys.load(str(path))  # OSError / SSHException: the caller says which file
            _cache.clear()  # one file per inventory, in practice: keep the newest only
            _cache[key] = keys
        return keys


def known_keys(path: Path, host: str, port: int) -> dict[str, paramiko.PKey]:
    """Keys known for host:port, by key type (hashed entries included)."""
    return dict(load_known_hosts(path).lookup(known_hosts_name(host, port)) or {})


def preferred_key_types(known: dict[str, paramiko.PKey], offered: list[str]) -> list[str]:
    """Host key algorithms, those of keys already known first (as OpenSSH orders them)."""
    first: list[str] = []
    for kind in known:
        first += [s for s in _RSA_SIGNATURES if s in offered] if kind == "ssh-rsa" else [kind]
    return [k for k in first if k in offered] + [k for k in offered if k not in first]


def check_host_key(
    *, worker: str, hop: str | None, path: Path, host: str, port: int, key: paramiko.PKey
) -> None:
    """Refuse `key` unless known_hosts has it for host:port.

    `hop` names a jump host on the way to `worker` (None for the worker itself):
    it appears in the message, so that the person knows which machine's key is at stake.
    """
    known = known_keys(path, host, port)
    where = known_hosts_name(host, port)
    what = f"jump host {hop} ({where}) on the way to {worker}" if hop else where
    trust = f"sshexec trust --worker {worker}"
    if not known:
        raise UnknownHostKey(
            worker,
            f"host key of {what} is unknown ({key.get_name()} {fingerprint(key)}); refusing to connect",
            fingerprint=fingerprint(key),
            hop=hop,
            hint=f"if that fingerprint is right, run: {trust}" + (" (it offers the key of every hop)" if hop else ""),
        )
    expected = known.get(key.get_name())
    if expected != key:
        olds = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known.values())
        raise ChangedHostKey(
            worker,
            f"HOST KEY CHANGED for {what}: known_hosts ({path}) has {olds}, the host now offers "
            f"{key.get_name()} {fingerprint(key)}. Refusing to connect: this may be a man-in-the-middle attack",
            fingerprint=fingerprint(key),
            hop=hop,
            hint=f"if that host was really reinstalled, run: {trust} --replace",
        )


# -- writing (sshexec trust only) --------------------------------------------------


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside `path`, so that two `sshexec trust` never rewrite it at once."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _names(line: str, name: str) -> bool:
    """True if this known_hosts line is about `name` (plain or hashed)."""
    entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
    if entry is None:
        return False
    for host in entry.hostnames:
        if host == name or host.startswith("|1|") and paramiko.HostKeys.hash_host(name, host) == host:
            return True
    return False


def add_known_host(path: Path, name: str, key: paramiko.PKey, *, replace: bool = False) -> None:
    """Append `name key` to known_hosts (dropping `name`'s other lines with `replace`), atomically and under a lock."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _file_lock(path):
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        if replace:
            lines = [line for line in lines if not _names(line, name)]
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"{name} {key.get_name()} {key.get_base64()}\n")
        # A unique temporary name in the same directory: os.replace is atomic there.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.writelines(lines)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
