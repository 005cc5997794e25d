"""What a lab remembers between commands (state.json), and what `lab status` reports."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class LabState:
    dockerd_pid: int | None = None  # the host's daemon, when the lab had to start it
    registry_pid: int | None = None
    registry_port: int = 5000
    workers: list[str] = field(default_factory=list)  # reached directly: w1..wN
    internal: list[str] = field(default_factory=list)  # behind the bastion: inner1..
    shared_daemon: bool = False  # every worker uses the host's daemon (lab up --shared-daemon)
    daemons: dict[str, dict] = field(default_factory=dict)  # worker -> {"pid", "bridge", "subnet"}
    host_keys: dict[str, list] = field(default_factory=dict)  # container -> [container id, ["TYPE BASE64", ...]]
    pushed: dict[str, str] = field(default_factory=dict)  # name -> local image id last pushed
    images: dict[str, str] = field(default_factory=dict)  # name -> local tag
    inventory_dir: str | None = None  # where `up` wrote lab.yaml, its key and known_hosts (absolute)


def load(path: Path) -> LabState:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return LabState()
    known = LabState.__dataclass_fields__
    return LabState(**{k: v for k, v in data.items() if k in known})


def save(path: Path, state: LabState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)


@dataclass(frozen=True)
class DaemonInfo:
    """One worker's Docker daemon, as `lab status` sees it."""

    worker: str
    pid: int | None
    running: bool
    host: str  # unix:///run/sshexec-lab/LAB/W/sock/docker.sock
    data_root: str
    bridge: str | None
    subnet: str | None


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    container: str
    port: int | None  # published on 127.0.0.1; None behind the bastion
    running: bool
    work_root: str | None  # None for the bastion
    role: str = "worker"  # worker | bastion | internal
    docker_host: str | None = None  # as the worker itself reaches its daemon, when not the default


@dataclass(frozen=True)
class LabStatus:
    daemon: str  # the host's daemon: "started by the lab (pid N)", "external …", "down"
    registry: str
    registry_address: str
    workers: tuple[WorkerInfo, ...]
    inventory: Path | None
    images: dict[str, str]
    daemons: tuple[DaemonInfo, ...] = ()  # a daemon per worker; empty with --shared-daemon
    shared_daemon: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inventory"] = str(self.inventory) if self.inventory else None
        return d
