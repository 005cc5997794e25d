"""Local processes and docker CLI calls for the lab (the operator's machine, not a worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from ..core.local import pid_alive
from .errors import LabError


def docker(*args: str, input: bytes | None = None, check: bool = True, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """Run the local docker CLI with an argv; LabError with its output on failure."""
    return run(["docker", *args], input=input, check=check, timeout=timeout, env=env)


def run(argv: Sequence[str], *, input: bytes | None = None, check: bool = True, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv[:3])}` did not finish within {timeout:g}s") from None
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()[-20:]
        raise LabError(f"`{' '.join(argv[:4])}` failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return proc


def proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def start_background(argv: Sequence[str], log: Path) -> int:
    """Start a long-lived process in its own session; return its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def stop_pid(pid: int, expect: str, timeout: float = 20.0) -> bool:
    """Stop one process we started (by PID), if it is still the program we expect.

    SIGTERM, then SIGKILL after `timeout`. Returns True if something was stopped.
    """
    if not pid_alive(pid):
        return False
    cmd = proc_cmdline(pid)
    if not cmd or not os.path.basename(cmd[0]).startswith(expect):
        return False  # the PID was reused by another program: not ours to stop
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_alive(pid):
            _reap(pid)
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
