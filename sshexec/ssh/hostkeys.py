"""Host keys: the check every hop of a connection passes, and the one writer of known_hosts.

sshexec verifies every host key it meets, bastions included, against the
worker's known_hosts file, read as OpenSSH reads it (known_hosts.py): plain
keys, `@cert-authority` lines (a host certificate signed by a CA trusted for
that host, checked by hostcert.py) and `@revoked` lines. `judge()` says how a
key compares; `check_host_key()` refuses what is not accepted: an unknown key
(`UnknownHostKey`, with its fingerprint and the `sshexec trust` command that
would add it), a changed key, loudly (`ChangedHostKey`), a revoked key
(`RevokedHostKey`), a host certificate no trusted CA vouches for
(`HostCertificateError`). Nothing is added to known_hosts here; `sshexec
trust` is the only writer, through `add_known_host()`, which holds a lock
while it rewrites the file.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import paramiko

from ..errors import ChangedHostKey, HostCertificateError, HostKeyError, RevokedHostKey, UnknownHostKey
from .hostcert import CERT_SUFFIX, presented, problem
from .known_hosts import HostEntry, KnownHosts, hosts_match

# When known_hosts holds an ssh-rsa key, servers are asked for these signature types.
_RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    return key.fingerprint


def preferred_key_types(entry: HostEntry, offered: list[str]) -> list[str]:
    """Host key algorithms in the order to ask for them, as OpenSSH orders them.

    Certificate types first when a CA is trusted for the host, then the types of
    keys already known, then the rest.
    """
    first: list[str] = [k for k in offered if k.endswith(CERT_SUFFIX)] if entry.cas else []
    for kind in entry.key_types:
        first += [s for s in _RSA_SIGNATURES if s in offered] if kind == "ssh-rsa" else [kind]
    first = [k for k in dict.fromkeys(first) if k in offered]
    return first + [k for k in offered if k not in first]


@dataclass(frozen=True)
class Verdict:
    """How a host key compares with known_hosts."""

    status: str  # known | certified (by a trusted CA) | unknown | changed | revoked | refused (a certificate)
    name: str  # the host's known_hosts name
    key: paramiko.PKey
    known: tuple[str, ...] = ()  # the plain keys known for the host ("type SHA256:…")
    ca: str = ""  # certified: the CA line that vouches for it
    reason: str = ""  # revoked, refused: why; unknown, changed: what else is worth knowing

    @property
    def accepted(self) -> bool:
        return self.status in ("known", "certified")


def judge(path: Path, host: str, port: int, key: paramiko.PKey) -> Verdict:
    """Compare the key host:port presented with known_hosts (OSError if the file cannot be read).

    As OpenSSH's client: a revoked key (or a certificate signed by a revoked CA) is
    refused; a host certificate is accepted when a CA trusted for the host vouches
    for it; otherwise the plain key must be known (a certificate that no CA vouches
    for is judged by its key alone).
    """
    kh = KnownHosts.load(path)
    entry = kh.lookup(host, port)
    blob = key.asbytes()  # the key itself, without a certificate
    known = tuple(f"{k.key_type} {k.fingerprint}" for k in entry.keys)
    v = lambda status, **kw: Verdict(status, entry.name, key, known, **kw)  # noqa: E731
    if r := kh.revoked(blob):
        return v("revoked", reason=f"its key {key.get_name()} {fingerprint(key)} is revoked in known_hosts ({r.where}: @revoked {r.hosts})")
    try:
        hc = presented(key)
    except ValueError as exc:
        return v("refused", reason=f"it presented a host certificate that cannot be read ({exc})")
    why = ""
    if hc is not None:
        if r := kh.revoked(hc.ca_blob):
            return v("revoked", reason=f"the CA that signed its certificate, {r.key_type} {r.fingerprint}, is revoked in known_hosts ({r.where}: @revoked {r.hosts})")
        if entry.cas:
            why = problem(hc, entry.cas, host) or ""
            if not why:
                return v("certified", ca=entry.ca(hc.ca_blob).describe())  # type: ignore[union-attr]
        else:
            why = f"it presented a certificate signed by CA {hc.ca_fingerprint}, which known_hosts does not trust for {entry.name}"
    if entry.key(blob) is not None:
        return v("known")  # as OpenSSH: a certificate no CA vouches for still passes on a known key
    if hc is not None and entry.cas:
        return v("refused", reason=why)
    if hc is None and entry.cas:
        cas = " or ".join(c.describe() for c in entry.cas)
        why = f"known_hosts trusts {cas} for it, but it presented a plain key, no host certificate"
    return v("changed" if entry.keys else "unknown", reason=why)


def refusal(v: Verdict, *, worker: str, hop: str | None, path: Path) -> HostKeyError:
    """The error that refuses a key `judge()` did not accept."""
    what = f"jump host {hop} ({v.name}) on the way to {worker}" if hop else v.name
    trust = f"sshexec trust --worker {worker}"
    fp = fingerprint(v.key)
    note = f" ({v.reason})" if v.reason and v.status in ("unknown", "changed") else ""
    if v.status == "revoked":
        return RevokedHostKey(
            worker, f"host key of {what} refused: {v.reason}. Refusing to connect", fingerprint=fp, hop=hop,
            hint="a revoked key is never accepted: give the host a new host key, or remove the @revoked line if it is a mistake",
        )  # fmt: skip
    if v.status == "refused":
        return HostCertificateError(
            worker, f"host certificate of {what} refused: {v.reason}; known_hosts ({path}) has no plain key for it either. Refusing to connect",
            fingerprint=fp, hop=hop,
            hint="renew the host's certificate with the CA that known_hosts trusts for it (ssh-keygen -s CA -h -n NAME), or fix that @cert-authority line",
        )  # fmt: skip
    if v.status == "unknown":
        return UnknownHostKey(
            worker, f"host key of {what} is unknown ({v.key.get_name()} {fp}){note}; refusing to connect", fingerprint=fp, hop=hop,
            hint=f"if that fingerprint is right, run: {trust}" + (" (it offers the key of every hop)" if hop else ""),
        )  # fmt: skip
    return ChangedHostKey(
        worker,
        f"HOST KEY CHANGED for {what}: known_hosts ({path}) has {', '.join(v.known)}, the host now offers "
        f"{v.key.get_name()} {fp}{note}. Refusing to connect: this may be a man-in-the-middle attack",
        fingerprint=fp,
        hop=hop,
        hint=f"if that host was really reinstalled, run: {trust} --replace",
    )


def check_host_key(*, worker: str, hop: str | None, path: Path, host: str, port: int, key: paramiko.PKey) -> Verdict:
    """Refuse `key` unless known_hosts accepts it for host:port (a known key, or a certificate a trusted CA signed).

    `hop` names a jump host on the way to `worker` (None for the worker itself):
    it appears in the message, so that the person knows which machine's key is at stake.
    """
    v = judge(path, host, port, key)
    if not v.accepted:
        raise refusal(v, worker=worker, hop=hop, path=path)
    return v


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
    """True if this plain key line is about `name` (plain or hashed): the lines `--replace` drops.

    Marker lines (@cert-authority, @revoked) are never dropped, nor pattern lines (`*`, `?`)
    that merely match it: only lines naming the host itself go.
    """
    words = line.split()
    if len(words) < 3 or words[0].startswith(("#", "@")):
        return False
    hosts = words[0]
    if hosts.startswith("|"):
        return hosts_match(hosts, name)
    return any(h.lower() == name.lower() for h in hosts.split(","))


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
