"""The inventory: which workers exist, how to reach them, and the registries (feeds).

`load_inventory()` reads the YAML file (SPEC §1) and returns an `Inventory` whose
workers have their defaults applied. Paths on the operator's machine
(`identity_file`, `known_hosts`) are expanded here; `work_root` is a path on
the worker and is expanded there.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..core.secrets import MIN_SECRET, secret_from_env, short_secret
from ..errors import InputError
from ._fields import (
    _JUMP_ADDRESS,
    DEFAULT_LOCK_STALE,
    MAX_JUMPS,
    EnvName,
    HostName,
    PoolName,
    RegistryHost,
    UserName,
    WorkerName,
    _check_docker,
    _check_docker_host,
    _check_jump,
    _check_max_steps,
    _check_work_root,
    _lock_stale,
    _seconds,
)
from ._yaml import line_of, raise_problems, read_yaml, validate

DEFAULT_INVENTORY = Path("inventory/workers.yaml")

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)



class WorkerSettings(_Strict):
    """What `defaults:` may set, and each worker may override."""

    user: UserName | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str | None = None
    docker: str | None = None
    work_root: str | None = None
    connect_timeout: Annotated[float | None, BeforeValidator(_seconds("connect_timeout", 0.1, 600))] = None
    jump: str | list[str] | None = None
    certificate_file: str | None = None
    docker_host: str | None = None
    # Coordination between operators (sshexec/worker/locks.py): step containers at once on the
    # worker, and how long a run's heartbeat may be silent before its locks are taken over.
    max_steps: int | None = None
    lock_stale: Annotated[float | None, BeforeValidator(_lock_stale)] = None

    _docker = field_validator("docker")(_check_docker)
    _work_root = field_validator("work_root")(_check_work_root)
    _jump = field_validator("jump")(_check_jump)
    _docker_host = field_validator("docker_host")(_check_docker_host)
    _max_steps = field_validator("max_steps")(_check_max_steps)


class WorkerSpec(WorkerSettings):
    name: WorkerName
    host: HostName
    pools: list[PoolName] = []


class FeedSpec(_Strict):
    name: WorkerName
    registry: RegistryHost
    username: str | None = Field(default=None, pattern=r"^[^\s:]+$")
    password_env: EnvName | None = None

    @model_validator(mode="after")
    def _password_with_user(self):
        if (self.username is None) != (self.password_env is None):
            raise ValueError("give both username and password_env, or neither")
        return self


class InventoryFile(_Strict):
    defaults: WorkerSettings = WorkerSettings()
    workers: list[WorkerSpec] = Field(min_length=1)
    feeds: list[FeedSpec] = []


@dataclass(frozen=True)
class Hop:
    """A jump host on the way to a worker: another worker of the inventory, or an address."""

    label: str  # the worker's name, or the address as written
    host: str
    port: int | None
    user: str | None
    identity_file: Path | None
    certificate_file: Path | None


@dataclass(frozen=True)
class Worker:
    """One worker with every default applied. Local paths are absolute."""

    name: str
    host: str
    port: int | None  # None: from ~/.ssh/config, else 22
    user: str | None  # None: from ~/.ssh/config, else the local user
    identity_file: Path | None
    known_hosts: Path
    docker: tuple[str, ...]  # the docker argv there, `--host URL` included when docker_host is set
    work_root: str
    connect_timeout: float
    pools: tuple[str, ...] = ()
    jump: tuple[Hop, ...] = ()  # jump hosts, in the order they are crossed
    certificate_file: Path | None = None
    docker_host: str | None = None
    max_steps: int | None = None  # None: unlimited
    lock_stale: float = DEFAULT_LOCK_STALE

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


@dataclass(frozen=True)
class Feed:
    name: str
    registry: str
    username: str | None
    password_env: str | None

    def password(self) -> str | None:
        """The registry password from the operator's environment; InputError if unset or too short to mask."""
        if self.password_env is None:
            return None
        value = secret_from_env(self.password_env)
        if value is None:
            raise InputError(
                f"feed {self.name!r} needs its password in the environment variable {self.password_env}, which is not set",
                field=f"feeds[{self.name}].password_env",
                hint=f"export {self.password_env}=... before running sshexec",
            )
        if len(value) < MIN_SECRET:
            raise InputError(
                f"feed {self.name!r}: the password in ${self.password_env} {short_secret(value)}",
                field=f"feeds[{self.name}].password_env",
                hint=f"a registry password is masked like any secret, and one shorter than {MIN_SECRET} characters "
                "would hide those characters wherever they appear in the output: use a longer password or an access token",
            )
        return value


@dataclass(frozen=True)
class Inventory:
    path: Path
    workers: tuple[Worker, ...]
    feeds: tuple[Feed, ...] = ()
    pools: frozenset[str] = field(default_factory=frozenset)

    def worker(self, name: str) -> Worker:
        for w in self.workers:
            if w.name == name:
                return w
        known = ", ".join(w.name for w in self.workers)
        raise InputError(f"no worker named {name!r} in {self.path}", hint=f"known workers: {known}")

    def feed(self, name: str) -> Feed:
        for f in self.feeds:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.feeds) or "none"
        raise InputError(f"no feed named {name!r} in {self.path}", hint=f"known feeds: {known}")

    def pool(self, name: str) -> tuple[Worker, ...]:
        if name not in self.pools:
            known = ", ".join(sorted(self.pools)) or "none"
            raise InputError(f"no worker of {self.path} is in pool {name!r}", hint=f"known pools: {known}")
        return tuple(w for w in self.workers if name in w.pools)

    def select(self, *, pool: str | None = None, worker: str | None = None) -> tuple[Worker, ...]:
        """Workers matching --pool and --worker (all of them if neither is given)."""
        chosen = self.pool(pool) if pool else self.workers
        if worker:
            w = self.worker(worker)
            if w not in chosen:
                raise InputError(f"worker {worker!r} is not in pool {pool!r}")
            chosen = (w,)
        return chosen


