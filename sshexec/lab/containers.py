"""The lab's containers on the host's daemon: SSH workers, the bastion, and the internal network.

    w1..wN      published on 127.0.0.1, reached directly
    bastion     published on 127.0.0.1 and attached to the internal network: a jump host
    inner1..    on the internal network only (`docker network create --internal`), no
                published port: reachable through the bastion alone, by name

Each container is labelled with a hash of everything it is made from and
recreated when that changes; a stopped one (after a kill -9 of the host's
daemon) is started again.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabError
from .proc import docker

LAB_LABEL = "sshexec.lab"
# Where a worker sees its daemon's socket when it is not the default one.
SOCKET_DIR_IN_WORKER = "/run/sx"
SOCKET_IN_WORKER = f"{SOCKET_DIR_IN_WORKER}/docker.sock"


@dataclass(frozen=True)
class Spec:
    """What one lab container is made from."""

    lab: str
    name: str  # the inventory's worker name
    image: str
    key: str  # the authorized key line
    ca: str = ""  # a CA's public key line: sshd also accepts user certificates it signed
    work: Path | None = None  # the work root, mounted at the same path (none for the bastion)
    publish: bool = True  # -p 127.0.0.1::22
    network: str | None = None  # an internal network joined at creation (with the name as its alias)
    socket_dir: Path | None = None  # a per-worker daemon's socket directory, mounted at /run/sx
    host_socket: bool = False  # the host's daemon (--shared-daemon)
    socket_link: bool = True  # /var/run/docker.sock leads to the daemon (else only docker_host does)
    data_root: Path | None = None  # the daemon's data-root, read-only at the same path, for df
    env: tuple[tuple[str, str], ...] = ()
    role: str = "worker"

    @property
    def container(self) -> str:
        return f"{self.lab}-{self.name}"

    def config_hash(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    def run_argv(self) -> list[str]:
        argv = [
            "run", "-d", "--name", self.container, "--hostname", self.name,
            "--label", f"{LAB_LABEL}={self.lab}", "--label", f"{LAB_LABEL}.worker={self.name}",
            "--label", f"{LAB_LABEL}.config={self.config_hash()}", "--label", f"{LAB_LABEL}.role={self.role}",
            "-e", f"SSHEXEC_AUTHORIZED_KEY={self.key}",
        ]  # fmt: skip
        if self.ca:
            argv += ["-e", f"SSHEXEC_USER_CA={self.ca}"]
        if self.publish:
            argv += ["-p", "127.0.0.1::22"]
        if self.network:
            argv += ["--network", self.network, "--network-alias", self.name]
        if self.work is not None:
            argv += ["-v", f"{self.work}:{self.work}"]
        socket_at = "/var/run/docker.sock" if self.socket_link else SOCKET_IN_WORKER
        if self.host_socket:
            argv += ["-v", f"/var/run/docker.sock:{socket_at}"]
            if not self.socket_link:
                argv += ["-e", f"SSHEXEC_DOCKER_SOCKET={SOCKET_IN_WORKER}"]
        elif self.socket_dir is not None:
            # The directory, not the socket: a restarted daemon makes a new socket file.
            argv += ["-v", f"{self.socket_dir}:{SOCKET_DIR_IN_WORKER}", "-e", f"SSHEXEC_DOCKER_SOCKET={SOCKET_IN_WORKER}"]
            if self.socket_link:
                argv += ["-e", "SSHEXEC_DOCKER_SOCKET_LINK=1"]
        if self.data_root is not None:
            argv += ["--mount", f"type=bind,source={self.data_root},target={self.data_root},readonly,bind-nonrecursive=true"]
        for k, v in self.env:
            argv += ["-e", f"{k}={v}"]
        return [*argv, self.image]


@dataclass
class Started:
    """A lab container as `ensure` left it."""

    spec: Spec
    id: str
    port: int | None  # on 127.0.0.1, when published
    fresh: bool  # created or started now (its sshd may not answer yet)
    keys: list[str] = field(default_factory=list)  # its host keys, "TYPE BASE64"


@dataclass(frozen=True)
class Existing:
    """A lab container as `docker ps` lists it."""

    id: str
    running: bool
    config: str
    port: int | None


def existing(lab: str) -> dict[str, Existing]:
    """The lab's containers by name, in one docker call (a warm `lab up` touches nothing else)."""
    fmt = "{{.Names}}\t{{.ID}}\t{{.State}}\t{{.Label \"" + LAB_LABEL + ".config\"}}\t{{.Ports}}"
    out = docker("ps", "-a", "--no-trunc", "--filter", f"label={LAB_LABEL}={lab}", "--format", fmt).stdout.decode()
    found = {}
    for line in out.splitlines():
        name, cid, state, config, ports = (line.split("\t") + [""] * 5)[:5]
        m = re.search(r"127\.0\.0\.1:(\d+)->22/tcp", ports)
        found[name] = Existing(cid, state == "running", config, int(m.group(1)) if m else None)
    return found


