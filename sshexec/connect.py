"""Connecting to a worker: its route (jump hosts first), every hop's host key, and authentication.

    route(worker)        the hops to cross: the inventory's `jump:`, else ProxyJump
                         from ~/.ssh/config; each resolved through ~/.ssh/config
    open_link(worker)    a Link: an authenticated paramiko Transport to the worker,
                         opened through the route. Workers behind the same jump
                         host share one connection to it (one forwarded channel each)

Every hop's host key is checked against the *worker's* known_hosts before
anything is sent to it (hostkeys.check_host_key). Keys come from the
inventory's identity_file (with its certificate: certificate_file, or
KEY-cert.pub beside it as OpenSSH does), else from ~/.ssh/config's
IdentityFile, the SSH agent (SSH_AUTH_SOCK) and ~/.ssh/id_*.

This module and connection.py are the only places where paramiko's errors are
caught and turned into sshexec's (errors.ConnectError and below).
"""

from __future__ import annotations

import copy
import getpass
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from .errors import AuthError, UnknownHostKey, UnreachableError
from .gate import Gate
from .hostkeys import check_host_key, known_keys, preferred_key_types
from .inventory import Worker
from .retry import retry

log = logging.getLogger("sshexec")

# Connection starts in flight at once to one sshd (host, port). sshd drops
# unauthenticated connections past its MaxStartups (10 by default): stay below
# it, and after each drop one fewer, down to one at a time (gate.Gate). Seen
# with MaxStartups 2 on a loaded machine: sshd went on dropping at two at once,
# its count lagging behind logins already done.
MAX_STARTS_PER_HOST = 4
# sshd that drops a connection before its banner (MaxStartups reached) is asked
# again this many times, whatever the unreachable-retry setting.
DROP_RETRIES = 6
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


# -- ~/.ssh/config ---------------------------------------------------------------------

_ssh_config_obj = None
_ssh_config_lock = threading.Lock()


def ssh_config():
    """One fabric Config for the process: ~/.ssh/config, or $SSHEXEC_SSH_CONFIG if set."""
    global _ssh_config_obj
    with _ssh_config_lock:
        if _ssh_config_obj is None:
            import fabric

            override = os.environ.get("SSHEXEC_SSH_CONFIG")
            if override is not None:
                _ssh_config_obj = fabric.Config(runtime_ssh_path=override or os.devnull)
            else:
                _ssh_config_obj = fabric.Config()
        return _ssh_config_obj


def reset_ssh_config() -> None:
    """Forget the parsed ~/.ssh/config (tests point SSHEXEC_SSH_CONFIG elsewhere)."""
    global _ssh_config_obj
    with _ssh_config_lock:
        _ssh_config_obj = None


def _lookup(host: str) -> dict:
    return dict(ssh_config().base_ssh_config.lookup(host))


# -- the route ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One machine to log in to on the way: a jump host or the worker itself."""

    label: str  # how messages name it: the worker's name or the jump host as written
    host: str  # after ~/.ssh/config
    port: int
    user: str
    identity_file: Path | None  # from the inventory; None: ssh config, agent, ~/.ssh
    certificate_file: Path | None
    config_identities: tuple[str, ...] = ()  # IdentityFile of ~/.ssh/config
    config_certificates: tuple[str, ...] = ()  # CertificateFile of ~/.ssh/config
    proxy_command: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _endpoint(label: str, host: str, port: int | None, user: str | None, identity: Path | None, cert: Path | None) -> Endpoint:
    cfg = _lookup(host)
    return Endpoint(
        label=label,
        host=cfg.get("hostname", host),
        port=int(port or cfg.get("port") or 22),
        user=user or cfg.get("user") or getpass.getuser(),
        identity_file=identity,
        certificate_file=cert,
        config_identities=tuple(cfg.get("identityfile") or ()),
        config_certificates=tuple(cfg.get("certificatefile") or ()),
        proxy_command=cfg.get("proxycommand") if cfg.get("proxycommand", "none").lower() != "none" else None,
    )


def _proxy_jump(worker: Worker) -> list[Endpoint]:
    """ProxyJump of ~/.ssh/config for the worker's host: `[user@]host[:port]`, comma-separated."""
    value = _lookup(worker.host).get("proxyjump")
    if not value or value.lower() == "none":
        return []
    hops = []
    for word in value.split(","):
        word = word.strip()
        user, _, rest = word.rpartition("@")
        host, port = rest, None
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            port = tail.removeprefix(":") or None
        elif rest.count(":") == 1:
            host, port = rest.split(":")
        if port is not None and not port.isdigit():
            raise UnreachableError(worker.name, f"cannot read ProxyJump {value!r} in your ssh config", hint="write it as [user@]host[:port], comma-separated")
        hops.append(_endpoint(word, host, int(port) if port else None, user or None, worker.identity_file, worker.certificate_file))
    return hops


