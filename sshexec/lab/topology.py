"""Which containers the lab runs, and what it writes for them: the inventory and known_hosts.

    w1..wN     pool linux: published on 127.0.0.1, reached directly
    bastion    in no pool: a jump host, published on 127.0.0.1 and on the internal network
    inner1..   pool internal: on the internal network only, reached with `jump: bastion`;
               their daemon's socket is at /run/sx/docker.sock, reached with docker_host

With a daemon per worker, each container mounts its own daemon's socket
directory and data-root; with the shared daemon, the host's socket.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from . import containers
from .containers import SOCKET_IN_WORKER, Spec, Started
from .workerd import WorkerDaemon

BASTION = "bastion"
INTERNAL_POOL = "internal"
DEPLOY_UID = 1000  # the worker image's `deploy` user


@dataclass(frozen=True)
class Plan:
    """What the lab's containers are made from."""

    lab: str
    image: str  # the worker image's local tag
    key: str  # the lab's public key line
    work_root: Callable[[str], Path]
    daemon: Callable[[str], WorkerDaemon]
    shared_daemon: bool
    ca: str = ""  # the lab CA's public key line: sshd accepts user certificates it signed

    def spec(self, name: str, role: str, network: str | None = None) -> Spec:
        if role == "bastion":
            return Spec(self.lab, name, self.image, self.key, role=role, ca=self.ca)
        behind = role == "internal"
        common = dict(work=self.work_root(name), publish=not behind, network=network, socket_link=not behind, role=role, ca=self.ca)
        if self.shared_daemon:
            return Spec(self.lab, name, self.image, self.key, host_socket=True, **common)
        d = self.daemon(name)
        return Spec(self.lab, name, self.image, self.key, socket_dir=d.socket_dir, data_root=d.data_root, **common)


def ensure(plan: Plan, direct: list[str], inner: list[str]) -> list[Started]:
    """Every container of the lab running as `plan` says, its sshd answering; in inventory order."""
    for name in direct + inner:
        work = plan.work_root(name)
        work.mkdir(parents=True, exist_ok=True)
        os.chown(work, DEPLOY_UID, DEPLOY_UID)
        work.chmod(0o700)
    network, new_network = containers.ensure_network(plan.lab)
    specs = [plan.spec(n, "worker") for n in direct] + [plan.spec(BASTION, "bastion")] + [plan.spec(n, "internal", network) for n in inner]
    now = containers.existing(plan.lab)
    with ThreadPoolExecutor(max_workers=8) as pool:
        started = list(pool.map(lambda spec: containers.ensure(spec, now.get(spec.container)), specs))
    bastion = next(s for s in started if s.spec.role == "bastion")
    if bastion.fresh or new_network:
        containers.connect(network, bastion.spec.container)
    waits = []
    for s in started:
        if s.port is not None:
            waits.append(lambda s=s: containers.wait_for_ssh(s.port, s.spec.container))
        elif s.fresh or bastion.fresh:
            waits.append(lambda s=s: containers.wait_for_ssh_behind(bastion.spec.container, s.spec.name, s.spec.container))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda wait: wait(), waits))
    return started


def known_hosts(started: list[Started], cache: dict[str, list]) -> str:
    """known_hosts lines for every container; `cache` (container -> [id, keys]) spares a
    `docker exec` per container when it is the same one, not restarted since."""
    lines = []
    for s in started:
        cached = cache.get(s.spec.container)
        if cached and cached[0] == s.id and not s.fresh:
            keys = cached[1]
        else:
            keys = containers.host_keys(s.spec.container)
            cache[s.spec.container] = [s.id, keys]
        host = f"[127.0.0.1]:{s.port}" if s.port is not None else s.spec.name
        lines += [f"{host} {k}\n" for k in keys]
    return "".join(lines)


def inventory(started: list[Started], *, lab: str, feed: dict, password_env: str) -> str:
    """The lab's inventory file: every worker, the bastion, the feed."""
    workers = []
    for s in started:
        spec = s.spec
        if spec.role == "bastion":
            workers.append({"name": spec.name, "host": "127.0.0.1", "port": s.port})
        elif spec.role == "internal":
            workers.append({"name": spec.name, "host": spec.name, "port": 22, "pools": [INTERNAL_POOL], "work_root": str(spec.work),
                            "jump": BASTION, "docker_host": f"unix://{SOCKET_IN_WORKER}"})  # fmt: skip
        else:
            workers.append({"name": spec.name, "host": "127.0.0.1", "port": s.port, "pools": ["linux"], "work_root": str(spec.work)})
    data = {
        "defaults": {"user": "deploy", "identity_file": "lab/id_ed25519", "known_hosts": "lab/known_hosts", "connect_timeout": 10},
        "workers": workers,
        "feeds": [feed],
    }
    header = (
        f"# Written by `sshexec lab up` for the lab {lab}; rewritten each time. Do not edit.\n"
        f"# The feed's password: eval \"$(sshexec lab env)\" sets {password_env}.\n"
        f"# {BASTION} is a jump host (in no pool); the {INTERNAL_POOL} pool's workers are reachable only\n"
        f"# through it, and reach their Docker daemon with docker_host.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def make_key(path: Path, comment: bytes = b"sshexec-lab") -> None:
    """An ed25519 key pair (path, path.pub) for the lab, unless it exists."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    path.with_suffix(".pub").write_bytes(public + b" " + comment + b"\n")
