"""A Docker daemon per lab worker: its own data-root, exec-root, socket, pidfile and bridge.

A fleet's workers each have their own image cache, containers and disk; a
lab where every worker shares the host's daemon hides that. Each worker of
the lab gets a `dockerd` of its own, started here as a host process (so bind
mounts of work_root resolve on the host, as they do for the shared daemon),
and stopped by the PID recorded when it started, never by name.

Where a worker's daemon keeps what (lab `L`, worker `W`):

    /var/lib/L/daemons/W/          --data-root: images, containers, volumes
    /run/sshexec-lab/L/W/exec/     --exec-root (its containerd lives there too)
    /run/sshexec-lab/L/W/sock/docker.sock   the API socket; the worker container
                                   mounts the sock/ directory, so a restarted
                                   daemon's new socket shows up in it
    /run/sshexec-lab/L/W/dockerd.pid   --pidfile
    <lab home>/daemons/W.log       its log
    <lab home>/daemons/W.json      its --config-file (/etc/docker/daemon.json is the host's), naming
                                   its own identity key, data-root/key.json (the daemon's ID)

Each daemon is a host of its own to `docker info` (and so to `sshexec check`): its ID
comes from its own key instead of the host's /etc/docker/key.json, and its name,
the host name it sees, is the worker's, in a UTS namespace of its own (`unshare
--uts`, which then execs dockerd: the PID recorded is dockerd's).

`--iptables=false --ip-masq=false`: the host's rules are left alone; the
daemon pulls from the registry on 127.0.0.1 in the host's network namespace,
and step containers need no way out. `--ip 127.0.0.1`: a published port binds
to loopback only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..core.local import pid_alive
from . import bridges
from .bridges import Bridge
from .errors import LabError
from .proc import docker, proc_cmdline, start_background, stop_pid

RUN_BASE = Path("/run/sshexec-lab")
DATA_BASE = Path("/var/lib")
START_WAIT = 60.0
# The kernel's limit on a unix socket path, less room for containerd's own sockets under exec/.
MAX_RUN_DIR = 60


@dataclass(frozen=True)
class WorkerDaemon:
    """Where one worker's daemon keeps its things; what it is doing is in the lab's state."""

    lab: str
    worker: str
    home: Path  # the lab's home: logs and the config file

    @property
    def data_root(self) -> Path:
        return DATA_BASE / self.lab / "daemons" / self.worker

    @property
    def run_dir(self) -> Path:
        return RUN_BASE / self.lab / self.worker

    @property
    def exec_root(self) -> Path:
        return self.run_dir / "exec"

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "sock"

    @property
    def socket(self) -> Path:
        return self.socket_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def log(self) -> Path:
        return self.home / "daemons" / f"{self.worker}.log"

    @property
    def host(self) -> str:
        """The daemon's endpoint for a docker client: `docker --host HOST ...`."""
        return f"unix://{self.socket}"

    @property
    def config(self) -> Path:
        return self.home / "daemons" / f"{self.worker}.json"

    def argv(self, bridge: Bridge) -> list[str]:
        return [
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.worker,
            "dockerd",
            "--config-file", str(self.config),
            "--host", self.host,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "--bridge", bridge.name,
            "--iptables=false", "--ip-masq=false", "--ip", "127.0.0.1",
            "--label", f"sshexec.lab={self.lab}", "--label", f"sshexec.lab.worker={self.worker}",
        ]  # fmt: skip

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """The host's docker CLI, talking to this daemon."""
        return docker("--host", self.host, *args, **kw)

    def answers(self, timeout: float = 5.0) -> bool:
        try:
            res = subprocess.run(["docker", "--host", self.host, "version", "--format", "{{.Server.Version}}"], capture_output=True, timeout=timeout)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0

    def is_ours(self, pid: int | None) -> bool:
        """`pid` is a live dockerd serving this worker's socket (not a reused PID)."""
        if not pid_alive(pid):
            return False
        cmd = proc_cmdline(pid)
        return bool(cmd) and os.path.basename(cmd[0]) == "dockerd" and self.host in cmd


def start(d: WorkerDaemon, bridge: Bridge, *, wait: float = START_WAIT) -> int:
    """Start the worker's dockerd; return its PID once it answers."""
    if len(str(d.run_dir)) > MAX_RUN_DIR:
        raise LabError(f"the lab name {d.lab!r} is too long for its daemons' socket paths", hint="choose a shorter SSHEXEC_LAB_NAME")
    if shutil.which("dockerd") is None:
        raise LabError("dockerd is not installed: apt-get install -y docker.io (the README's commands do this)")
    if os.geteuid() != 0:
        raise LabError("a Docker daemon per lab worker needs root", hint="run as root, or use `sshexec lab up --shared-daemon`")
    for path in (d.data_root, d.exec_root, d.socket_dir, d.log.parent):
        path.mkdir(parents=True, exist_ok=True)
    d.data_root.chmod(0o711)  # the worker's SSH user df's it (check), as on a real host
    d.config.write_text(json.dumps({"deprecated-key-path": str(d.data_root / "key.json")}) + "\n")
    _drop_stale_pidfiles(d)
    pid = start_background(d.argv(bridge), d.log)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if d.answers():
            return pid
        if not pid_alive(pid):
            tail = d.log.read_text(errors="replace").splitlines()[-15:] if d.log.exists() else []
            raise LabError(f"the Docker daemon of lab worker {d.worker} exited at start:\n" + "\n".join(tail), hint=f"see {d.log}")
        time.sleep(0.2)
    stop_pid(pid, "dockerd", timeout=30)
    raise LabError(f"the Docker daemon of lab worker {d.worker} did not answer within {wait:g}s", hint=f"see {d.log}")


