"""Authenticated connections kept between commands, in a process that runs one command after another.

Only the agent's reusable children turn it on (`enable`); everywhere else a
Connection opens its link and closes it, as always. Once on:

    Connection.open()    borrows an idle link made for the very same login (`login_key`),
                         after checking it as if it were new: alive (one round trip), and
                         every hop's host key accepted by the known_hosts THIS command reads
    Connection.close()   gives it back (`give_back`) when it is clean: active, no channel
                         left open; a link is lent to one Connection at a time
    sweep()              closes links idle past their idle limit (SSHEXEC_CONNECTION_IDLE,
                         600 s by default, like OpenSSH's ControlPersist)

A link that fails a check is closed and the Connection dials a fresh one, whose own
checks then say what is wrong (a changed host key is refused exactly as before).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import paramiko

from ..agent.children import connection_idle as idle_limit  # noqa: F401 (Connection.open reads it here)
from ..config.inventory import Worker
from ..errors import HostKeyError
from . import _companion, _route
from ._dial import Link
from . import _login
from ._login import login_stamp
from .hostkeys import check_host_key

log = logging.getLogger("sshexec")

PROBE_TIMEOUT = 3.0
PER_LOGIN = 4  # idle links kept per login: a run's second connection to one worker (a lock's) may be kept too


@dataclass
class _Held:
    link: Link
    worker: str
    since: float  # time.time() it was given back
    limit: float


_on = False
_lock = threading.Lock()
_idle: dict[tuple, list[_Held]] = {}  # login key -> links not lent (taking one out is what lends it)


def enable() -> None:
    global _on
    _on = True


def active() -> bool:
    return _on


def login_key(worker: Worker) -> tuple:
    """Everything that makes a login what it is: user, host, port, the route through jump hosts (with
    ProxyCommand and the ssh config in force), every key and certificate file's stamp, the SSH agent, known_hosts."""
    hops = _route.route(worker)
    return (str(worker.known_hosts), tuple(hops), tuple(login_stamp(ep) for ep in hops))


def borrow(worker: Worker, key: tuple) -> Link | None:
    """An idle link made for `key`, checked (alive, every host key still trusted), or None: dial a fresh one."""
    stale: list[_Held] = []
    with _lock:
        for other, held in list(_idle.items()):
            # Links of this worker for another login (a changed key file, known_hosts, route) are dropped.
            if other != key and held and held[0].worker == worker.name:
                stale += _idle.pop(other)
        candidates = _idle.get(key, [])
        chosen = candidates.pop() if candidates else None  # the most recently used: the likeliest alive
        if not candidates:
            _idle.pop(key, None)
    for held in stale:
        log.info("%s: dropping a kept connection made for another login (a key file, known_hosts or the route changed)", held.worker)
        _close(held.link)
    if chosen is None:
        return None
    if _usable(worker, chosen.link):
        return chosen.link
    _close(chosen.link)
    return None


def _usable(worker: Worker, link: Link) -> bool:
    for i, (ep, transport) in enumerate(link.hops):
        hop = None if i == len(link.hops) - 1 else ep.label
        if not transport.is_active():
            log.info("%s: a kept connection to %s had ended; connecting again", worker.name, ep.address)
            return False
        try:
            check_host_key(worker=worker.name, hop=hop, path=worker.known_hosts, host=ep.host, port=ep.port, key=transport.get_remote_server_key())
        except HostKeyError:
            log.info("%s: known_hosts no longer accepts %s's key: dropping its kept connection", worker.name, ep.address)
            return False
    if not _alive(link.transport):
        log.info("%s: a kept connection did not answer; connecting again", worker.name)
        return False
    return True


def _alive(transport: paramiko.Transport) -> bool:
    """One global request answered (OpenSSH answers an unknown one with a failure: an answer all the same)."""
    answered = threading.Event()

    def ask() -> None:
        try:
            transport.global_request("keepalive@openssh.com", wait=True)
            if transport.is_active():
                answered.set()
        except Exception:  # noqa: BLE001 - no answer is the answer
            pass

    threading.Thread(target=ask, name="sshexec-pool-probe", daemon=True).start()
    return answered.wait(PROBE_TIMEOUT)


def give_back(worker: Worker, link: Link) -> bool:
    """Keep `link` for the next command (True), or False: the caller closes it."""
    limit = idle_limit()
    if not _on or link.pool_key is None or limit <= 0 or not _clean(link):
        return False
    with _lock:
        held = _idle.setdefault(link.pool_key, [])
        if len(held) >= PER_LOGIN:
            return False
        held.append(_Held(link, worker.name, time.time(), limit))
    return True


def _clean(link: Link) -> bool:
    if not all(t.is_active() for _ep, t in link.hops):
        return False
    channels = getattr(link.transport, "_channels", None)
    beside = {id(c.channel) for c in link.companions}  # they live as long as the link (_companion.py)
    if link.ahead is not None:
        beside.add(id(link.ahead.channel))  # the command started ahead, waiting for the next stream of its kind
    return channels is None or all(ch.closed or id(ch) in beside for ch in channels.values())


def sweep(now: float | None = None) -> int:
    """Close the links idle past their limit, and those that ended; how many are left."""
    now = time.time() if now is None else now
    done: list[_Held] = []
    with _lock:
        for key in list(_idle):
            keep = [h for h in _idle[key] if now - h.since < h.limit and h.link.transport.is_active()]
            done += [h for h in _idle[key] if h not in keep]
            if keep:
                _idle[key] = keep
            else:
                del _idle[key]
        left = sum(len(v) for v in _idle.values())
    for held in done:
        _close(held.link)
    return left


def between_commands() -> None:
    """Forget what the finished command read (ssh config, private keys) and close expired links. Kept links
    hold no key: paramiko's auth handler forgets it after the login (_dial.forget_credentials)."""
    _route.reset_ssh_config()
    _login.forget_keys()
    sweep()
    start_ahead()


def start_ahead() -> int:
    """Start on the idle links the commands their last command asked to have started ahead (_companion.py): the
    next command's step skips the session's start. After the command's exit code went back: off its time."""
    with _lock:
        links = [h.link for held in _idle.values() for h in held if h.link.ahead_wanted is not None]
    return sum(_companion.start_ahead(link) for link in links)


def close_all() -> None:
    with _lock:
        done = [h for held in _idle.values() for h in held]
        _idle.clear()
    for held in done:
        _close(held.link)


def held() -> list[dict]:
    """What is kept: one entry per machine (a worker, or a jump host shared by several links), with its idle time."""
    now = time.time()
    out: dict[tuple, dict] = {}
    with _lock:
        for items in _idle.values():
            for h in items:
                for i, (ep, _t) in enumerate(h.link.hops):
                    last = i == len(h.link.hops) - 1
                    name = h.worker if last else ep.label
                    entry = out.setdefault((name, ep.address, last), {"name": name, "address": ep.address, "kind": "worker" if last else "bastion", "idle": now - h.since, "links": 0})
                    entry["idle"] = min(entry["idle"], now - h.since)
                    entry["links"] += 1
    return sorted(out.values(), key=lambda e: (e["kind"] != "bastion", e["name"]))


def transports() -> list[threading.Thread]:
    """The threads of the kept links (each paramiko Transport is one): a reusable process waits for every other thread."""
    with _lock:
        return [t for items in _idle.values() for h in items for _ep, t in h.link.hops]


def _close(link: Link) -> None:
    try:
        link.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
        pass