def inventory_path(path: str | os.PathLike | None = None) -> Path:
    """--inventory, else $SSHEXEC_INVENTORY, else inventory/workers.yaml."""
    return Path(path or os.environ.get("SSHEXEC_INVENTORY") or DEFAULT_INVENTORY)


def _jump_words(value: str | list[str] | None) -> list[str] | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def _with_jumps(workers: list[Worker], spec: InventoryFile, data, file: Path) -> list[Worker]:
    """Resolve each worker's `jump:` (its own, else the defaults') into the hops crossed to reach it.

    A jump names another worker (whose own jumps come first) or an address. A
    chain has at most MAX_JUMPS hops; a cycle is an error. Every worker's
    problem is reported, each once. A worker that
    inherits a chain from `defaults` in which it stands itself (the bastion)
    is reached through the hops before it only.
    """
    by_name = {w.name: w for w in workers}
    own = {w.name: _jump_words(w.jump) for w in spec.workers}
    inherited = _jump_words(spec.defaults.jump)

    def where(name: str | None) -> dict:
        if name is not None and own.get(name) is not None:
            i = next(i for i, w in enumerate(spec.workers) if w.name == name)
            loc: tuple = ("workers", i, "jump")
            return {"file": file, "line": line_of(data, loc), "field": f"workers[{name}].jump"}
        return {"file": file, "line": line_of(data, ("defaults", "jump")), "field": "defaults.jump"}

    def words_of(name: str) -> list[str]:
        words = own[name]
        if words is None:
            words = inherited or []
            if name in words:
                words = words[: words.index(name)]
        return words

    resolved: dict[str, tuple[Hop, ...]] = {}

    def hops(name: str, path: tuple[str, ...]) -> tuple[Hop, ...]:
        if name in resolved:
            return resolved[name]
        result: list[Hop] = []
        for word in words_of(name):
            if word in path or word == name:
                chain = " → ".join(path + (name, word))
                raise InputError(f"a cycle of jumps: {chain}", hint="a worker cannot be reached through itself", **where(name))
            target = by_name.get(word)
            if target is not None:
                result += hops(word, path + (name,))
                result.append(Hop(word, target.host, target.port, target.user, target.identity_file, target.certificate_file))
                continue
            m = _JUMP_ADDRESS.fullmatch(word)
            if m is None or not ("@" in word or ":" in word or "." in word):
                known = ", ".join(sorted(by_name)) or "none"
                raise InputError(
                    f"jump {word!r} names no worker of this inventory",
                    hint=f"name a worker ({known}) or write the jump host as user@host:port",
                    **where(name),
                )
            w = by_name[name]
            port = int(m.group("port")) if m.group("port") else None
            result.append(Hop(word, m.group("host").strip("[]"), port, m.group("user") or w.user, w.identity_file, w.certificate_file))
        if len(result) > MAX_JUMPS:
            labels = " → ".join(h.label for h in result)
            raise InputError(f"{name} is reached through {len(result)} jump hosts ({labels}); at most {MAX_JUMPS} are supported", **where(name))
        resolved[name] = tuple(result)
        return resolved[name]

    out, problems = [], []
    for w in workers:
        try:
            out.append(replace(w, jump=hops(w.name, ())))
        except InputError as exc:
            # Workers that inherit one bad `jump:` all fail on it: say it once.
            problems += [p for p in exc.problems if p not in problems]
    raise_problems(problems)
    return out


def _local_path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


def load_inventory(path: str | os.PathLike | None = None) -> Inventory:
    """Read and validate an inventory file. Raises InputError naming file, line and field."""
    file = inventory_path(path)
    if not file.exists() and path is None and not os.environ.get("SSHEXEC_INVENTORY"):
        raise InputError(
            f"no inventory at {file}",
            hint='pass --inventory PATH or set SSHEXEC_INVENTORY; for the local lab: eval "$(sshexec lab env)"',
        )
    data = read_yaml(file, "inventory")
    spec = validate(InventoryFile, data, file, "inventory", unique={"workers": "worker", "feeds": "feed"})
    base = file.resolve().parent
    d = spec.defaults
    workers = []
    for w in spec.workers:
        identity = w.identity_file or d.identity_file
        known = w.known_hosts or d.known_hosts or "~/.ssh/known_hosts"
        cert = w.certificate_file or d.certificate_file
        docker_host = w.docker_host or d.docker_host
        docker = tuple(shlex.split(w.docker or d.docker or "docker"))
        workers.append(
            Worker(
                name=w.name,
                host=w.host,
                port=w.port or d.port,
                user=w.user or d.user,
                identity_file=_local_path(identity, base) if identity else None,
                known_hosts=_local_path(known, base),
                # --host on every docker command: never a login profile's DOCKER_HOST.
                docker=docker + ("--host", docker_host) if docker_host else docker,
                work_root=w.work_root or d.work_root or "~/.sshexec",
                connect_timeout=w.connect_timeout or d.connect_timeout or 10.0,
                pools=tuple(w.pools),
                certificate_file=_local_path(cert, base) if cert else None,
                docker_host=docker_host,
                max_steps=w.max_steps or d.max_steps,
                lock_stale=w.lock_stale or d.lock_stale or DEFAULT_LOCK_STALE,
            )
        )
    workers = _with_jumps(workers, spec, data, file)
    feeds = tuple(Feed(f.name, f.registry, f.username, f.password_env) for f in spec.feeds)
    pools = frozenset(p for w in workers for p in w.pools)
    return Inventory(path=file, workers=tuple(workers), feeds=feeds, pools=pools)
