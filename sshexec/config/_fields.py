"""The values an inventory's fields may hold: names, hosts, the docker command, jumps, docker_host, work_root, times.

Each check raises ValueError with words a person can act on; inventory.py's
models run them, and _yaml.py puts file, line and field in front.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated

from pydantic import StringConstraints

from ..core.duration import parse_duration

WorkerName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=63)]
PoolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# A host name, IPv4/IPv6 address or ~/.ssh/config alias: no spaces, quotes or shell syntax.
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:%\[\]-]*$", max_length=253)]
UserName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$", max_length=32)]
RegistryHost = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?$")]


def _check_docker(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split the docker command: {exc}") from None
    if not words:
        raise ValueError("the docker command is empty")
    for word in words:
        if not re.fullmatch(r"[A-Za-z0-9_./=-]+", word):
            raise ValueError(f"unsupported character in the docker command word {word!r}")
    return value


# A jump host written as an address: [user@]host[:port] (IPv6 in brackets).
_JUMP_ADDRESS = re.compile(
    r"^(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9_][A-Za-z0-9_.-]*|\[[0-9A-Fa-f:]+\])(?::(?P<port>[0-9]{1,5}))?$"
)
MAX_JUMPS = 2
DEFAULT_LOCK_STALE = 60.0  # seconds


def _check_jump(value: str | list[str] | None) -> str | list[str] | None:
    if value is None:
        return value
    for word in [value] if isinstance(value, str) else value:
        m = _JUMP_ADDRESS.fullmatch(word)
        if not m:
            raise ValueError(f"jump {word!r} is neither a worker name nor user@host:port")
        if m.group("port") and not 1 <= int(m.group("port")) <= 65535:
            raise ValueError(f"jump {word!r}: the port must be between 1 and 65535")
    if isinstance(value, list) and len(value) > MAX_JUMPS:
        raise ValueError(f"at most {MAX_JUMPS} jump hosts in a chain")
    return value


def _check_docker_host(value: str | None) -> str | None:
    if value is None:
        return value
    if re.fullmatch(r"unix:///[A-Za-z0-9_./@+-]+", value) and "/../" not in value + "/":
        return value
    if re.fullmatch(r"tcp://(?:[A-Za-z0-9_][A-Za-z0-9_.-]*|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}", value):
        return value
    raise ValueError("docker_host must be a unix:///path/to/docker.sock or tcp://host:port URL")


def _check_work_root(value: str | None) -> str | None:
    if value is None:
        return value
    if not (value.startswith("/") or value == "~" or value.startswith("~/")):
        raise ValueError("work_root must be an absolute path or start with ~/")
    if not re.fullmatch(r"[A-Za-z0-9_./~+-]+", value) or "/../" in value + "/":
        raise ValueError("work_root may hold only letters, digits and _ . / ~ + - (no '..')")
    return value.rstrip("/") or "/"


def _check_max_steps(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 10000:
        raise ValueError(f"max_steps must be between 1 and 10000, not {value} (leave it out for no limit)")
    return value


# A holder refreshes its heartbeat every lock_stale/3 s, and a refresh may wait 5 s for a busy
# worker (worker/heartbeat.py): at 15 s one that takes all of its 5 s still lands with a third of
# lock_stale to spare; below, one slow round trip would hand a healthy run's locks to another run.
MIN_LOCK_STALE = 15


def _seconds(what: str, minimum: float, maximum: float):
    """A time in the inventory: seconds, or 90s, 5m, 1h (core/duration.py)."""
    return lambda v: None if v is None else parse_duration(v, what, minimum=minimum, maximum=maximum)


def _lock_stale(value: object) -> float | None:
    seconds = _seconds("lock_stale", 0, 86400)(value)
    if seconds is not None and seconds < MIN_LOCK_STALE:
        raise ValueError(
            f"lock_stale must be at least {MIN_LOCK_STALE} seconds (and at most 86400), not {seconds:g}: a run refreshes its "
            f"heartbeat every lock_stale/3 seconds, and below {MIN_LOCK_STALE} one slow round trip to a busy worker would "
            f"make its locks look dead to other runs; use {MIN_LOCK_STALE} or more (default 60)"
        )
    return seconds
