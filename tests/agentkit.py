"""The resident agent in tests: one agent for the test session (its own $XDG_RUNTIME_DIR), started and stopped by PID-checked verbs.

The CLI tests that matter for the agent run in both modes (the `both_modes`
fixture, see tests/conftest.py); SSHEXEC_TEST_AGENT=1 runs every test of a
session with the agent on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from labkit import REPO

MODES = ("in-process", "agent")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, limit: float = 30.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


class RunningAgent:
    """An agent living under `run_dir` (its XDG_RUNTIME_DIR); every `sshexec` of a test in agent mode reaches it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.served_total = 0  # by the agents that ended (a test may replace one), counted at stop
        run_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {"SSHEXEC_AGENT": "auto", "XDG_RUNTIME_DIR": str(self.run_dir)}

    def paths(self):
        from sshexec.agent import wire

        return wire.Paths(str(self.run_dir / "sshexec"))

    def status(self) -> dict | None:
        from sshexec.agent import client

        return client.status(self.paths())

    def ensure_up(self) -> dict:
        """Started (or replaced, when it runs other code than this checkout's) and answering."""
        from sshexec.agent import wire

        now = self.status()
        if now is not None and now["identity"] == wire.identity():
            return now
        res = self.sshexec("agent", "start", "--json")
        assert res.returncode == 0, res.stderr
        now = self.status()
        assert now is not None, "the agent did not come up"
        return now

    def sshexec(self, *args, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        full = {**(env or os.environ), **self.env()}
        return subprocess.run([sys.executable, "-m", "sshexec", *map(str, args)], capture_output=True, text=True, env=full, cwd=REPO, timeout=120, **kw)

    def stop(self) -> list[str]:
        """Stop it; what is left (a process that did not end) as messages, for a loud teardown."""
        from sshexec.agent import client

        now = self.status()
        client.stop(self.paths())
        self.served_total += now["served"] if now else 0
        left = []
        if now is not None:
            if not wait_gone(now["pid"]):
                left.append(f"agent pid {now['pid']} still running after stop")
            for cmd in now["running"]:
                if not wait_gone(cmd["pid"], 60):
                    left.append(f"agent child pid {cmd['pid']} ({cmd['command']}) still running")
        return left


def own_agent(tmp_path_factory, monkeypatch, *, up: bool = True) -> Iterator[RunningAgent]:
    """A test's own agent (not the session's: a test may kill, replace or tune it), every `sshexec` of the
    test pointed at it; stopped after the test, which fails if anything of it is left. For a fixture:
    `yield from own_agent(...)`. `up`: started before the test."""
    a = RunningAgent(tmp_path_factory.mktemp("run"))
    for k, v in a.env().items():
        monkeypatch.setenv(k, v)
    if up:
        a.ensure_up()
    yield a
    left = a.stop()
    assert not left, left


def sx(*args, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`sshexec ARGS` in a process of its own, from the checkout (the agent's thin client when it is on)."""
    return subprocess.run([sys.executable, "-m", "sshexec", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env=env or os.environ.copy())  # fmt: skip


def agent_memory_holds(pid: int, needle: bytes) -> bool:
    """Whether `needle` is anywhere in the process's memory (its environment included), read through /proc (root)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            lo, hi = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(lo)
                if needle in mem.read(hi - lo):
                    return True
            except OSError:
                continue
    return False
