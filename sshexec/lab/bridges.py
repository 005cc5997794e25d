"""Bridges for the lab's per-worker Docker daemons: a name and a 10.x.y.0/24 nobody else uses.

Several labs (of several people, or of the tests) may run on one machine, each
with a daemon per worker, and each daemon needs a bridge of its own. Names
and subnets are chosen under a machine-wide lock, by looking at the links,
addresses and routes that exist, and created before the lock is released, so
two labs coming up at once never pick the same ones. The lab records them in
its state: `lab down`, or an `up` after a `kill -9`, finds them again.

A daemon is never started without a bridge: `dockerd --bridge=none` deletes the
host's docker0 (shared/LAB.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import LabError
from .proc import run

LOCK = Path("/run/lock/sshexec-lab-bridges.lock")
# Where subnets are taken from: 10.200.0.0/24 ... 10.254.255.0/24, well away from
# Docker's own defaults (172.17-31.x, 192.168.x).
FIRST, LAST = ipaddress.ip_network("10.200.0.0/24"), ipaddress.ip_network("10.254.255.0/24")
IFNAMSIZ = 15  # the kernel's limit on a link name


@dataclass(frozen=True)
class Bridge:
    name: str
    subnet: str  # "10.201.7.0/24"; the bridge holds its first address, the daemon's gateway

    @property
    def address(self) -> str:
        net = ipaddress.ip_network(self.subnet)
        return f"{net.network_address + 1}/{net.prefixlen}"


@contextmanager
def _machine_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _addresses(name: str) -> list[str]:
    out = run(["ip", "-4", "-o", "addr", "show", "dev", name], check=False).stdout.decode()
    return re.findall(r"\binet (\S+)", out)


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine knows: its addresses' and its routes'."""
    found = []
    addrs = run(["ip", "-4", "-o", "addr", "show"]).stdout.decode()
    for cidr in re.findall(r"\binet (\S+)", addrs):
        found.append(ipaddress.ip_interface(cidr).network)
    routes = run(["ip", "-4", "route", "show", "table", "all"]).stdout.decode()
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unreachable", "blackhole", "prohibit", "throw"):
            word = line.split()[1]
        if word and word != "default" and word[0].isdigit():
            found.append(ipaddress.ip_network(word, strict=False))
    return found


def _free_subnet(seed: int, used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    first, count = int(FIRST.network_address) >> 8, ((int(LAST.network_address) - int(FIRST.network_address)) >> 8) + 1
    for i in range(count):
        # Start where the lab's name points, so labs rarely even look at the same subnets.
        net = ipaddress.ip_network(((first + (seed + i) % count) << 8, 24))
        if not any(net.overlaps(u) for u in used):
            return net
    raise LabError("no free 10.x.y.0/24 subnet left for a lab daemon's bridge", hint="sshexec lab down the labs you no longer use")


def _names(lab: str, worker: str) -> Iterator[str]:
    digest = hashlib.sha256(f"{lab}/{worker}".encode()).hexdigest()
    yield "sx" + digest[:9]
    for i in range(1, 100):
        yield f"sx{digest[:9]}{i}"[:IFNAMSIZ]


def _create(bridge: Bridge) -> None:
    if not exists(bridge.name):
        run(["ip", "link", "add", bridge.name, "type", "bridge"])
    if bridge.address not in _addresses(bridge.name):
        run(["ip", "addr", "add", bridge.address, "dev", bridge.name])
    run(["ip", "link", "set", bridge.name, "up"])


def ensure(lab: str, worker: str, known: Bridge | None) -> Bridge:
    """The bridge recorded for this worker's daemon (made again if it vanished), or a new one."""
    with _machine_lock():
        if known is not None and exists(known.name):
            _create(known)  # after a kill -9 it is still there; its address and state may not be
            return known
        used = used_networks()
        if known is not None:
            net = ipaddress.ip_network(known.subnet)
            if not any(net.overlaps(u) for u in used):
                _create(known)
                return known
        name = next(n for n in _names(lab, worker) if not exists(n))
        seed = int(hashlib.sha256(f"{lab}/{worker}".encode()).hexdigest()[:8], 16)
        bridge = Bridge(name, str(_free_subnet(seed, used)))
        _create(bridge)
        return bridge


def remove(bridge: Bridge | None) -> bool:
    """Delete the bridge (after its daemon stopped). True if there was one."""
    if bridge is None or not exists(bridge.name):
        return False
    with _machine_lock():
        run(["ip", "link", "del", bridge.name], check=False)
    return True
