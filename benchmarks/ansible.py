"""Ansible as a baseline: its own virtualenv (from PyPI), an inventory and ansible.cfg for the lab.

Ansible's `command` module runs Python on the managed host, and the lab's
workers have none (sshexec needs only sshd and Docker there). So, for the
workers the Ansible baseline uses, the suite copies this machine's Debian
python3 (the workers are the same Debian release) into the worker container
once; sshexec never uses it. Settings are Ansible's fast path: pipelining on,
ControlPersist on, fact gathering off, host keys checked against the lab's
known_hosts.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from .env import BenchEnv, LabWorker
from .measure import BenchError

ANSIBLE_SPEC = "ansible-core"
HOST_PYTHON = Path("/usr/bin/python3")
# Parts of the standard library a module run never needs (keeps the copy small).
SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "config-3.11-x86_64-linux-gnu")


class Ansible:
    def __init__(self, env: BenchEnv, log=print):
        self.env = env
        self.log = log
        self.venv = env.home / "ansible-venv"
        self.dir = env.scratch / "ansible"
        # Control sockets need a short path (sun_path is 108 bytes).
        self.cp_dir = Path(f"/tmp/sxb-cp-{os.getpid()}")

    @property
    def binary(self) -> Path:
        return self.venv / "bin" / "ansible"

    def install(self) -> str:
        """Create the virtualenv and install ansible-core into it, once. Returns its version."""
        if not self.binary.exists():
            self.log(f"ansible: creating {self.venv} and installing {ANSIBLE_SPEC} from PyPI")
            for argv in ([sys.executable, "-m", "venv", str(self.venv)], [str(self.venv / "bin/pip"), "install", "-q", ANSIBLE_SPEC]):
                p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
                if p.returncode != 0:
                    raise BenchError(f"installing Ansible failed: {' '.join(argv)}\n{(p.stdout + p.stderr)[-2000:]}")
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[0].strip()

    def configure(self, workers: list[LabWorker], forks: int) -> dict[str, str]:
        """Inventory + ansible.cfg for `workers`; returns the environment to run `ansible` with."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cp_dir.mkdir(mode=0o700, exist_ok=True)
        hosts = self.dir / f"hosts-{len(workers)}.ini"
        hosts.write_text(
            "[lab]\n"
            + "".join(
                f"{w.name} ansible_host=127.0.0.1 ansible_port={w.port} ansible_user=deploy "
                f"ansible_ssh_private_key_file={self.env.key} ansible_python_interpreter=/usr/bin/python3\n"
                for w in workers
            )
        )
        cfg = self.dir / "ansible.cfg"
        ssh_args = (
            f"-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile={self.env.known_hosts} -o StrictHostKeyChecking=yes "
            "-o ControlMaster=auto -o ControlPersist=60s"
        )
        cfg.write_text(
            "[defaults]\n"
            f"inventory = {hosts}\n"
            f"forks = {forks}\n"
            "host_key_checking = True\n"
            "gathering = explicit\n"
            "retry_files_enabled = False\n"
            f"local_tmp = {self.dir}/tmp\n"
            "[ssh_connection]\n"
            "pipelining = True\n"
            f"ssh_args = {ssh_args}\n"
            f"control_path_dir = {self.cp_dir}\n"
            "control_path = %(directory)s/%%C\n"
        )
        env = dict(self.env.env())
        env.update(ANSIBLE_CONFIG=str(cfg), ANSIBLE_HOME=str(self.dir / "home"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        return env

    def argv(self, module_args: str, forks: int) -> list[str]:
        return [str(self.binary), "all", "-f", str(forks), "-m", "command", "-a", module_args]

    # -- Python on the workers ---------------------------------------------------

    def provide_python(self, workers: list[LabWorker]) -> None:
        """Copy this machine's python3 into each worker container that has none (once per container)."""
        missing = [w for w in workers if subprocess.run(["docker", "exec", w.container, "test", "-x", "/usr/bin/python3"]).returncode != 0]
        if not missing:
            return
        if not HOST_PYTHON.exists():
            raise BenchError("the Ansible baseline needs /usr/bin/python3 on this machine to copy into the workers (or use --no-ansible)")
        self.log(f"ansible: copying this machine's python3 into {len(missing)} worker container(s) (Ansible's command module needs it)")
        payload = self._python_tar()
        for w in missing:
            subprocess.run(["docker", "exec", "-i", w.container, "tar", "-x", "-C", "/"], input=payload, check=True, capture_output=True)
            check = subprocess.run(["docker", "exec", w.container, "/usr/bin/python3", "-c", "import json, subprocess, zipfile"], capture_output=True, text=True)
            if check.returncode != 0:
                raise BenchError(f"python3 copied into {w.container} does not run: {check.stderr.strip()[-300:]}")

    def _python_tar(self) -> bytes:
        cache = self.env.home / "ansible-python3.tar"
        if cache.exists():
            return cache.read_bytes()
        real = HOST_PYTHON.resolve()
        version = real.name  # python3.11
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(real), arcname=f"usr/bin/{version}")
            link = tarfile.TarInfo("usr/bin/python3")
            link.type, link.linkname = tarfile.SYMTYPE, version
            tar.addfile(link)
            stdlib = Path("/usr/lib") / version
            tar.add(str(stdlib), arcname=f"usr/lib/{version}", filter=lambda ti: None if _skipped(ti.name, version) else ti)
            # Shared libraries the interpreter links against that a minimal Debian lacks.
            for lib in ("libexpat.so.1", "libffi.so.8"):
                for d in (Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu")):
                    if (d / lib).exists():
                        tar.add(str((d / lib).resolve()), arcname=f"usr/lib/x86_64-linux-gnu/{lib}")
                        break
        cache.write_bytes(buf.getvalue())
        return buf.getvalue()

    # -- cleanup -------------------------------------------------------------------

    def close(self) -> None:
        """End the ControlPersist masters Ansible's ssh left (by their control sockets), then their directory."""
        if not self.cp_dir.exists():
            return
        for sock in self.cp_dir.iterdir():
            subprocess.run(["ssh", "-F", os.devnull, "-o", f"ControlPath={sock}", "-O", "exit", "127.0.0.1"], capture_output=True, timeout=10)
        for sock in self.cp_dir.iterdir():
            sock.unlink(missing_ok=True)
        self.cp_dir.rmdir()


def _skipped(name: str, version: str) -> bool:
    parts = name.split("/")
    return len(parts) > 3 and parts[3] in SKIP or "site-packages" in parts or "dist-packages" in parts
