"""Helpers for integration tests: run the CLI, write runbooks and inventories, start extra workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def sshexec(*args, env=None, input=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    """Run the real `sshexec` program; text output."""
    return subprocess.run(
        [sys.executable, "-m", "sshexec", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy(), input=input, cwd=cwd or REPO,
    )  # fmt: skip



def start_run(rb, *args, env=None) -> subprocess.Popen:
    """`sshexec run RUNBOOK ARGS...` in the background, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "sshexec", "run", str(rb), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env or os.environ.copy(),
    )  # fmt: skip


def stop_run(proc: subprocess.Popen) -> None:
    """A run a failing test leaves behind: Ctrl-C, so that it cleans up after itself; killed if it will not end."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def wait_for_line(proc, needle, limit=60, *, stderr=False):
    """Read the run's stdout (or stderr: where --json sends the live output) until `needle` shows up (bounded)."""
    stream, other = (proc.stderr, proc.stdout) if stderr else (proc.stdout, proc.stderr)
    end = time.monotonic() + limit
    seen = []
    while time.monotonic() < end:
        line = stream.readline().decode()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared; got {seen!r}; other stream {other.read().decode()[-2000:]}")


def require_programs(*names: str) -> None:
    """Fail (never skip) when a program the tests run is missing: scripts/bootstrap installs them all."""
    import pytest

    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run ./scripts/bootstrap", pytrace=False)


# The shells a worker's scriptlets are run under in the unit tests (POSIX sh as Debian, bash, busybox's ash).
SCRIPT_SHELLS = [["dash"], ["bash"], ["busybox", "sh"]]  # a missing one fails the module: scripts/bootstrap installs them


def fake_docker_bin(tmp_path: Path, script: str) -> Path:
    """A bin directory (first on a test's PATH) whose `docker` is the shell script `script`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(script)
    (bindir / "docker").chmod(0o755)
    return bindir


def write_runbook(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path



def step(name, image, script, *, syntax="bash", pool="linux", **extra):
    s = {"name": name, "pool": pool, "container": {"image": image}, "script": {"syntax": syntax, "inline": textwrap.dedent(script)}}
    for key in ("feed", "pull", "user"):
        if key in extra:
            s["container"][key] = extra.pop(key)
    s.update(extra)
    return s



def docker(*args, check=True, host=None) -> subprocess.CompletedProcess:
    """The docker CLI on this machine; `host`: another daemon's endpoint (a lab worker's)."""
    return subprocess.run(["docker", *(("--host", host) if host else ()), *args], capture_output=True, text=True, check=check, timeout=120)



def worker_docker(lab, worker: str, *args, check=True) -> subprocess.CompletedProcess:
    """docker, talking to the Docker daemon of a lab worker (each has its own)."""
    return docker(*args, check=check, host=lab.daemon(worker).host)



def worker_exec(lab, worker: str, *argv: str) -> str:
    return docker("exec", f"{lab.name}-{worker}", *argv).stdout



def daemon_hosts(lab) -> list[str | None]:
    """Every daemon a test's steps may have run on: the host's (extra workers) and each lab worker's."""
    return [None, *(d.host for d in lab.daemons())]



def leftovers(lab, run_ids) -> list[str]:
    """What runs left behind: containers of those runs on any daemon, run directories, docker credentials."""
    found = []
    wanted = set(run_ids)
    for host in daemon_hosts(lab):
        out = docker("ps", "-a", "--filter", "label=sshexec.run", "--format", '{{.ID}} {{.Label "sshexec.run"}}', host=host).stdout
        for line in out.splitlines():
            cid, _, rid = line.partition(" ")
            if rid in wanted:
                found.append(f"container {cid} of run {rid} on {host or 'the host daemon'}")
    base = lab.work_base
    if base.exists():
        for w in base.iterdir():
            runs = w / "runs"
            if runs.exists():
                found += [f"{p}" for p in runs.iterdir() if p.name in wanted]
            found += [str(p) for p in w.rglob("docker-config*")]
    return found



