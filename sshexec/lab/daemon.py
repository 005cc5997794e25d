"""Make sure a Docker daemon answers: use a running one, or start dockerd and remember its PID."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ..core.local import pid_alive
from .errors import LabError
from .proc import start_background, stop_pid


def daemon_answers(timeout: float = 5.0) -> bool:
    try:
        return subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=timeout).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def ensure_daemon(log: Path, *, wait: float = 60.0) -> int | None:
    """Return None if a daemon already answers, else the PID of the dockerd started here."""
    if daemon_answers():
        return None
    if shutil.which("dockerd") is None:
        raise LabError("no Docker daemon answers and dockerd is not installed: apt-get install -y docker.io (the README's commands do this)")
    if os.geteuid() != 0:
        raise LabError("no Docker daemon answers, and starting dockerd needs root: run as root or start Docker yourself")
    # --ip 127.0.0.1: published ports bind to loopback only.
    pid = start_background(["dockerd", "--ip", "127.0.0.1"], log)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if daemon_answers():
            return pid
        if not pid_alive(pid):
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise LabError("dockerd exited at start:\n" + "\n".join(tail))
        time.sleep(0.3)
    stop_pid(pid, "dockerd")
    raise LabError(f"dockerd did not answer within {wait:g}s; see {log}")


def stop_daemon(pid: int | None) -> bool:
    return bool(pid) and stop_pid(pid, "dockerd", timeout=30)