def _drop_stale_pidfiles(d: WorkerDaemon) -> None:
    """After a kill -9, the pidfiles name dead processes, or PIDs since reused by others;
    dockerd refuses to start over the first kind and would wait on the second."""
    old = _pid_in(d.pidfile)
    if old is not None and not d.is_ours(old):
        d.pidfile.unlink(missing_ok=True)
    # A containerd of this daemon that outlived it is adopted by the next dockerd; anything else is stale.
    if not orphans_alive(d):
        (d.exec_root / "containerd" / "containerd.pid").unlink(missing_ok=True)


def orphans_alive(d: WorkerDaemon) -> bool:
    """A containerd of this daemon still runs though dockerd is gone (dockerd alone was killed)."""
    pid = _pid_in(d.exec_root / "containerd" / "containerd.pid")
    cmd = proc_cmdline(pid) if pid is not None and pid_alive(pid) else []
    return bool(cmd) and os.path.basename(cmd[0]) == "containerd" and any(str(d.exec_root) in word for word in cmd)


def stop(d: WorkerDaemon, pid: int | None) -> bool:
    """Stop the worker's dockerd by its PID (it stops its containers and its containerd first)."""
    return d.is_ours(pid) and stop_pid(pid, "dockerd", timeout=30)


def remove_files(d: WorkerDaemon) -> None:
    """Delete the daemon's data, runtime files and log (it is stopped)."""
    _unmount_under((d.data_root, d.run_dir))
    for path in (d.data_root, d.run_dir):
        shutil.rmtree(path, ignore_errors=True)
    d.log.unlink(missing_ok=True)
    d.config.unlink(missing_ok=True)
    for parent in (d.data_root.parent, d.data_root.parent.parent, d.run_dir.parent):
        try:
            parent.rmdir()  # only when empty: the work roots may live beside them
        except OSError:
            pass


def _unmount_under(roots: tuple[Path, ...]) -> None:
    """Mounts a killed daemon left (overlay layers, shm, network namespaces), deepest first."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    prefixes = tuple(str(r) + "/" for r in roots)
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    # The roots too: dockerd bind-mounts its data-root onto itself, and one killed leaves that behind.
    ours = {p for p in points if p.startswith(prefixes) or p in {str(r) for r in roots}}
    for point in sorted(ours, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


# -- a lab's daemons, as recorded in its state: {worker: {"pid", "bridge", "subnet"}} ------------


def ensure_all(lab: str, home: Path, records: dict[str, dict], names: list[str]) -> None:
    """Every named worker's daemon answering: kept if it does, else (re)started on its bridge.

    `records` is updated in place. Daemons start in parallel (about 3 s each).
    """

    def one(name: str) -> tuple[str, dict]:
        d = WorkerDaemon(lab, name, home)
        rec = dict(records.get(name) or {})
        if d.is_ours(rec.get("pid")):
            if d.answers():
                return name, rec
            stop(d, rec["pid"])  # alive but deaf: start afresh
        known = bridges.Bridge(rec["bridge"], rec["subnet"]) if rec.get("bridge") else None
        bridge = bridges.ensure(lab, name, known)
        rec.update(bridge=bridge.name, subnet=bridge.subnet, pid=None)
        rec["pid"] = start(d, bridge)
        return name, rec

    with ThreadPoolExecutor(max_workers=4) as pool:
        records.update(pool.map(one, names))


def remove_all(lab: str, home: Path, records: dict[str, dict], names: list[str], say: Callable[[str], None]) -> list[str]:
    """Stop these workers' daemons (by PID), delete their bridges and data; what was done.

    The PID comes from the lab's records, else from the daemon's pidfile when it
    names this daemon (a state file lost in a crash). `records` loses the names.
    """
    done = []
    for name in names:
        d = WorkerDaemon(lab, name, home)
        rec = records.get(name) or {}
        bridge = bridges.Bridge(rec["bridge"], rec["subnet"]) if rec.get("bridge") else None
        pid = rec.get("pid") if d.is_ours(rec.get("pid")) else _pid_in(d.pidfile)
        if not d.is_ours(pid):
            pid = None
        if pid is None and orphans_alive(d) and bridge is not None:
            # dockerd alone was killed: a new one adopts its containerd and stops it properly.
            say(f"{name}: restarting its daemon to stop what the killed one left running")
            pid = start(d, bridges.ensure(lab, name, bridge))
        if stop(d, pid):
            done.append(f"stopped the Docker daemon of {name} (pid {pid})")
        remove_files(d)
        if bridges.remove(bridge):
            done.append(f"deleted bridge {bridge.name} ({bridge.subnet})")
        records.pop(name, None)
    return done


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