def sign_certificate(lab, key: Path, *, principals=("deploy",), validity="-5m:+1h", cert: Path | None = None, key_id="sshexec-test") -> Path:
    """An OpenSSH user certificate for `key` (its .pub), signed by the lab's CA: KEY-cert.pub unless `cert` is given."""
    made = key.parent / f"{key.name}-cert.pub"
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(lab.ca_key_path), "-I", key_id, "-n", ",".join(principals), "-V", validity, f"{key}.pub"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    if cert is not None and cert != made:
        made.rename(cert)
        return cert
    return made


def new_key(path: Path) -> Path:
    """A fresh ed25519 key pair at `path` (and `path`.pub), in no authorized_keys."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True, capture_output=True, timeout=30)
    return path


def lab_pids(lab) -> dict[int, list[str]]:
    """The live processes the lab's state records (registry, dockerd, any `*pid*` entry), with their command lines."""
    import json

    try:
        state = json.loads(lab.state_file.read_text())
    except (OSError, ValueError):
        return {}
    pids: list[int] = []

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif type(value) is int and "pid" in key and value > 0:
            pids.append(value)

    walk(state, "")
    return {pid: cmd for pid in pids if (cmd := _cmdline(pid))}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def lab_remnants(lab, pids: dict[int, list[str]]) -> list[str]:
    """What of a lab is still on this machine: its containers, the test containers made for it, step
    containers using its work roots, the processes `pids` (as lab_pids saw them) if still the same
    programs, and any process whose command line names the lab's home or work directory."""
    found = []
    if docker("version", check=False).returncode == 0:
        found += [f"container {cid}" for cid in _lab_containers(lab)]
    elif not any(cmd and Path(cmd[0]).name == "dockerd" and "--data-root" not in cmd for cmd in pids.values()):
        # `lab down` stops the host's dockerd when the lab started it and nothing else uses it (a
        # clean CI machine): then no container of the lab can be running. Only then: a daemon the
        # lab did not start must still answer. (A worker's own dockerd has the lab's --data-root.)
        found.append("the host's Docker daemon no longer answers, and the lab did not start it")
    for pid, cmd in pids.items():
        if _cmdline(pid) == cmd:
            found.append(f"process {pid}: {' '.join(cmd)}")
    marks = (f"{lab.home}/", f"{lab.work_base}/")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) not in pids:
            cmd = _cmdline(int(proc.name))
            if any(arg.startswith(marks) or f"={marks[0]}" in arg or arg in (str(lab.home), str(lab.work_base)) for arg in cmd):
                found.append(f"process {proc.name}: {' '.join(cmd)}")
    return found


def _lab_containers(lab) -> list[str]:
    """The host daemon's containers of `lab`: its own, the tests', and step containers using its work roots."""
    ids = docker("ps", "-aq", "--filter", f"label=sshexec.lab={lab.name}").stdout.split()
    ids += docker("ps", "-aq", "--filter", f"label=sshexec.test={lab.name}").stdout.split()
    for line in docker("ps", "-a", "--format", "{{.ID}} {{.Names}}").stdout.splitlines():
        cid, _, names = line.partition(" ")
        if any(n.startswith(f"{lab.name}-") for n in names.split(",")):
            ids.append(cid)
    steps = docker("ps", "-aq", "--filter", "label=sshexec.run").stdout.split()
    if steps:
        work = f"{lab.work_base}/"
        for line in docker("inspect", "--format", "{{.Id}} {{range .Mounts}}{{.Source}} {{end}}", *steps, check=False).stdout.splitlines():
            cid, *sources = line.split()
            if any(src.startswith(work) for src in sources):
                ids.append(cid[:12])
    return list(dict.fromkeys(ids))


