"""The benchmark's own lab and scratch space: workers, inventories, runbooks, OpenSSH argv.

The suite uses a lab instance of its own ("sshexec-bench", registry on
127.0.0.1:5201) so that it never disturbs a developer's lab or the test lab.
Its state lives under ~/.local/share/sshexec/sshexec-bench (override with
$SSHEXEC_BENCH_HOME or --lab-home); sshexec's run history during a benchmark
goes to a scratch directory that is removed at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LAB = "sshexec-bench"
DEFAULT_REGISTRY_PORT = 5201
PYTHON = sys.executable


def compile_sshexec() -> None:
    """Byte-compile the sshexec package, as `pip install` does for a package it installs.

    An editable checkout run with PYTHONDONTWRITEBYTECODE=1 in the environment (as
    on the machine these figures were taken on) never writes its .pyc files, so
    every `sshexec` process would compile all of sshexec from source (~60-80 ms of
    a warm step), a cost no installed copy pays. Up-to-date files are left alone.
    """
    import compileall

    import sshexec

    compileall.compile_dir(Path(sshexec.__file__).parent, quiet=1)


def installed_sshexec(venv: Path) -> Path:
    """The `sshexec` program as an installed copy has it: a virtualenv whose site-packages finds the
    package by a plain path line, as it finds a wheel's files, and pip's console script. Its path: this
    venv's bin/sshexec.

    The checkout's own .venv/bin/sshexec comes from `pip install -e`, whose import hook (setuptools'
    editable finder, loaded by a .pth at every interpreter start: pathlib, importlib.util, re...) costs
    each process ≈ 10 ms before its first line, a cost no installed copy pays. The code run is the
    checkout's, the libraries the checkout's .venv's (listed in the .pth: not a site directory, so its
    own .pth files, the hook's among them, are not run).
    """
    import sysconfig

    if not (venv / "bin" / "python").exists():
        subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    libraries = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (purelib / "sshexec-checkout.pth").write_text("\n".join([*libraries, str(REPO)]) + "\n")
    script = venv / "bin" / "sshexec"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom sshexec._entry import main\nif __name__ == '__main__':\n"
                      "    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n    sys.exit(main())\n")  # fmt: skip
    script.chmod(0o755)
    return script


def default_home(name: str = DEFAULT_LAB) -> Path:
    if os.environ.get("SSHEXEC_BENCH_HOME"):
        return Path(os.environ["SSHEXEC_BENCH_HOME"]).expanduser()
    return Path.home() / ".local/share/sshexec" / name


@dataclass(frozen=True)
class LabWorker:
    name: str
    port: int
    work_root: str
    container: str


class BenchEnv:
    """The lab (brought up on demand) plus a scratch directory for one suite invocation."""

    def __init__(self, *, name: str = DEFAULT_LAB, home: Path | None = None, registry_port: int = DEFAULT_REGISTRY_PORT, log=print,
                 shared_daemon: bool | None = None):  # fmt: skip
        from sshexec.lab.core import Lab

        self.home = (home or default_home(name)).resolve()
        self.lab = Lab(name, home=self.home, inventory_dir=self.home / "inventory", registry_port=registry_port)
        self.log = log
        # 50 workers: one daemon each would be 50 dockerd and containerd; a new lab shares the host's.
        # None: a lab that exists keeps its way (the smoke tests use the test lab, a daemon per worker).
        self.shared_daemon = shared_daemon
        self.scratch = Path(tempfile.mkdtemp(prefix="sshexec-bench-"))
        self.state = self.scratch / "state"  # SSHEXEC_HOME of every sshexec run of the suite
        self.workers: list[LabWorker] = []  # reached directly (pool linux)
        self.internal: list[str] = []  # behind the lab's bastion (pool internal)
        self._inventory: dict = {}
        self._pids: dict[str, str] = {}

    # -- bring up ------------------------------------------------------------------

    def up(self, workers: int, internal: int = 1) -> None:
        """The lab with at least `workers` workers and `internal` workers behind its bastion
        (never fewer than it has: other runs may use them)."""
        compile_sshexec()
        self.log(f"lab {self.lab.name}: bringing up (at least {workers} workers, {internal} behind the bastion; cached images, idempotent)")
        now = self.lab.status()
        behind = max(internal, sum(w.role == "internal" for w in now.workers))
        shared = self.shared_daemon if self.shared_daemon is not None else (now.shared_daemon if now.workers else True)
        self.lab.up(at_least=workers, internal=behind, shared_daemon=shared, progress=lambda msg: self.log(f"  lab: {msg}"))
        data = yaml.safe_load(self.lab.inventory_path.read_text())
        base = self.lab.inventory_path.parent
        d = data["defaults"]
        d["identity_file"] = str((base / d["identity_file"]).resolve())
        d["known_hosts"] = str((base / d["known_hosts"]).resolve())
        self._inventory = data
        self.workers = [LabWorker(w["name"], int(w["port"]), w["work_root"], f"{self.lab.name}-{w['name']}") for w in data["workers"] if "linux" in w.get("pools", [])]
        self.internal = [w["name"] for w in data["workers"] if "internal" in w.get("pools", [])]
        # In-process sshexec (the library cases) reads these at call time.
        os.environ.update(self.env())

    def env(self) -> dict[str, str]:
        """The environment of every sshexec process (and of the suite itself)."""
        env = dict(os.environ)
        env.update(self.lab.env())
        env.update(
            SSHEXEC_HOME=str(self.state),
            SSHEXEC_SSH_CONFIG=os.devnull,  # no ~/.ssh/config: the OpenSSH baselines use -F /dev/null too
            SSHEXEC_CONNECT_RETRIES="1",
            # The cases of before the agent measure the command in its own process, as they did; the
            # agent case (benchmarks/agent.py) turns it on for its own rows.
            SSHEXEC_AGENT="0",
        )
        return env

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    # -- files the cases use -----------------------------------------------------

    @property
    def key(self) -> str:
        return self._inventory["defaults"]["identity_file"]

    @property
    def known_hosts(self) -> str:
        return self._inventory["defaults"]["known_hosts"]

    def image(self, name: str = "busybox") -> str:
        return self.lab.image_ref(name)

    def inventory(self, count: int, **defaults) -> Path:
        """An inventory of the first `count` lab workers (absolute paths to key and known_hosts), `defaults` added."""
        if count > len(self.workers):
            raise ValueError(f"the lab has {len(self.workers)} workers, {count} wanted")
        path = self.scratch / ("-".join([f"inventory-{count}", *(f"{k}{v}" for k, v in sorted(defaults.items()))]) + ".yaml")
        if not path.exists():
            data = dict(self._inventory, workers=self._inventory["workers"][:count], defaults={**self._inventory["defaults"], **defaults})
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def inventory_behind(self, count: int) -> Path:
        """An inventory of the bastion and the first `count` workers behind it (jump: bastion)."""
        if count > len(self.internal):
            raise ValueError(f"the lab has {len(self.internal)} workers behind its bastion, {count} wanted")
        path = self.scratch / f"inventory-behind-{count}.yaml"
        if not path.exists():
            wanted = {"bastion", *self.internal[:count]}
            data = dict(self._inventory, workers=[w for w in self._inventory["workers"] if w["name"] in wanted])
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def proxyjump_config(self) -> Path:
        """An OpenSSH client config reaching the workers behind the bastion with ProxyJump.

        Everything is in the file: the jump's own ssh process reads it, and does not
        inherit -o options from the command line (shared/LAB.md).
        """
        path = self.scratch / "ssh_config"
        if not path.exists():
            bastion = next(w for w in self._inventory["workers"] if w["name"] == "bastion")
            common = (f"  User deploy\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
                      f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n")  # fmt: skip
            text = f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion['port']}\n{common}"
            text += "".join(f"Host {name}\n  ProxyJump bastion\n{common}" for name in self.internal)
            path.write_text(text)
        return path

    def parallel_ssh_behind(self, names: list[str], remote: str, parallel: int) -> list[str]:
        """argv that runs `remote` on each worker behind the bastion with OpenSSH (ProxyJump), `parallel` at a time."""
        todo = self.scratch / f"jobs-behind-{len(names)}.txt"
        todo.write_bytes(b"".join(f"{name}\0".encode() for name in names))
        return ["xargs", "-0", "-P", str(parallel), "-I", "{}", "-a", str(todo), "ssh", "-F", str(self.proxyjump_config()), "{}", remote]

    def bastion_logins(self) -> int:
        """How many SSH logins the lab's bastion accepted so far (its sshd logs each, -e)."""
        logs = subprocess.run(["docker", "logs", f"{self.lab.name}-bastion"], capture_output=True, text=True, check=True)
        return (logs.stdout + logs.stderr).count("Accepted publickey")

    def runbook(self, name: str, step: dict, *, sensitive: dict | None = None, lock: str | None = None) -> Path:
        doc = {"name": name, **({"lock": lock} if lock else {})}
        if sensitive:
            doc["sensitive_variables"] = {k: {"env": k} for k in sensitive}
        doc["steps"] = [{"pool": "linux", "container": {"image": self.image()}, **step}]
        path = self.scratch / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def runbook_steps(self, name: str, steps: list[dict]) -> Path:
        """A runbook of several steps on the busybox image, in order."""
        doc = {"name": name, "steps": [{"pool": "linux", "container": {"image": self.image()}, **s} for s in steps]}
        path = self.scratch / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def sshexec(self, *args: str) -> list[str]:
        """argv of the real `sshexec` program, as a user runs it from the shell: installed (installed_sshexec)."""
        if not hasattr(self, "_program"):
            self._program = installed_sshexec(self.scratch / "installed")
        return [str(self._program), *args]

    # -- OpenSSH -------------------------------------------------------------------

    def ssh_options(self) -> list[str]:
        """OpenSSH options shared by every baseline: no user config, the lab key, host keys checked."""
        return [
            "-F", os.devnull, "-i", self.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        ]  # fmt: skip

    def ssh(self, worker: LabWorker, *remote: str) -> list[str]:
        """The OpenSSH client to a worker, host key checked against the lab's known_hosts."""
        return ["ssh", *self.ssh_options(), "-p", str(worker.port), "deploy@127.0.0.1", *remote]

    def parallel_ssh(self, jobs: list[tuple[LabWorker, str]], parallel: int) -> list[str]:
        """argv that runs each (worker, remote command) with OpenSSH, `parallel` at a time (xargs -P)."""
        wrapper = self.scratch / "ssh-worker.sh"
        if not wrapper.exists():
            opts = " ".join(shlex.quote(o) for o in self.ssh_options())
            wrapper.write_text(f'#!/bin/sh\nexec ssh {opts} -p "$1" deploy@127.0.0.1 "$2"\n')
            wrapper.chmod(0o755)
        todo = self.scratch / f"jobs-{len(jobs)}-{abs(hash(tuple(r for _, r in jobs)))}.txt"
        todo.write_bytes(b"".join(f"{w.port}\0{remote}\0".encode() for w, remote in jobs))
        return ["xargs", "-0", "-n", "2", "-P", str(parallel), "-a", str(todo), str(wrapper)]

    def parallel_local(self, argv: list[str], count: int) -> list[str]:
        """argv that runs `argv` `count` times at once on this machine, no SSH at all (xargs -P): the floor of a fan-out."""
        todo = self.scratch / f"local-{count}.txt"
        todo.write_bytes(b"x\0" * count)
        return ["xargs", "-0", "-n", "1", "-P", str(count), "-a", str(todo), "sh", "-c", shlex.join(argv) + " >/dev/null", "floor"]

    # -- looking at a worker from the host ----------------------------------------

    def rx_bytes(self, worker: LabWorker) -> int:
        """Bytes the worker container has received on its network interface (all SSH traffic to it).

        Read from the host in the container's network namespace (/proc/PID/net/dev):
        no command runs in the worker, so the figure is not disturbed.
        """
        pid = self._pids.get(worker.container)
        if pid is None or not Path(f"/proc/{pid}").exists():
            out = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", worker.container], capture_output=True, text=True, check=True)
            pid = self._pids[worker.container] = out.stdout.strip()
        for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "eth0":
                return int(rest.split()[0])
        raise RuntimeError(f"{worker.container} has no eth0")

    def executor_dir(self, worker: LabWorker) -> Path:
        """Where sshexec keeps its executor on the worker; bind-mounted at the same path on this host."""
        from sshexec.executor import executor_hash

        return Path(worker.work_root) / "executor" / executor_hash()

    def clear_history(self) -> None:
        """Drop the finished runs with their logs (a million-line log per run adds up)."""
        from sshexec.store.history import History
        from sshexec.store.prune import prune

        if (self.state / "history.db").exists():
            h = History(self.state)
            prune(h, older_than=0)
            h.close()

