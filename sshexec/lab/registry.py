"""The lab's registry: the distribution registry (docker-registry) on 127.0.0.1 with htpasswd auth."""

from __future__ import annotations

import base64
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import yaml

from ..core.local import pid_alive
from .errors import LabError
from .proc import proc_cmdline, start_background, stop_pid

BINARY = "docker-registry"
# The registry checks the password at every request of a pull (bcrypt): 5 is what
# `htpasswd -B` uses, about 2 ms a check; 10 cost 60 ms, half a second per pull.
BCRYPT_ROUNDS = 5


def write_config(home: Path, port: int, user: str, password: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "storage").mkdir(exist_ok=True)
    htpasswd = home / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    htpasswd.write_text(f"{user}:{hashed}\n")
    htpasswd.chmod(0o600)
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(home / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": {"htpasswd": {"realm": "sshexec-lab", "path": str(htpasswd)}},
    }
    path = home / "config.yml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def config_current(home: Path) -> bool:
    """The running registry's password file is of the cost this version writes."""
    try:
        return (home / "htpasswd").read_text().split(":", 1)[1].startswith(f"$2b${BCRYPT_ROUNDS:02d}$")
    except (OSError, IndexError):
        return False


def status(port: int, user: str | None = None, password: str | None = None) -> int | None:
    """HTTP status of GET /v2/ (401 without credentials, 200 with), None if nothing answers."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with _opener().open(req, timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def has_manifest(port: int, repo: str, tag: str, user: str, password: str) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/{repo}/manifests/{tag}", method="HEAD")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    req.add_header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
    try:
        with _opener().open(req, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _opener():
    # Never use a proxy from the environment for 127.0.0.1.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(home: Path, port: int, user: str, password: str, *, wait: float = 30.0) -> int:
    if shutil.which(BINARY) is None:
        raise LabError("the registry is not installed: apt-get install -y docker-registry (the README's commands do this)")
    if not port_free(port):
        raise LabError(f"port {port} on 127.0.0.1 is taken by something else: set SSHEXEC_LAB_REGISTRY_PORT to a free port")
    config = write_config(home, port, user, password)
    pid = start_background([BINARY, "serve", str(config)], home / "registry.log")
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if status(port) == 401:
            return pid
        if not pid_alive(pid):
            tail = (home / "registry.log").read_text(errors="replace").splitlines()[-15:]
            raise LabError("the registry exited at start:\n" + "\n".join(tail))
        time.sleep(0.2)
    stop_pid(pid, BINARY)
    raise LabError(f"the registry did not answer on 127.0.0.1:{port} within {wait:g}s")


def is_ours(pid: int | None) -> bool:
    if not pid_alive(pid):
        return False
    cmd = proc_cmdline(pid)
    return bool(cmd) and cmd[0].endswith(BINARY)


def stop(pid: int | None) -> bool:
    return bool(pid) and stop_pid(pid, BINARY)
