"""Helpers for the server's tests: a real `sshexec serve` process on 127.0.0.1, runbooks for it, SSE reading."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from labkit import REPO, step, write_runbook

READY = re.compile(r"sshexec serve: (https?://[^/ ]+)/")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    home: Path
    stderr: list[str] = field(default_factory=list)

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def token(self, name: str, role: str) -> str:
        """A token made by the real `sshexec token create` (same $SSHEXEC_HOME as the server)."""
        res = subprocess.run([sys.executable, "-m", "sshexec", "token", "create", name, "--role", role],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "SSHEXEC_HOME": str(self.home)}, check=True)  # fmt: skip
        return res.stdout.strip()


@contextlib.contextmanager
def running_server(*, runbooks: Path, inventory: str | Path, home: Path, extra_args=(), env=None):
    """`sshexec serve --bind 127.0.0.1:0` as a real process; stopped after (SIGINT: its runs cancelled at once, as Ctrl-C
    does; SIGTERM would drain them first; then SIGKILL)."""
    env = {**os.environ, "SSHEXEC_HOME": str(home), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sshexec", "serve", "--bind", "127.0.0.1:0", "--runbooks", str(runbooks), "--inventory", str(inventory), *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = READY.search(line)
            if m and not url:
                url.append(m[1])
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        while not found.wait(0.1):
            if proc.poll() is not None:
                raise AssertionError(f"sshexec serve exited {proc.returncode}: {''.join(lines)}")
        yield Server(url[0], proc, home, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_events(response: httpx.Response):
    """Server-sent events of a streaming httpx response, as (event, data, id) tuples."""
    event, data, eid = "message", [], None
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data), eid
            event, data, eid = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                eid = value


def follow_log(server: Server, token: str, run_id: str, on_line=None) -> tuple[str, dict]:
    """The whole log of a run through the SSE endpoint, and its end event."""
    text = []
    with server.client(token) as c, c.stream("GET", f"/api/runs/{run_id}/log", timeout=httpx.Timeout(60, read=600)) as r:
        assert r.status_code == 200, r.read()
        for event, data, _ in read_events(r):
            if event == "log":
                chunk = json.loads(data)
                text.append(chunk)
                if on_line is not None:
                    on_line(chunk)
            elif event == "end":
                return "".join(text), json.loads(data)
    raise AssertionError("the event stream ended without an end event")


def demo_runbooks(dest: Path, lab, *, extra: dict[str, dict] | None = None) -> Path:
    """runbooks/ copied, pointed at the lab's registry; `extra` adds runbooks (name -> data)."""
    shutil.copytree(REPO / "runbooks", dest)
    demo = dest / "demo.yaml"
    demo.write_text(demo.read_text().replace("127.0.0.1:5000/", lab.registry_address + "/"))
    for name, data in (extra or {}).items():
        write_runbook(dest / f"{name}.yaml", data)
    return dest


def busybox(lab) -> str:
    return f"{lab.registry_address}/sshexec/busybox:1"


def long_runbook(lab, *, seconds: int = 300) -> dict:
    """Prints a line, then sleeps: cancelled by the tests."""
    return {"name": "long", "steps": [step("wait", busybox(lab), f"echo started sleeping; sleep {seconds}; echo woke up", syntax="sh", feed="lab")]}


def echo_runbook(lab) -> dict:
    return {"name": "echo", "variables": {"GREETING": "hello"},
            "steps": [step("say", busybox(lab), 'echo "greeting: $GREETING"', syntax="sh", feed="lab")]}  # fmt: skip


def lines_runbook(lab, *, lines: int = 5, pause: float = 1.0) -> dict:
    """A line in ANSI colours (and a title escape), then numbered lines `pause` s apart on stdout and stderr."""
    colours = r"printf '\033[1;31mred alert\033[0m then \033]0;a title\007plain\n'; "
    script = colours + f'i=1; while [ $i -le {lines} ]; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); sleep {pause}; done'
    return {"name": "lines", "steps": [step("count", busybox(lab), script, syntax="sh", feed="lab")]}


def wait_for(predicate, what: str, *, tries: int = 600, pause: float = 0.1):
    """Poll until `predicate()` is truthy (bounded in count); returns its value."""
    for _ in range(tries):
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError(f"gave up waiting for {what}")
