"""Logging in to one hop: which keys to offer, with their OpenSSH certificates, and in what order.

    load_key(worker, path, cert)   a private key, with its certificate (certificate_file, or
                                   KEY-cert.pub beside it as OpenSSH does), loaded once
    read_certificate(key)          what a certificate says (principals, validity), to explain
                                   a refusal before the worker does
    authenticate(transport, ...)   the inventory's identity_file, else ~/.ssh/config's
                                   IdentityFile, the SSH agent (SSH_AUTH_SOCK) and ~/.ssh/id_*
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import paramiko

from ..errors import AuthError, UnreachableError, reason
from ._route import Endpoint

log = logging.getLogger("sshexec")

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


# -- keys --------------------------------------------------------------------------------

_keys: dict[tuple[str, str | None], paramiko.PKey] = {}
_keys_lock = threading.Lock()


def load_key(worker: str, path: Path | str, cert: Path | str | None = None) -> paramiko.PKey:
    """A private key (with its certificate, if it has one), loaded once per process."""
    path = os.path.expanduser(str(path))
    cache_key = (path, str(cert) if cert else None)
    with _keys_lock:
        key = _keys.get(cache_key)
    if key is not None:
        return key
    beside = f"{path}-cert.pub"
    try:
        # PKey.from_path also loads PATH-cert.pub when it exists, as OpenSSH does.
        key = paramiko.PKey.from_path(path)
    except ValueError as exc:
        if cert is None and os.path.exists(beside) and "incompatible" in str(exc):
            raise AuthError(worker, f"the certificate {beside} does not fit identity_file {path}: {exc}", hint=_CERT_HINT) from None
        raise AuthError(worker, f"cannot read identity_file {path}: {exc}", hint="it must be an OpenSSH or PEM private key") from None
    except FileNotFoundError:
        raise AuthError(worker, f"identity_file {path} does not exist", hint="fix identity_file in the inventory") from None
    except paramiko.PasswordRequiredException:
        raise AuthError(worker, f"identity_file {path} is protected by a passphrase", hint="load it into ssh-agent (ssh-add) and remove identity_file from the inventory") from None
    except (paramiko.SSHException, OSError) as exc:
        raise AuthError(worker, f"cannot read identity_file {path}: {exc}", hint="it must be an OpenSSH or PEM private key") from None
    if cert is not None:
        cert = os.path.expanduser(str(cert))
        if not os.path.isfile(cert):
            raise AuthError(worker, f"certificate_file {cert} does not exist", hint="fix certificate_file in the inventory")
        try:
            key.load_certificate(cert)
        except (ValueError, OSError, paramiko.SSHException) as exc:
            raise AuthError(worker, f"certificate_file {cert} does not fit identity_file {path}: {exc}", hint=_CERT_HINT) from None
        source = f"certificate_file {cert}"
    else:
        source = f"the certificate {beside}" if getattr(key, "public_blob", None) is not None else None
    # paramiko checks only that the certificate's key type matches; OpenSSH would
    # offer it and be refused, with nothing saying why.
    if source is not None and not certifies(key):
        raise AuthError(worker, f"{source} does not fit identity_file {path}: it certifies another public key", hint=_CERT_HINT)
    with _keys_lock:
        _keys[cache_key] = key
    return key


def forget_keys() -> None:
    """Drop every private key loaded: a process that outlives its command keeps none (ssh/pool.py)."""
    with _keys_lock:
        _keys.clear()


@dataclass(frozen=True)
class Certificate:
    """What matters of an OpenSSH user certificate to explain a refusal."""

    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int

    def problem(self, user: str, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        if now >= self.valid_before:
            return f"certificate {self.key_id!r} expired at {_utc(self.valid_before)}"
        if now < self.valid_after:
            return f"certificate {self.key_id!r} is not valid before {_utc(self.valid_after)}"
        if self.principals and user not in self.principals:
            return f"certificate {self.key_id!r} is for {', '.join(self.principals)}, not for user {user}"
        return None


def _utc(t: int) -> str:
    return "forever" if t >= 2**63 else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


_CERT_HINT = "the certificate must be of that key: compare ssh-keygen -L -f CERT with ssh-keygen -l -f KEY"


def _parse_certificate(key: paramiko.PKey) -> tuple[Certificate, bytes] | None:
    """The certificate loaded on `key` and the public key it certifies (as in the key's own blob), or None."""
    blob = getattr(key, "public_blob", None)
    if blob is None or "-cert-" not in blob.key_type:
        return None
    try:
        msg = paramiko.Message(blob.key_blob)
        kind = msg.get_text()
        msg.get_string()  # nonce
        start = msg.packet.tell()
        if kind.startswith("ssh-rsa"):
            msg.get_mpint(), msg.get_mpint()
        elif kind.startswith("ecdsa-"):
            msg.get_string(), msg.get_string()
        elif kind.startswith("ssh-ed25519"):
            msg.get_string()
        else:
            return None
        certified = blob.key_blob[start : msg.packet.tell()]
        msg.get_int64()  # serial
        msg.get_int()  # type
        key_id = msg.get_text()
        principals = paramiko.Message(msg.get_string())
        names = []
        while True:
            name = principals.get_text()
            if not name:
                break
            names.append(name)
        return Certificate(key_id, tuple(names), msg.get_int64(), msg.get_int64()), certified
    except Exception:  # noqa: BLE001 - a certificate we cannot read explains nothing
        return None


def read_certificate(key: paramiko.PKey) -> Certificate | None:
    """The certificate loaded on `key`, or None (PROTOCOL.certkeys)."""
    parsed = _parse_certificate(key)
    return parsed[0] if parsed else None


def certifies(key: paramiko.PKey) -> bool:
    """True if the certificate loaded on `key` is for that very key (its public half)."""
    parsed = _parse_certificate(key)
    if parsed is None:
        return False
    own = paramiko.Message(key.asbytes())
    own.get_text()  # the key type; the fields after it are laid out as in the certificate
    return own.get_remainder() == parsed[1]


def _without_certificate(key: paramiko.PKey) -> paramiko.PKey:
    plain = copy.copy(key)
    plain.public_blob = None
    return plain


def _candidate_keys(ep: Endpoint, worker: str) -> Iterator[tuple[str, paramiko.PKey]]:
    """Keys to offer, in OpenSSH's order: the inventory's, else ssh config's, the agent's, ~/.ssh's."""
    if ep.identity_file is not None:
        yield from _with_plain(str(ep.identity_file), load_key(worker, ep.identity_file, ep.certificate_file))
        return
    certs = list(ep.config_certificates)
    for path in ep.config_identities:
        if os.path.exists(os.path.expanduser(path)):
            try:
                key = load_key(worker, path, certs.pop(0) if certs else None)
            except AuthError as exc:
                log.info("%s: skipping %s: %s", worker, path, exc.message)
            else:
                yield from _with_plain(path, key)
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = paramiko.Agent()
            for i, key in enumerate(agent.get_keys()):
                yield f"ssh-agent key {i + 1} ({key.get_name()} {key.fingerprint})", key
        except paramiko.SSHException as exc:
            log.info("%s: the SSH agent did not answer: %s", worker, exc)
    for name in DEFAULT_KEYS:
        path = Path.home() / ".ssh" / name
        if path.exists() and str(path) not in ep.config_identities:
            try:
                key = load_key(worker, path)
            except AuthError as exc:
                log.info("%s: skipping %s: %s", worker, path, exc.message)
            else:
                yield from _with_plain(str(path), key)


def _with_plain(name: str, key: paramiko.PKey) -> Iterator[tuple[str, paramiko.PKey]]:
    """The key with its certificate, then without it: OpenSSH offers both, in that order."""
    yield (f"{name} with its certificate", key) if read_certificate(key) else (name, key)
    if getattr(key, "public_blob", None) is not None:
        yield name, _without_certificate(key)


def _stat(path: str | Path | None) -> tuple | None:
    if path is None:
        return None
    try:
        st = os.stat(os.path.expanduser(str(path)))
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def login_stamp(ep: Endpoint) -> tuple:
    """What the login to `ep` would read, as it is now: every key and certificate file's (inode, size, mtime), the SSH agent.

    Two logins with the same stamp offer the same keys; a changed one (a new identity,
    a renewed certificate, another agent) is another login: a pooled connection made
    with the old one is not lent for it (pool.py).
    """
    files: list[str] = []
    if ep.identity_file is not None:
        path = os.path.expanduser(str(ep.identity_file))
        files += [path, f"{path}-cert.pub"] + ([str(ep.certificate_file)] if ep.certificate_file else [])
        agent = None
    else:
        files += [*ep.config_identities, *ep.config_certificates, *(f"{p}-cert.pub" for p in ep.config_identities)]
        files += [str(Path.home() / ".ssh" / name) for name in DEFAULT_KEYS]
        files += [f"{f}-cert.pub" for f in files[-len(DEFAULT_KEYS):]]
        sock = os.environ.get("SSH_AUTH_SOCK")
        # The agent's socket named by a digest, never by the value: a pool key outlives the command's environment.
        agent = (hashlib.sha256(sock.encode()).hexdigest()[:16], _stat(sock)) if sock else None
    return (tuple((f, _stat(f)) for f in files), agent)


def authenticate(transport: paramiko.Transport, ep: Endpoint, worker: str, hop: str | None) -> None:
    """Public-key authentication with the first key the server accepts; AuthError saying why if none."""
    tried: list[str] = []
    problems: list[str] = []
    where = f"jump host {hop} ({ep.address}) on the way to {worker}" if hop else ep.address
    for name, key in _candidate_keys(ep, worker):
        tried.append(name)
        try:
            transport.auth_publickey(ep.user, key)
            if transport.is_authenticated():
                return
        except paramiko.BadAuthenticationType as exc:
            raise AuthError(worker, f"{where} does not accept public keys for {ep.user} (it allows: {', '.join(exc.allowed_types)})", hint="enable PubkeyAuthentication in the worker's sshd") from None
        except paramiko.AuthenticationException:
            cert = read_certificate(key)
            problem = cert.problem(ep.user) if cert else None
            if problem:
                problems.append(problem)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise UnreachableError(worker, f"the connection to {where} failed during authentication: {reason(exc)}") from None
    if not tried:
        raise AuthError(
            worker,
            f"no key to log in to {where} with: identity_file is not set in the inventory, "
            + ("the SSH agent holds no key" if os.environ.get("SSH_AUTH_SOCK") else "there is no SSH agent (SSH_AUTH_SOCK is not set)")
            + ", and ~/.ssh has no id_ed25519, id_ecdsa or id_rsa",
            hint="set identity_file in the inventory, or start ssh-agent and ssh-add your key",
        )
    if problems:
        raise AuthError(worker, f"authentication failed for user {ep.user} at {where}: {'; '.join(problems)}", hint="ask your SSH certificate authority for a new certificate (ssh-keygen -L -f CERT shows it)")
    raise AuthError(
        worker,
        f"authentication failed for user {ep.user} at {where} with {', '.join(tried)}",
        hint="check identity_file (or certificate_file) and user in the inventory, and that the public key is in the worker's authorized_keys",
    )