def route(worker: Worker) -> list[Endpoint]:
    """Every machine to log in to, jump hosts first, the worker last."""
    if worker.jump:
        hops = [_endpoint(h.label, h.host, h.port, h.user, h.identity_file, h.certificate_file) for h in worker.jump]
    else:
        hops = _proxy_jump(worker)
    final = _endpoint(worker.name, worker.host, worker.port, worker.user, worker.identity_file, worker.certificate_file)
    return [*hops, final]


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
            raise UnreachableError(worker, f"the connection to {where} failed during authentication: {_reason(exc)}") from None
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


# -- opening one hop -----------------------------------------------------------------------

_start_gates: dict[tuple[str, int], Gate] = {}
_start_lock = threading.Lock()


def _start_gate(host: str, port: int) -> Gate:
    """Connection starts in flight to one sshd (host, port), for the whole process."""
    with _start_lock:
        return _start_gates.setdefault((host, port), Gate(MAX_STARTS_PER_HOST, what=f"a connection to {host}:{port} before its handshake (MaxStartups)"))


class _Dropped(Exception):
    """The server closed the connection before its banner: MaxStartups, most likely."""


def _sock(ep: Endpoint, via: paramiko.Transport | None, timeout: float, worker: str, hop: str | None):
    where = f"jump host {hop} ({ep.address})" if hop else ep.address
    who = "the jump host" if hop else "the worker"
    if via is not None:
        try:
            chan = via.open_channel("direct-tcpip", (ep.host, ep.port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:
            raise UnreachableError(worker, f"the jump host could not reach {where}: {exc.text or 'connect failed'}", hint="check the worker's host and port as seen from the jump host") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise UnreachableError(worker, f"the jump host could not reach {where}: {_reason(exc)}") from None
        return chan
    if ep.proxy_command:
        try:
            return paramiko.ProxyCommand(ep.proxy_command)
        except (paramiko.SSHException, OSError) as exc:
            raise UnreachableError(worker, f"ProxyCommand for {ep.host} failed: {_reason(exc)}", hint="check ProxyCommand in your ssh config") from None
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except socket.gaierror as exc:
        raise UnreachableError(worker, f"cannot resolve {ep.host}: {exc.strerror}", hint="check host in the inventory or your ~/.ssh/config") from None
    except (socket.timeout, TimeoutError):
        raise UnreachableError(worker, f"timed out connecting to {where} after {timeout:g}s", hint=f"check that {who} is up and that no firewall drops the connection") from None
    except OSError as exc:
        raise UnreachableError(worker, f"cannot reach {where}: {_reason(exc)}", hint=f"check that {who} is up, that sshd listens on that port, and host/port in the inventory") from None
    # Our own socket, for TCP_NODELAY: with Nagle on, every extra channel waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_hop(
    ep: Endpoint,
    *,
    worker: Worker,
    hop: str | None,
    via: paramiko.Transport | None = None,
    on_host_key: Callable[[Endpoint, paramiko.PKey], None] | None = None,
    auth: bool = True,
) -> paramiko.Transport:
    """SSH to one endpoint (directly or through `via`), host key checked, authenticated.

    `on_host_key(ep, key)` replaces the known_hosts check (sshexec trust uses it).
    """
    timeout = worker.connect_timeout
    gate = _start_gate(ep.host, ep.port)

    def once() -> paramiko.Transport:
        gate.acquire()
        # sshd counts a connection against MaxStartups from its accept until the login is done.
        start = object()
        dropped = False
        try:
            return _connect_once(ep, worker=worker, hop=hop, via=via, on_host_key=on_host_key, auth=auth, timeout=timeout, on_admitted=lambda: gate.admitted(start))
        except _Dropped:
            dropped = True
            raise
        finally:
            gate.release(start)
            if dropped:
                gate.refused(lagging=True)

    def again(attempt: int, exc: BaseException, wait: float) -> None:
        log.info("%s: %s dropped the connection before the handshake; trying again in %.1fs", worker.name, ep.address, wait)

    try:
        return retry(once, attempts=DROP_RETRIES, delay=0.2, backoff=2.0, max_delay=2.0, retry_if=lambda exc: isinstance(exc, _Dropped), on_retry=again)
    except _Dropped as exc:
        where = f"jump host {hop} ({ep.address})" if hop else ep.address
        raise UnreachableError(worker.name, f"{where} closed the connection before the SSH handshake, {DROP_RETRIES} times ({exc})", hint="sshd may be refusing connections (MaxStartups), or this is not an SSH server") from None


def _connect_once(ep, *, worker: Worker, hop, via, on_host_key, auth: bool, timeout: float, on_admitted: Callable[[], None]) -> paramiko.Transport:
    where = f"jump host {hop} ({ep.address})" if hop else ep.address
    known: dict = {}
    if on_host_key is None:
        try:
            known = known_keys(worker.known_hosts, ep.host, ep.port)
        except (OSError, paramiko.SSHException) as exc:
            raise UnknownHostKey(worker.name, f"cannot read known_hosts {worker.known_hosts}: {_reason(exc)}", fingerprint="", hop=hop, hint="fix or remove that file, then run sshexec trust") from None
    sock = _sock(ep, via, timeout, worker.name, hop)
    transport = paramiko.Transport(sock)
    ok = False
    try:
        transport.banner_timeout = timeout
        transport.auth_timeout = timeout
        transport.handshake_timeout = timeout
        opts = transport.get_security_options()
        opts.key_types = preferred_key_types(known, list(opts.key_types))
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            cause = exc if isinstance(exc, OSError | EOFError) else exc.__cause__ or exc.__context__
            if isinstance(cause, (EOFError, ConnectionResetError, BrokenPipeError)):
                raise _Dropped(_reason(exc)) from None
            if isinstance(cause, (socket.timeout, TimeoutError)) or isinstance(exc, (socket.timeout, TimeoutError)):
                raise UnreachableError(worker.name, f"{where} sent no SSH banner within {timeout:g}s", hint="check that an SSH server answers on that port") from None
            raise UnreachableError(worker.name, f"SSH handshake with {where} failed: {_reason(exc)}", hint="check that an SSH server answers on that port") from None
        on_admitted()
        key = transport.get_remote_server_key()
        if on_host_key is not None:
            on_host_key(ep, key)
        else:
            check_host_key(worker=worker.name, hop=hop, path=worker.known_hosts, host=ep.host, port=ep.port, key=key)
        if auth:
            authenticate(transport, ep, worker.name, hop)
        transport.set_keepalive(15)
        ok = True
        return transport
    finally:
        if not ok:
            transport.close()


# -- shared jump-host connections --------------------------------------------------------------


class _Gateway:
    def __init__(self):
        self.lock = threading.Lock()
        self.transport: paramiko.Transport | None = None
        self.users = 0


_gateways: dict[tuple, _Gateway] = {}
_gateways_lock = threading.Lock()


def _gateway_key(worker: Worker, chain: list[Endpoint]) -> tuple:
    return (str(worker.known_hosts), worker.connect_timeout, tuple(chain))


def _acquire_gateway(worker: Worker, chain: list[Endpoint], via: paramiko.Transport | None) -> paramiko.Transport:
    """The shared, authenticated connection to the last endpoint of `chain` (opened once)."""
    key = _gateway_key(worker, chain)
    with _gateways_lock:
        gw = _gateways.setdefault(key, _Gateway())
        gw.users += 1
    try:
        with gw.lock:
            if gw.transport is None or not gw.transport.is_active():
                gw.transport = connect_hop(chain[-1], worker=worker, hop=chain[-1].label, via=via)
            return gw.transport
    except BaseException:
        _release_gateway(key)
        raise


def _release_gateway(key: tuple) -> None:
    with _gateways_lock:
        gw = _gateways.get(key)
        if gw is None:
            return
        gw.users -= 1
        if gw.users > 0:
            return
        del _gateways[key]
    if gw.transport is not None:
        gw.transport.close()


@dataclass
class Link:
    """An authenticated transport to a worker, and the shared jump-host connections it holds."""

    transport: paramiko.Transport
    route: list[Endpoint]
    _gateways: list[tuple]

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            for key in reversed(self._gateways):
                _release_gateway(key)
            self._gateways = []


def open_link(worker: Worker) -> Link:
    """Connect to `worker` through its jump hosts; every hop's host key verified."""
    hops = route(worker)
    held: list[tuple] = []
    via: paramiko.Transport | None = None
    try:
        for i in range(len(hops) - 1):
            via = _acquire_gateway(worker, hops[: i + 1], via)
            held.append(_gateway_key(worker, hops[: i + 1]))
        transport = connect_hop(hops[-1], worker=worker, hop=None, via=via)
    except BaseException:
        for key in reversed(held):
            _release_gateway(key)
        raise
    return Link(transport, hops, held)


def walk_route(worker: Worker, on_host_key: Callable[[Endpoint, paramiko.PKey, str | None], None]) -> list[Endpoint]:
    """Visit every hop's host key in order (sshexec trust): `on_host_key(ep, key, hop)` decides, raising to stop.

    `hop` is the jump host's label, None for the worker itself. Jump hosts are
    logged in to (their keys having passed `on_host_key`), so that the next
    hop's key can be fetched through them; the worker itself is not.
    """
    hops = route(worker)
    opened: list[paramiko.Transport] = []
    try:
        via = None
        for i, ep in enumerate(hops):
            hop = None if i == len(hops) - 1 else ep.label
            t = connect_hop(ep, worker=worker, hop=hop, via=via, on_host_key=lambda e, k, hop=hop: on_host_key(e, k, hop), auth=hop is not None)
            opened.append(t)
            via = t
    finally:
        for t in reversed(opened):
            t.close()
    return hops


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NoValidConnectionsError):
        errs = {str(e).split("] ", 1)[-1] for e in exc.errors.values()}
        return "; ".join(sorted(errs)) or "connection refused"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
