"""The local lab: a Docker daemon, a registry with auth, SSH worker containers, and their inventory.

`Lab.up()` is idempotent and fast when everything is already there; `Lab.down()`
removes exactly what `up()` created and stops only the processes it started,
by the PIDs it recorded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

from ..paths import state_home
from ..procs import pid_alive
from . import daemon, registry
from .errors import LabError
from .proc import docker

LAB_LABEL = "sshexec.lab"
REGISTRY_USER = "sshexec"
PASSWORD_ENV = "SSHEXEC_LAB_REGISTRY_PASSWORD"
PUSHED = ("tools", "busybox", "entrypoint", "nonroot")
DEFAULT_WORKERS = 2
MAX_WORKERS = 64

Progress = Callable[[str], None]


@dataclass
class LabState:
    dockerd_pid: int | None = None
    registry_pid: int | None = None
    registry_port: int = 5000
    workers: list[str] = field(default_factory=list)
    pushed: dict[str, str] = field(default_factory=dict)  # name -> local image id last pushed
    images: dict[str, str] = field(default_factory=dict)  # name -> local tag


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    container: str
    port: int | None
    running: bool
    work_root: str


@dataclass(frozen=True)
class LabStatus:
    daemon: str  # "ours (pid N)", "external", "down"
    registry: str
    registry_address: str
    workers: tuple[WorkerInfo, ...]
    inventory: Path | None
    images: dict[str, str]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inventory"] = str(self.inventory) if self.inventory else None
        return d


DEFAULT_NAME = "sshexec-lab"


class Lab:
    """One lab instance. Several can coexist on one daemon under different names
    (the tests and the benchmarks use their own), each with its own registry port."""

    def __init__(
        self,
        name: str | None = None,
        *,
        home: Path | None = None,
        inventory_dir: Path | None = None,
        registry_port: int | None = None,
        work_base: Path | None = None,
    ):
        self.name = name or os.environ.get("SSHEXEC_LAB_NAME") or DEFAULT_NAME
        default = self.name == DEFAULT_NAME
        env_home = os.environ.get("SSHEXEC_LAB_HOME")
        env_inv = os.environ.get("SSHEXEC_LAB_INVENTORY_DIR")
        self.home = Path(home or env_home or state_home() / ("lab" if default else self.name)).resolve()
        # The default lab writes the repository's inventory/; another lab keeps its own.
        self.inventory_dir = Path(inventory_dir or env_inv or ("inventory" if default else self.home / "inventory")).resolve()
        self.state_file = self.home / "state.json"
        self._registry_port = registry_port or (int(os.environ["SSHEXEC_LAB_REGISTRY_PORT"]) if os.environ.get("SSHEXEC_LAB_REGISTRY_PORT") else None)
        self._work_base = work_base or (Path(os.environ["SSHEXEC_LAB_WORK"]) if os.environ.get("SSHEXEC_LAB_WORK") else None)

    # -- paths ----------------------------------------------------------------

    @property
    def inventory_path(self) -> Path:
        return self.inventory_dir / "lab.yaml"

    @property
    def key_path(self) -> Path:
        return self.inventory_dir / "lab" / "id_ed25519"

    @property
    def ca_key_path(self) -> Path:
        """The lab's SSH certificate authority: its workers trust user certificates it signs."""
        return self.inventory_dir / "lab" / "ca"

    @property
    def known_hosts_path(self) -> Path:
        return self.inventory_dir / "lab" / "known_hosts"

    @property
    def password_path(self) -> Path:
        return self.home / "registry" / "password"

    @property
    def work_base(self) -> Path:
        # Not under the lab home: the worker's SSH user must be able to reach it
        # inside the container, where the path's parents are created root-owned 0755.
        return self._work_base or Path("/var/lib") / self.name / "work"

    def work_root(self, worker: str) -> Path:
        return self.work_base / worker

    @property
    def registry_port(self) -> int:
        return self._registry_port or self._load().registry_port or 5000

    @property
    def registry_address(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    def image_ref(self, name: str) -> str:
        """The registry reference of a lab execution image, e.g. 127.0.0.1:5000/sshexec/tools:1."""
        return f"{self.registry_address}/sshexec/{name}:1"

    def registry_password(self) -> str:
        if not self.password_path.exists():
            self.password_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return self.password_path.read_text().strip()

    # -- state ------------------------------------------------------------------

    def _load(self) -> LabState:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return LabState()
        known = LabState.__dataclass_fields__
        return LabState(**{k: v for k, v in data.items() if k in known})

    def _save(self, state: LabState) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        os.replace(tmp, self.state_file)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # -- up -----------------------------------------------------------------------

    def up(self, workers: int | None = None, *, at_least: int | None = None, progress: Progress | None = None) -> LabStatus:
        """Bring the lab up with `workers` workers (default: as many as now, at least `at_least`, else 2)."""
        say = progress or (lambda msg: None)
        if workers is not None and not 1 <= workers <= MAX_WORKERS:
            raise LabError(f"--workers must be between 1 and {MAX_WORKERS}")
        with self._locked():
            state = self._load()
            state.registry_port = self._registry_port or state.registry_port or 5000

            say("Docker daemon")
            if not daemon.daemon_answers():
                if state.dockerd_pid and not daemon.daemon_answers():
                    state.dockerd_pid = None
                state.dockerd_pid = daemon.ensure_daemon(self.home / "dockerd.log")
                self._save(state)

            say("images (built offline, cached by recipe)")
            from .building import ensure_images

            built = ensure_images(build_dir=self.home / "build", on_progress=lambda name, msg: say(f"image {name}: {msg}"))
            state.images = {name: b.tag for name, b in built.items()}
            self._save(state)

            say("registry")
            self._ensure_registry(state)
            self._save(state)

            say("pushing execution images")
            self._push(state, say)
            self._save(state)

            count = workers or max(len(state.workers), at_least or 0) or DEFAULT_WORKERS
            say(f"{count} SSH worker container(s)")
            self._ensure_keys()
            names = [f"w{i}" for i in range(1, count + 1)]
            for extra in [w for w in state.workers if w not in names]:
                docker("rm", "-f", self._container(extra), check=False)
                self._remove_dir(self.work_root(extra))
            state.workers = names
            self._save(state)
            infos = self._ensure_workers(names, state.images["worker"])
            self._write_known_hosts(infos)
            self._write_inventory(infos)
            return self.status()

    def _ensure_registry(self, state: LabState) -> None:
        password = self.registry_password()
        port = state.registry_port
        if registry.is_ours(state.registry_pid) and registry.status(port) == 401 and registry.status(port, REGISTRY_USER, password) == 200:
            return
        if registry.is_ours(state.registry_pid):
            registry.stop(state.registry_pid)
        state.registry_pid = registry.start(self.home / "registry", port, REGISTRY_USER, password)

    def _push(self, state: LabState, say: Progress) -> None:
        password = self.registry_password()
        config_dir = self.home / "docker-config"
        config_dir.mkdir(mode=0o700, exist_ok=True)
        logged_in = False
        try:
            for name in PUSHED:
                tag = state.images[name]
                image_id = docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.decode().strip()
                ref = self.image_ref(name)
                repo = f"sshexec/{name}"
                if state.pushed.get(name) == image_id and registry.has_manifest(state.registry_port, repo, "1", REGISTRY_USER, password):
                    continue
                if not logged_in:
                    docker("--config", str(config_dir), "login", "--username", REGISTRY_USER, "--password-stdin", self.registry_address, input=password.encode())
                    logged_in = True
                say(f"push {ref}")
                docker("tag", tag, ref)
                docker("--config", str(config_dir), "push", ref, timeout=1200)
                state.pushed[name] = image_id
        finally:
            # Never leave the registry credential on disk.
            self._remove_dir(config_dir)

    def _ensure_keys(self) -> None:
        for key, comment in ((self.key_path, b"sshexec-lab"), (self.ca_key_path, b"sshexec-lab-ca")):
            if not (key.exists() and key.with_suffix(".pub").exists()):
                self._make_key(key, comment)

    @staticmethod
    def _make_key(key: Path, comment: bytes) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        key.with_suffix(".pub").write_bytes(public + b" " + comment + b"\n")

    def worker_image(self) -> str:
        """The local tag of the worker image (for tests that start workers of their own)."""
        return self._load().images["worker"]

    def public_key(self) -> str:
        return self.key_path.with_suffix(".pub").read_text().strip()

    def ca_public_key(self) -> str:
        return self.ca_key_path.with_suffix(".pub").read_text().strip()

    def _ensure_workers(self, names: list[str], image: str) -> list[WorkerInfo]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda n: self._ensure_worker(n, image), names))

    def _ensure_worker(self, name: str, image: str) -> WorkerInfo:
        container = self._container(name)
        work = self.work_root(name)
        work.mkdir(parents=True, exist_ok=True)
        os.chown(work, 1000, 1000)  # the worker's `deploy` user
        work.chmod(0o700)
        # Recreate the container when anything it was made from changed.
        config = hashlib.sha256(f"{self.name}\n{image}\n{work}\n{self.public_key()}\n{self.ca_public_key()}".encode()).hexdigest()[:16]
        inspect = docker("container", "inspect", "--format", '{{index .Config.Labels "sshexec.lab.config"}} {{.State.Running}}', container, check=False)
        current = inspect.stdout.decode().split() if inspect.returncode == 0 else []
        if current and current[0] != config:
            docker("rm", "-f", container)
            current = []
        if not current:
            docker(
                "run", "-d", "--name", container, "--hostname", name,
                "--label", f"{LAB_LABEL}={self.name}", "--label", f"{LAB_LABEL}.worker={name}", "--label", f"{LAB_LABEL}.config={config}",
                "-p", "127.0.0.1::22",
                "-v", "/var/run/docker.sock:/var/run/docker.sock",
                "-v", f"{work}:{work}",
                "-e", f"SSHEXEC_AUTHORIZED_KEY={self.public_key()}",
                "-e", f"SSHEXEC_USER_CA={self.ca_public_key()}",
                image,
            )  # fmt: skip
        elif current[1] != "true":
            docker("start", container)
        port = self._port(container)
        wait_for_ssh(port, container)
        return WorkerInfo(name, container, port, True, str(work))

    def _port(self, container: str) -> int:
        out = docker("port", container, "22/tcp").stdout.decode().split()
        for line in out:
            host, _, port = line.rpartition(":")
            if host == "127.0.0.1":
                return int(port)
        raise LabError(f"{container} publishes no port on 127.0.0.1")

    def _write_known_hosts(self, infos: list[WorkerInfo]) -> None:
        lines = []
        for info in infos:
            out = docker("exec", info.container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout.decode()
            for pub in out.splitlines():
                kind, blob = pub.split()[:2]
                lines.append(f"[127.0.0.1]:{info.port} {kind} {blob}\n")
        path = self.known_hosts_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text("".join(lines))
        path.chmod(0o600)

    def _write_inventory(self, infos: list[WorkerInfo]) -> None:
        data = {
            "defaults": {
                "user": "deploy",
                "identity_file": "lab/id_ed25519",
                "known_hosts": "lab/known_hosts",
                "connect_timeout": 10,
            },
            "workers": [
                {"name": i.name, "host": "127.0.0.1", "port": i.port, "pools": ["linux"], "work_root": i.work_root} for i in infos
            ],
            "feeds": [
                {"name": "lab", "registry": self.registry_address, "username": REGISTRY_USER, "password_env": PASSWORD_ENV}
            ],
        }
        header = (
            f"# Written by `sshexec lab up` for the lab {self.name}; rewritten each time. Do not edit.\n"
            f"# The feed's password: eval \"$(sshexec lab env)\" sets {PASSWORD_ENV}.\n"
        )
        self.inventory_path.parent.mkdir(parents=True, exist_ok=True)
        self.inventory_path.write_text(header + yaml.safe_dump(data, sort_keys=False))

    # -- status / down ------------------------------------------------------------

    def status(self) -> LabStatus:
        state = self._load()
        if not daemon.daemon_answers():
            d = "down"
        elif state.dockerd_pid and pid_alive(state.dockerd_pid):
            d = f"started by the lab (pid {state.dockerd_pid})"
        else:
            d = "external (not managed by the lab)"
        port = state.registry_port
        if registry.is_ours(state.registry_pid) and registry.status(port) == 401:
            r = f"up (pid {state.registry_pid})"
        else:
            r = "down"
        infos = []
        for name in state.workers:
            container = self._container(name)
            inspect = docker("container", "inspect", "--format", "{{.State.Running}}", container, check=False) if d != "down" else None
            running = inspect is not None and inspect.returncode == 0 and inspect.stdout.decode().strip() == "true"
            port_ = self._port(container) if running else None
            infos.append(WorkerInfo(name, container, port_, running, str(self.work_root(name))))
        inv = self.inventory_path if self.inventory_path.exists() else None
        return LabStatus(d, r, f"127.0.0.1:{port}", tuple(infos), inv, dict(state.images))

    def down(self, *, progress: Progress | None = None) -> list[str]:
        """Remove what up() created; stop only processes it started. Returns what was done."""
        say = progress or (lambda msg: None)
        done: list[str] = []
        with self._locked():
            state = self._load()
            if daemon.daemon_answers():
                ids = docker("ps", "-aq", "--filter", f"label={LAB_LABEL}={self.name}").stdout.decode().split()
                if ids:
                    say(f"removing {len(ids)} worker container(s)")
                    docker("rm", "-f", *ids)
                    done.append(f"removed {len(ids)} worker container(s)")
                for name in PUSHED:
                    if docker("image", "inspect", self.image_ref(name), check=False).returncode == 0:
                        docker("rmi", self.image_ref(name), check=False)
            if registry.stop(state.registry_pid):
                done.append(f"stopped the registry (pid {state.registry_pid})")
            if daemon.stop_daemon(state.dockerd_pid):
                done.append(f"stopped dockerd (pid {state.dockerd_pid})")
            for path in (self.work_base, self.home / "registry" / "storage", self.home / "docker-config"):
                if path.exists():
                    self._remove_dir(path)
            if self._owns_inventory():
                for path in (self.inventory_path, self.known_hosts_path):
                    if path.exists():
                        path.unlink()
                        done.append(f"removed {path}")
            self._save(LabState(registry_port=state.registry_port, images=state.images))
        return done

    def _owns_inventory(self) -> bool:
        """Only an inventory this lab wrote is removed by its `down` (another lab may share the directory)."""
        try:
            first = self.inventory_path.read_text().split("\n", 1)[0]
        except OSError:
            return False
        return first.endswith(f"for the lab {self.name}; rewritten each time. Do not edit.")

    def _container(self, worker: str) -> str:
        return f"{self.name}-{worker}"

    def env(self) -> dict[str, str]:
        """What a shell needs to use this lab: the feed password, the inventory, and the lab itself."""
        return {
            PASSWORD_ENV: self.registry_password(),
            "SSHEXEC_INVENTORY": str(self.inventory_path),
            "SSHEXEC_LAB_NAME": self.name,
            "SSHEXEC_LAB_HOME": str(self.home),
            "SSHEXEC_LAB_INVENTORY_DIR": str(self.inventory_dir),
            "SSHEXEC_LAB_REGISTRY_PORT": str(self.registry_port),
        }

    @staticmethod
    def _remove_dir(path: Path) -> None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def wait_for_ssh(port: int, container: str, timeout: float = 60.0) -> None:
    """Wait until sshd sends its banner on the port (bounded; no fixed sleep)."""
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
    logs = docker("logs", "--tail", "20", container, check=False)
    raise LabError(f"{container}: sshd did not answer on 127.0.0.1:{port} within {timeout:g}s ({last}):\n{logs.stdout.decode(errors='replace')}{logs.stderr.decode(errors='replace')}")