def push_fresh(lab, base="busybox") -> str:
    """Push a uniquely tagged copy of a lab image to the lab registry and drop it locally: no daemon has it."""
    ref = f"{lab.registry_address}/sshexec/fresh:{uuid.uuid4().hex[:10]}"
    cfg = f"/tmp/sshexec-test-docker-{uuid.uuid4().hex[:6]}"
    os.makedirs(cfg, mode=0o700)
    try:
        subprocess.run(["docker", "--config", cfg, "login", "-u", "sshexec", "--password-stdin", lab.registry_address], input=lab.registry_password().encode(), check=True, capture_output=True)
        docker("tag", lab.image_ref(base), ref)
        subprocess.run(["docker", "--config", cfg, "push", ref], check=True, capture_output=True)
    finally:
        subprocess.run(["rm", "-rf", cfg])
    docker("rmi", ref)
    return ref



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@contextlib.contextmanager
def extra_worker(lab, *, docker_socket=True, env=None, name=None, tmpfs=None, daemon_of=None, socket_link=True, work=None, owner=1000):
    """A worker container of the lab's image started for one test (testcontainers), removed after.

    Its Docker daemon is the host's, or with `daemon_of="w2"` that lab worker's
    (its socket directory mounted at /run/sx; with `socket_link=False` nothing
    is at /var/run/docker.sock, and only docker_host reaches it). `work`: a work
    root of its own by default, or one shared with other workers (kept after);
    `owner`: the uid that owns it. `tmpfs` maps paths inside the worker to tmpfs
    mount options, e.g. {"/srv/small": "size=1m,mode=1777"}: a small disk for
    "no space left" tests.
    """
    from testcontainers.core.container import DockerContainer

    from sshexec.lab.containers import SOCKET_DIR_IN_WORKER, SOCKET_IN_WORKER
    from sshexec.lab.core import wait_for_ssh

    name = name or f"t{uuid.uuid4().hex[:8]}"
    own_work = work is None
    work = Path(work or lab.work_base / name)
    work.mkdir(parents=True, exist_ok=True)
    os.chown(work, owner, owner)
    c = DockerContainer(lab.worker_image())
    c.ports["22/tcp"] = ("127.0.0.1", None)  # loopback only, any free port
    c.with_volume_mapping(str(work), str(work), "rw")
    if daemon_of is not None:
        c.with_volume_mapping(str(lab.daemon(daemon_of).socket_dir), SOCKET_DIR_IN_WORKER, "rw")
        c.with_env("SSHEXEC_DOCKER_SOCKET", SOCKET_IN_WORKER)
        if socket_link:
            c.with_env("SSHEXEC_DOCKER_SOCKET_LINK", "1")
    elif docker_socket:
        c.with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
    c.with_env("SSHEXEC_AUTHORIZED_KEY", lab.public_key())
    c.with_env("SSHEXEC_USER_CA", lab.ca_public_key())
    for k, v in (env or {}).items():
        c.with_env(k, v)
    c.with_kwargs(labels={"sshexec.test": lab.name}, hostname=name)
    for path, options in (tmpfs or {}).items():
        c.tmpfs[path] = options  # with_tmpfs_mount() only takes a size; docker takes any mount options
    c.start()
    try:
        port = int(c.get_exposed_port(22))
        wait_for_ssh(port, c.get_wrapped_container().name)
        yield ExtraWorker(name, port, c, work)
    finally:
        c.stop()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


