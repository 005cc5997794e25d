"""Connecting to a worker: every hop of its route (_route.py), each hop's host key, then logging in (_login.py).

    open_link(worker)    a Link: an authenticated paramiko Transport to the worker,
                         opened through the route. Workers behind the same jump
                         host share one connection to it (one forwarded channel each)

Every hop's host key is checked against the *worker's* known_hosts before
anything is sent to it (hostkeys.check_host_key). Keys come from the
inventory's identity_file (with its certificate: certificate_file, or
KEY-cert.pub beside it as OpenSSH does), else from ~/.ssh/config's
IdentityFile, the SSH agent (SSH_AUTH_SOCK) and ~/.ssh/id_*.

This module, _login.py and connection.py are the only places where paramiko's
errors are caught and turned into sshexec's (errors.ConnectError and below).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable

import paramiko

from ..config.inventory import Worker
from ..core.retry import retry
from ..errors import UnknownHostKey, UnreachableError, reason
from ._companion import Ahead, Companion
from ._gate import Gate
from ._login import authenticate, login_stamp
from ._route import Endpoint, route
from .hostkeys import check_host_key, preferred_key_types
from .known_hosts import HostEntry, KnownHosts

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
            raise UnreachableError(worker, f"the jump host could not reach {where}: {reason(exc)}") from None
        return chan
    if ep.proxy_command:
        try:
            return paramiko.ProxyCommand(ep.proxy_command)
        except (paramiko.SSHException, OSError) as exc:
            raise UnreachableError(worker, f"ProxyCommand for {ep.host} failed: {reason(exc)}", hint="check ProxyCommand in your ssh config") from None
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except socket.gaierror as exc:
        raise UnreachableError(worker, f"cannot resolve {ep.host}: {exc.strerror}", hint="check host in the inventory or your ~/.ssh/config") from None
    except (socket.timeout, TimeoutError):
        raise UnreachableError(worker, f"timed out connecting to {where} after {timeout:g}s", hint=f"check that {who} is up and that no firewall drops the connection") from None
    except OSError as exc:
        raise UnreachableError(worker, f"cannot reach {where}: {reason(exc)}", hint=f"check that {who} is up, that sshd listens on that port, and host/port in the inventory") from None
    # Our own socket, for TCP_NODELAY: with Nagle on, every extra channel waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Transport(paramiko.Transport):
    """paramiko's Transport, asking for host key algorithms in the order of `key_order` first.

    paramiko offers the certificate types (`*-cert-v01@openssh.com`) after all the plain
    ones, so a server that has both would never show its certificate; when known_hosts
    trusts a CA for the host, they must come first (hostkeys.preferred_key_types).
    """

    key_order: tuple[str, ...] = ()

    @property
    def offered_keys(self) -> list[str]:
        """What paramiko would ask for: plain types, then their certificate types."""
        return list(super().preferred_keys)

    @property
    def preferred_keys(self):
        offered = self.offered_keys
        first = [k for k in self.key_order if k in offered]
        return tuple(first + [k for k in offered if k not in first])


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
    try:
        known: HostEntry = KnownHosts.load(worker.known_hosts).lookup(ep.host, ep.port)
    except OSError as exc:
        raise UnknownHostKey(worker.name, f"cannot read known_hosts {worker.known_hosts}: {reason(exc)}", fingerprint="", hop=hop, hint="fix or remove that file, then run sshexec trust") from None
    sock = _sock(ep, via, timeout, worker.name, hop)
    transport = _Transport(sock)
    ok = False
    try:
        transport.banner_timeout = timeout
        transport.auth_timeout = timeout
        # start_client's own timeout must end a stalled key exchange first: paramiko's handshake
        # timer ends it with an EOFError, which would read as the server closing the connection.
        transport.handshake_timeout = timeout + 5
        transport.key_order = tuple(preferred_key_types(known, transport.offered_keys))
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            cause = exc if isinstance(exc, OSError | EOFError) else exc.__cause__ or exc.__context__
            closed = isinstance(cause, (EOFError, ConnectionResetError, BrokenPipeError))
            if closed and not transport.remote_version:  # no banner yet: sshd's MaxStartups drop
                raise _Dropped(reason(exc)) from None
            if closed:
                raise UnreachableError(worker.name, f"{where} closed the connection during the SSH handshake ({reason(exc)})", hint="check that an SSH server answers on that port") from None
            if isinstance(cause, (socket.timeout, TimeoutError)) or isinstance(exc, (socket.timeout, TimeoutError)):
                raise UnreachableError(worker.name, f"{where} sent no SSH banner within {timeout:g}s", hint="check that an SSH server answers on that port") from None
            raise UnreachableError(worker.name, f"SSH handshake with {where} failed: {reason(exc)}", hint="check that an SSH server answers on that port") from None
        if not transport.is_active() or not getattr(transport, "initial_kex_done", True):
            # start_client() returns quietly when its own timeout ends first: a port that accepted
            # and stays silent (a hung sshd, a tarpit, a forward to nothing). Same words as above.
            if not transport.remote_version:
                raise UnreachableError(worker.name, f"{where} sent no SSH banner within {timeout:g}s", hint="check that an SSH server answers on that port")
            raise UnreachableError(
                worker.name, f"the SSH handshake with {where} did not finish within {timeout:g}s",
                hint="the worker (or its sshd) may be overloaded; raise connect_timeout in the inventory",
            )  # fmt: skip
        on_admitted()
        key = transport.get_remote_server_key()
        if on_host_key is not None:
            on_host_key(ep, key)
        else:
            check_host_key(worker=worker.name, hop=hop, path=worker.known_hosts, host=ep.host, port=ep.port, key=key)
        if auth:
            authenticate(transport, ep, worker.name, hop)
            forget_credentials(transport)
        transport.set_keepalive(15)
        ok = True
        return transport
    finally:
        if not ok:
            transport.close()


def forget_credentials(transport: paramiko.Transport) -> None:
    """Drop what paramiko's auth handler still holds of the login (the private key, a password): the
    transport may outlive the command that logged in (pool.py), and needs none of it once authenticated."""
    handler = getattr(transport, "auth_handler", None)
    if handler is not None:
        handler.private_key = handler.password = handler.interactive_handler = None


# -- shared jump-host connections --------------------------------------------------------------


class _Gateway:
    def __init__(self):
        self.lock = threading.Lock()
        self.transport: paramiko.Transport | None = None
        self.users = 0


_gateways: dict[tuple, _Gateway] = {}
_gateways_lock = threading.Lock()


def _gateway_key(worker: Worker, chain: list[Endpoint]) -> tuple:
    # The login stamps: a jump host logged in to with a key file since changed is not shared with a new login.
    return (str(worker.known_hosts), worker.connect_timeout, tuple(chain), tuple(login_stamp(ep) for ep in chain))


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
    """An authenticated transport to a worker, and the shared jump-host connections it holds.

    `hops`: every endpoint of the route with the transport that reached it (jump hosts first),
    for checking each host key again before the link is lent once more (pool.py).
    """

    transport: paramiko.Transport
    route: list[Endpoint]
    _gateways: list[tuple]
    hops: list[tuple[Endpoint, paramiko.Transport]] = field(default_factory=list)
    pool_key: tuple | None = None  # set by pool.py: the login this link was made for
    # What the layers above keep about the worker while this link lives (worker/facts.py), and the
    # commands that run beside it as long as it lives (_companion.py): closed with it, and no hindrance
    # to keeping it (pool._clean).
    memo: dict = field(default_factory=dict)
    companions: list[Companion] = field(default_factory=list)
    shed: bool = False  # sshd refused a channel: no companion on this link any more (_companion.py)
    ahead: Ahead | None = None  # a command started ahead, waiting for the next stream of its kind (_companion.py)
    ahead_wanted: tuple | None = None  # (kind, command) to start ahead between commands (pool.py)

    def close(self) -> None:
        try:
            for companion in self.companions:
                companion.close()
            self.companions = []
            if self.ahead is not None:
                self.ahead.close()
                self.ahead = None
            self.memo.clear()
            self.transport.close()
        finally:
            for key in reversed(self._gateways):
                _release_gateway(key)
            self._gateways = []


def open_link(worker: Worker) -> Link:
    """Connect to `worker` through its jump hosts; every hop's host key verified."""
    hops = route(worker)
    held: list[tuple] = []
    reached: list[tuple[Endpoint, paramiko.Transport]] = []
    via: paramiko.Transport | None = None
    try:
        for i in range(len(hops) - 1):
            via = _acquire_gateway(worker, hops[: i + 1], via)
            held.append(_gateway_key(worker, hops[: i + 1]))
            reached.append((hops[i], via))
        transport = connect_hop(hops[-1], worker=worker, hop=None, via=via)
    except BaseException:
        for key in reversed(held):
            _release_gateway(key)
        raise
    return Link(transport, hops, held, [*reached, (hops[-1], transport)])


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