def ensure(spec: Spec, current: Existing | None) -> Started:
    """The container running as `spec` says: kept if it is, started if stopped, else (re)created."""
    c = spec.container
    if current is not None and current.config != spec.config_hash():
        docker("rm", "-f", c)
        current = None
    if current is None:
        if spec.work is not None:
            spec.work.mkdir(parents=True, exist_ok=True)
        cid = docker(*spec.run_argv()).stdout.decode().strip()
    elif not current.running:
        docker("start", c)
        cid = current.id
    else:
        return Started(spec, current.id, current.port if spec.publish else None, fresh=False)
    return Started(spec, cid, published_port(c) if spec.publish else None, fresh=True)


def published_port(container: str) -> int:
    out = docker("port", container, "22/tcp").stdout.decode().split()
    for line in out:
        host, _, port = line.rpartition(":")
        if host == "127.0.0.1":
            return int(port)
    raise LabError(f"{container} publishes no port on 127.0.0.1")


def ensure_network(lab: str) -> tuple[str, bool]:
    """The lab's internal network (containers on it reach each other by name, and nothing
    else), and whether it was created now."""
    name = f"{lab}-internal"
    if docker("network", "inspect", "--format", "{{.Id}}", name, check=False).returncode == 0:
        return name, False
    docker("network", "create", "--internal", "--label", f"{LAB_LABEL}={lab}", name)
    return name, True


def connect(network: str, container: str) -> None:
    """Attach a container (the bastion) to the network, once."""
    nets = docker("container", "inspect", "--format", "{{json .NetworkSettings.Networks}}", container).stdout.decode()
    if f'"{network}"' not in nets:
        docker("network", "connect", network, container)


def host_keys(container: str) -> list[str]:
    """The container's SSH host public keys as "TYPE BASE64", read through docker (a trusted channel)."""
    out = docker("exec", container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout.decode()
    return [" ".join(line.split()[:2]) for line in out.splitlines() if line.strip()]


def wait_for_ssh(port: int, container: str, timeout: float = 60.0) -> None:
    """Wait until sshd sends its banner on 127.0.0.1:port (bounded; no fixed sleep)."""
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.settimeout(3)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise LabError(f"{container}: sshd did not answer on 127.0.0.1:{port} within {timeout:g}s ({last}):\n{_logs(container)}")


def wait_for_ssh_behind(bastion: str, name: str, container: str, timeout: float = 60.0) -> None:
    """Wait until an internal worker's sshd answers, as seen from the bastion."""
    probe = f"exec 3<>/dev/tcp/{name}/22 && head -c 4 <&3"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        res = docker("exec", bastion, "timeout", "3", "bash", "-c", probe, check=False)
        if res.stdout.startswith(b"SSH-"):
            return
        time.sleep(0.1)
    raise LabError(f"{container}: sshd did not answer on {name}:22 (seen from the bastion) within {timeout:g}s:\n{_logs(container)}")


def _logs(container: str) -> str:
    logs = docker("logs", "--tail", "20", container, check=False)
    return logs.stdout.decode(errors="replace") + logs.stderr.decode(errors="replace")


def remove_all(lab: str) -> int:
    """Remove every container and network of the lab from the host's daemon; how many containers."""
    ids = docker("ps", "-aq", "--filter", f"label={LAB_LABEL}={lab}").stdout.decode().split()
    if ids:
        docker("rm", "-f", *ids)
    nets = docker("network", "ls", "-q", "--filter", f"label={LAB_LABEL}={lab}").stdout.decode().split()
    if nets:
        docker("network", "rm", *nets, check=False)
    return len(ids)