class ExtraWorker:
    def __init__(self, name, port, container, work):
        self.name, self.port, self.container, self.work = name, port, container, work

    @property
    def id(self) -> str:
        return self.container.get_wrapped_container().id

    def host_keys(self) -> str:
        out = docker("exec", self.id, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout
        return "".join(f"[127.0.0.1]:{self.port} {' '.join(line.split()[:2])}\n" for line in out.splitlines())



def inventory_file(tmp_path, lab, workers: list[dict], *, known_hosts: str | None = None, name="inv.yaml") -> Path:
    """An inventory for the given workers using the lab's key; known_hosts written as given."""
    kh = tmp_path / f"{name}.known_hosts"
    kh.write_text(known_hosts or "")
    data = {
        "defaults": {"user": "deploy", "identity_file": str(lab.key_path), "known_hosts": str(kh), "connect_timeout": 5},
        "workers": workers,
        "feeds": [{"name": "lab", "registry": lab.registry_address, "username": "sshexec", "password_env": "SSHEXEC_LAB_REGISTRY_PASSWORD"}],
    }
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p



class JumpLab:
    """A bastion published on 127.0.0.1 and workers reachable only through it (see `jump_lab`)."""

    def __init__(self, network, bastion, bastion_port, inner):
        self.network, self.bastion, self.bastion_port, self.inner = network, bastion, bastion_port, inner

    def host_keys(self, container: str, name: str) -> str:
        out = docker("exec", container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout
        return "".join(f"{name} {' '.join(line.split()[:2])}\n" for line in out.splitlines())

    def bastion_keys(self) -> str:
        return self.host_keys(self.bastion, f"[127.0.0.1]:{self.bastion_port}")

    def inner_keys(self) -> str:
        return "".join(self.host_keys(c, alias) for alias, c in self.inner.items())

    def accepted_logins(self, container: str | None = None) -> int:
        """How many SSH logins the bastion's sshd (or `container`'s) accepted (its log, sshd -e)."""
        logs = docker("logs", container or self.bastion)
        return (logs.stdout + logs.stderr).count("Accepted")


@contextlib.contextmanager
def jump_lab(lab, count: int = 1, *, bastion_env: dict | None = None):
    """A real bastion topology: an internal Docker network (no way out, no published port) holding
    `count` worker containers, and a bastion container on it and on the default bridge, published
    on 127.0.0.1. The workers are reachable only through the bastion, by their alias (inner1…).
    `bastion_env`: more environment for the bastion's start (worker-start.sh), e.g. sshd settings."""
    from sshexec.lab.core import wait_for_ssh

    tag = uuid.uuid4().hex[:8]
    network = f"sx-jump-{tag}"
    docker("network", "create", "--internal", "--label", f"sshexec.test={lab.name}", network)
    started: list[str] = []
    works: list[Path] = []
    try:
        key = lab.public_key()
        bastion = f"sx-bastion-{tag}"
        extra = [a for k, v in (bastion_env or {}).items() for a in ("-e", f"{k}={v}")]
        docker("run", "-d", "--name", bastion, "--hostname", "bastion", "--label", f"sshexec.test={lab.name}",
               "-p", "127.0.0.1::22", "-e", f"SSHEXEC_AUTHORIZED_KEY={key}", *extra, lab.worker_image())  # fmt: skip
        started.append(bastion)
        docker("network", "connect", network, bastion)
        inner = {}
        for i in range(1, count + 1):
            alias, name = f"inner{i}", f"sx-inner{i}-{tag}"
            work = lab.work_base / name
            work.mkdir(parents=True, exist_ok=True)
            os.chown(work, 1000, 1000)
            works.append(work)
            docker("run", "-d", "--name", name, "--hostname", alias, "--network", network, "--network-alias", alias,
                   "--label", f"sshexec.test={lab.name}", "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", f"{work}:{work}",
                   "-e", f"SSHEXEC_AUTHORIZED_KEY={key}", lab.worker_image())  # fmt: skip
            started.append(name)
            inner[alias] = name
        port = int(docker("port", bastion, "22/tcp").stdout.split(":")[-1])
        wait_for_ssh(port, bastion)
        for alias, name in inner.items():
            # Wait until the worker's sshd answers, as seen from the bastion.
            for _ in range(100):
                if docker("exec", bastion, "bash", "-c", f"exec 3<>/dev/tcp/{alias}/22 && head -c 4 <&3", check=False).stdout.startswith("SSH-"):
                    break
                time.sleep(0.1)
        yield JumpLab(network, bastion, port, inner)
    finally:
        for c in started:
            docker("rm", "-f", c, check=False)
        docker("network", "rm", network, check=False)
        for work in works:
            shutil.rmtree(work, ignore_errors=True)


class PortRecorder:
    """A TCP port on 127.0.0.1 that records who connected to it (`accepted`: their addresses).

    Each connection gets `banner` (if any), then is closed. A bare close looks like sshd's
    MaxStartups drop, which sshexec retries for seconds; an SSH-1 banner is refused at once.
    """

    def __init__(self, banner: bytes | None = None):
        import threading

        self.banner = banner
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._halt.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(addr)
            try:
                if self.banner:
                    conn.sendall(self.banner)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self._halt.set()
        self._thread.join(5)
        self.sock.close()


def stored_log(run_id: str, where=None) -> bytes:
    """A run's whole stored log, from the history's database (default: $SSHEXEC_DB, else $SSHEXEC_HOME's)."""
    from sshexec.store.history import History

    return History(where).log_text(run_id)


def stored_artifact(run_id: str, worker: str, name: str, where=None) -> bytes:
    """An artifact's bytes, from the history's database."""
    from sshexec.store import artifacts
    from sshexec.store.history import History

    db = History(where).db
    found = artifacts.artifact(db, run_id, worker, name)
    assert found is not None, f"run {run_id} has no artifact {worker}/{name}"
    return b"".join(artifacts.chunks(db, run_id, worker, name, found["chunks"]))
