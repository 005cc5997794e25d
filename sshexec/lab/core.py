"""The local lab: a registry with auth, SSH workers each with a Docker daemon of its own,
a bastion with workers behind it, and the inventory for all of them.

`Lab.up()` is idempotent and fast when everything is already there, and
recovers what a `kill -9` of everything leaves (stale pidfiles, bridges,
stopped containers); `Lab.down()` removes exactly what `up()` created and
stops only the processes it started, by the PIDs it recorded.

The pieces: daemon.py (the host's daemon, which runs the lab's containers),
workerd.py and bridges.py (a daemon per worker), topology.py and containers.py
(the workers, the bastion, the internal network; the inventory and known_hosts
written for them), registry.py and distribute.py (the registry, the images
pushed to it and pulled into each worker's daemon), state.py.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..core.local import pid_alive, state_home
from . import containers, daemon, distribute, registry, topology, workerd
from .containers import SOCKET_IN_WORKER, wait_for_ssh  # noqa: F401 - wait_for_ssh: the tests' extra workers use it
from .errors import LabError
from .proc import docker
from .state import DaemonInfo, LabState, LabStatus, WorkerInfo, load, save
from .workerd import WorkerDaemon

REGISTRY_USER = "sshexec"
PASSWORD_ENV = "SSHEXEC_LAB_REGISTRY_PASSWORD"
PUSHED = ("tools", "busybox", "entrypoint", "nonroot")
DEFAULT_WORKERS = 2
DEFAULT_INTERNAL = 1
MAX_WORKERS = 200  # with --shared-daemon (the benchmark checks 200 workers)
MAX_DAEMON_WORKERS = 16  # a dockerd and a containerd each: about 80 MB of memory per worker
BASTION = topology.BASTION

Progress = Callable[[str], None]

DEFAULT_NAME = "sshexec-lab"


class Lab:
    """One lab instance. Several coexist on one machine under different names
    (the tests and the benchmarks use their own), each with its own registry
    port, work roots, worker daemons and bridges."""

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
        self.state_file = self.home / "state.json"
        # Where the lab's inventory is: as asked, else where `up` wrote it (so that env, status
        # and down work from any directory), else the default lab writes ./inventory/ (the
        # repository's), and another lab keeps its own.
        recorded = self._load().inventory_dir
        self.inventory_dir = Path(inventory_dir or env_inv or recorded or ("inventory" if default else self.home / "inventory")).resolve()
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

    def daemon(self, worker: str) -> WorkerDaemon:
        """Where the Docker daemon of `worker` keeps its things (its endpoint: `.host`)."""
        return WorkerDaemon(self.name, worker, self.home)

    def daemon_pid(self, worker: str) -> int | None:
        return self._load().daemons.get(worker, {}).get("pid")

    def daemons(self) -> list[WorkerDaemon]:
        """The per-worker daemons of the lab as it is (none with --shared-daemon)."""
        return [self.daemon(w) for w in self._load().daemons]

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
        return load(self.state_file)

    def _save(self, state: LabState) -> None:
        save(self.state_file, state)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # -- up -----------------------------------------------------------------------

    def up(
        self,
        workers: int | None = None,
        *,
        at_least: int | None = None,
        internal: int | None = None,
        shared_daemon: bool = False,
        progress: Progress | None = None,
    ) -> LabStatus:
        """Bring the lab up with `workers` workers reached directly (default: as many as now, at least
        `at_least`, else 2) and `internal` workers behind the bastion (default: as many as now, else 1).

        Each worker gets a Docker daemon of its own, unless `shared_daemon`: then
        every worker uses the host's daemon (the large benchmark lab does).
        """
        say = progress or (lambda msg: None)
        limit = MAX_WORKERS if shared_daemon else MAX_DAEMON_WORKERS
        for what, n in (("--workers", workers), ("the number of internal workers", internal)):
            if n is not None and not 1 <= n <= limit:
                hint = None if shared_daemon else "more workers can share the host's daemon: sshexec lab up --shared-daemon"
                raise LabError(f"{what} must be between 1 and {limit}", hint=hint)
        with self._locked():
            state = self._load()
            state.registry_port = self._registry_port or state.registry_port or 5000
            if state.inventory_dir and Path(state.inventory_dir) != self.inventory_dir:
                self._remove_inventory(Path(state.inventory_dir))  # moved: what the last `up` wrote goes
            state.inventory_dir = str(self.inventory_dir)

            say("Docker daemon")
            if not daemon.daemon_answers():
                state.dockerd_pid = daemon.ensure_daemon(self.home / "dockerd.log")
                self._save(state)

            say("images (built offline, cached by recipe)")
            from .building import ensure_images

            built = ensure_images(build_dir=self.home / "build", on_progress=lambda name, msg: say(f"image {name}: {msg}"))
            state.images = {name: b.tag for name, b in built.items()}
            self._save(state)

            say("registry")
            restarted = self._ensure_registry(state)
            self._save(state)

            say("pushing execution images")
            refs = {name: self.image_ref(name) for name in PUSHED}
            distribute.push({n: state.images[n] for n in PUSHED}, state.pushed, refs, port=state.registry_port, user=REGISTRY_USER,
                            password=self.registry_password(), scratch=self.home, say=say, verify=restarted)  # fmt: skip
            self._save(state)

            count = workers or max(len(state.workers), at_least or 0) or DEFAULT_WORKERS
            inner_count = internal if internal is not None else (len(state.internal) or DEFAULT_INTERNAL)
            direct = [f"w{i}" for i in range(1, count + 1)]
            inner = [f"inner{i}" for i in range(1, inner_count + 1)]
            self._drop_extra(state, direct + inner)
            state.workers, state.internal = direct, inner
            topology.make_key(self.key_path)
            topology.make_key(self.ca_key_path, b"sshexec-lab-ca")

            if shared_daemon:
                workerd.remove_all(self.name, self.home, state.daemons, list(state.daemons), say)
            else:
                say(f"{len(direct + inner)} worker Docker daemon(s)")
                workerd.ensure_all(self.name, self.home, state.daemons, direct + inner)
            state.shared_daemon = shared_daemon
            self._save(state)

            with ThreadPoolExecutor(max_workers=1) as background:
                seeding = None
                if not shared_daemon:
                    say("execution images in each worker's daemon")
                    seeding = background.submit(distribute.seed, [self.daemon(w) for w in direct + inner], list(refs.values()),
                                                address=self.registry_address, user=REGISTRY_USER, password=self.registry_password(),
                                                scratch=self.home, say=say)  # fmt: skip
                say(f"{count} SSH worker container(s), a bastion, {len(inner)} worker(s) behind it")
                plan = topology.Plan(self.name, state.images["worker"], self.public_key(), self.work_root, self.daemon, shared_daemon, self.ca_public_key())
                started = topology.ensure(plan, direct, inner)
                if seeding is not None:
                    seeding.result()
            self._write_private(self.known_hosts_path, topology.known_hosts(started, state.host_keys))
            self._save(state)
            feed = {"name": "lab", "registry": self.registry_address, "username": REGISTRY_USER, "password_env": PASSWORD_ENV}
            self.inventory_path.parent.mkdir(parents=True, exist_ok=True)
            self.inventory_path.write_text(topology.inventory(started, lab=self.name, feed=feed, password_env=PASSWORD_ENV))
            # Everything is known to be up now: no second round of questions to the daemons.
            now = {s.spec.container: containers.Existing(s.id, True, s.spec.config_hash(), s.port) for s in started}
            return self._status(state, True, True, now)

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(text)
        path.chmod(0o600)

    def _ensure_registry(self, state: LabState) -> bool:
        """The registry answers with the lab's password; True if it was (re)started now."""
        password = self.registry_password()
        port = state.registry_port
        ours = registry.is_ours(state.registry_pid)
        if ours and registry.config_current(self.home / "registry") and registry.status(port, REGISTRY_USER, password) == 200:
            return False
        if ours:
            registry.stop(state.registry_pid)
        state.registry_pid = registry.start(self.home / "registry", port, REGISTRY_USER, password)
        return True

    def _drop_extra(self, state: LabState, keep: list[str]) -> None:
        """Workers of an earlier `up` that this one does not want: their container, daemon and work root go."""
        for extra in [w for w in state.workers + state.internal if w not in keep]:
            docker("rm", "-f", f"{self.name}-{extra}", check=False)
            state.host_keys.pop(f"{self.name}-{extra}", None)
            self._remove_dir(self.work_root(extra))
            if extra in state.daemons:
                workerd.remove_all(self.name, self.home, state.daemons, [extra], lambda msg: None)

    def worker_image(self) -> str:
        """The local tag of the worker image (for tests that start workers of their own)."""
        return self._load().images["worker"]

    def public_key(self) -> str:
        return self.key_path.with_suffix(".pub").read_text().strip()

    def ca_public_key(self) -> str:
        return self.ca_key_path.with_suffix(".pub").read_text().strip()

    # -- status / down ------------------------------------------------------------

    def status(self) -> LabStatus:
        state = self._load()
        answers = daemon.daemon_answers()
        registry_up = registry.is_ours(state.registry_pid) and registry.status(state.registry_port) == 401
        return self._status(state, answers, registry_up, containers.existing(self.name) if answers else {})

    def _status(self, state: LabState, answers: bool, registry_up: bool, now: dict) -> LabStatus:
        """What `lab status` shows, from what is known (`up` knows it all already)."""
        if not answers:
            d = "down"
        elif state.dockerd_pid and pid_alive(state.dockerd_pid):
            d = f"started by the lab (pid {state.dockerd_pid})"
        else:
            d = "external (not managed by the lab)"
        r = f"up (pid {state.registry_pid})" if registry_up else "down"
        roles = [(n, "worker") for n in state.workers] + [(n, "internal") for n in state.internal]
        if roles:
            roles.insert(len(state.workers), (BASTION, "bastion"))
        infos = []
        for name, role in roles:
            container = f"{self.name}-{name}"
            c = now.get(container)
            up_, port_ = (c.running, c.port if c.running else None) if c else (False, None)
            work = str(self.work_root(name)) if role != "bastion" else None
            infos.append(WorkerInfo(name, container, port_, up_, work, role, f"unix://{SOCKET_IN_WORKER}" if role == "internal" else None))
        daemons = []
        for name, rec in state.daemons.items():
            wd = self.daemon(name)
            pid = rec.get("pid")
            daemons.append(DaemonInfo(name, pid, wd.is_ours(pid), wd.host, str(wd.data_root), rec.get("bridge"), rec.get("subnet")))
        inv = self.inventory_path if self.inventory_path.exists() else None
        return LabStatus(d, r, f"127.0.0.1:{state.registry_port}", tuple(infos), inv, dict(state.images), tuple(daemons), state.shared_daemon)

    def down(self, *, progress: Progress | None = None) -> list[str]:
        """Remove what up() created; stop only processes it started. Returns what was done."""
        say = progress or (lambda msg: None)
        done: list[str] = []
        with self._locked():
            state = self._load()
            if daemon.daemon_answers():
                say("removing the lab's containers")
                n = containers.remove_all(self.name)
                if n:
                    done.append(f"removed {n} lab container(s) and the internal network")
                for name in PUSHED:
                    if docker("image", "inspect", self.image_ref(name), check=False).returncode == 0:
                        docker("rmi", self.image_ref(name), check=False)
            if registry.stop(state.registry_pid):
                done.append(f"stopped the registry (pid {state.registry_pid})")
            # Daemons the state forgot (a state file lost after a crash) are found by their directories.
            found = [p.name for p in (workerd.RUN_BASE / self.name).glob("*") if p.is_dir()]
            names = list(dict.fromkeys([*state.daemons, *found]))
            if names:
                say(f"stopping {len(names)} worker Docker daemon(s)")
            done += workerd.remove_all(self.name, self.home, state.daemons, names, say)
            if state.dockerd_pid and pid_alive(state.dockerd_pid):
                # The host's daemon is everyone's once it runs: other labs' containers may be on it.
                others = docker("ps", "-q", check=False).stdout.split() if daemon.daemon_answers() else []
                if others:
                    done.append(f"left dockerd (pid {state.dockerd_pid}) running: {len(others)} other container(s) use it")
                elif daemon.stop_daemon(state.dockerd_pid):
                    done.append(f"stopped dockerd (pid {state.dockerd_pid})")
            for path in (self.work_base, self.home / "registry" / "storage", self.home / "docker-config"):
                if path.exists():
                    self._remove_dir(path)
            for path in self.home.glob("docker-config-*"):
                self._remove_dir(path)
            for path in (Path("/var/lib") / self.name, workerd.RUN_BASE):
                try:
                    path.rmdir()  # only when empty: other labs have theirs there
                except OSError:
                    pass
            done += self._remove_inventory(self.inventory_dir)
            self._save(LabState(registry_port=state.registry_port, images=state.images))
        return done

    def _remove_inventory(self, where: Path) -> list[str]:
        """What `up` wrote in `where`: lab.yaml (only if this lab wrote it: another lab may share the
        directory), its key, certificate authority and known_hosts; the directories if left empty."""
        inventory, private = where / "lab.yaml", where / "lab"
        try:
            first = inventory.read_text().split("\n", 1)[0]
        except OSError:
            return []
        if not first.endswith(f"for the lab {self.name}; rewritten each time. Do not edit."):
            return []
        done = []
        for path in (inventory, *(private / n for n in ("known_hosts", "id_ed25519", "id_ed25519.pub", "ca", "ca.pub"))):
            if path.exists():
                path.unlink()
                done.append(f"removed {path}")
        for path in (private, where):
            try:
                path.rmdir()  # only when empty: the repository's inventory/ holds the example
            except OSError:
                pass
        return done

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
        shutil.rmtree(path, ignore_errors=True)
