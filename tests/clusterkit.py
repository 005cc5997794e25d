"""A cluster for the tests: real `sshexec serve` nodes on one PostgreSQL database, behind a real haproxy.

    with Cluster(postgres, tmp_path, runbooks=..., inventory=..., nodes=3) as cl:
        cl.node("n1").url        a node, directly
        cl.lb                    haproxy's URL: what a user of the cluster talks to
        cl.sx("submit", "demo")  the command line on the cluster's database

Each node and haproxy are processes this starts and stops by their PIDs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from labkit import REPO

READY = re.compile(r"sshexec serve: (https?://[^/ ]+)/")
HAPROXY = "/usr/sbin/haproxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    url: str = ""
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)  # its URL is known

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return "".join(self.lines)


@dataclass(frozen=True)
class Template:
    """A database made once (`sshexec db upgrade`, and an admin token), that each cluster copies: a fresh
    database per test for ~0.1 s of CREATE DATABASE ... TEMPLATE instead of two `sshexec` processes."""

    name: str
    admin: str

    @classmethod
    def make(cls, postgres, home: Path) -> "Template":
        name = "ct_" + uuid.uuid4().hex[:10]
        env = {**os.environ, "SSHEXEC_HOME": str(home), "SSHEXEC_DB": postgres.create_database(name), "PGPASSWORD": postgres.password}

        def sx(*args: str) -> str:
            res = subprocess.run([sys.executable, "-m", "sshexec", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
            if res.returncode != 0:
                raise AssertionError(f"sshexec {' '.join(args)}: exit {res.returncode}\n{res.stderr}")
            return res.stdout

        sx("db", "upgrade")
        return cls(name, sx("token", "create", "root", "--role", "admin").strip())


class Cluster:
    def __init__(self, postgres, tmp: Path, *, runbooks: Path, inventory, nodes: int = 3, task_cap: int = 4, stale: str = "6s", extra=(),
                 template: Template | None = None):  # fmt: skip
        self.pg = postgres
        self.template = template
        self.tmp = tmp
        self.runbooks = runbooks
        self.inventory = str(inventory)
        self.count = nodes
        self.task_cap = task_cap
        self.stale = stale
        self.extra = list(extra)
        self.dbname = "c_" + uuid.uuid4().hex[:10]
        self.db = ""
        self.nodes: dict[str, Node] = {}
        self.lb = ""
        self.haproxy_pid: int | None = None
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)

    # -- the environment of every process ----------------------------------------------------

    def env(self, **extra) -> dict:
        return {**os.environ, "SSHEXEC_HOME": str(self.home), "SSHEXEC_DB": self.db, "PGPASSWORD": self.pg.password, **extra}

    def sx(self, *args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "sshexec", *map(str, args)], capture_output=True, text=True, env=self.env(), cwd=REPO, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"sshexec {' '.join(map(str, args))}: exit {res.returncode}\n{res.stderr}")
        return res

    def history(self):
        from sshexec.store.history import History

        os.environ["PGPASSWORD"] = self.pg.password
        return History(self.db)

    # -- life --------------------------------------------------------------------------------

    def __enter__(self) -> "Cluster":
        self.db = self.pg.create_database(self.dbname, template=self.template and self.template.name)
        try:
            if self.template:
                self.admin = self.template.admin
            else:
                self.sx("db", "upgrade")
                self.admin = self.sx("token", "create", "root", "--role", "admin").stdout.strip()
            # The nodes start side by side (each is a Python process importing sshexec), then each is waited for.
            for node in [self.start_node(f"n{i}", wait=False) for i in range(1, self.count + 1)]:
                self.wait_ready(node)
            self.start_haproxy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_node(self, name: str, *, wait: bool = True) -> Node:
        argv = [sys.executable, "-m", "sshexec", "serve", "--bind", "127.0.0.1:0", "--runbooks", str(self.runbooks), "--inventory", self.inventory,
                "--node", name, "--task-cap", str(self.task_cap), "--node-stale", self.stale, *self.extra]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env(), cwd=REPO)
        node = Node(name, proc)

        def read() -> None:
            for line in proc.stderr:
                node.lines.append(line)
                m = READY.search(line)
                if m and not node.url:
                    node.url = m[1]
                    node.ready.set()

        threading.Thread(target=read, daemon=True).start()
        self.nodes[name] = node
        if wait:
            self.wait_ready(node)
        return node

    @staticmethod
    def wait_ready(node: Node) -> None:
        while not node.ready.wait(0.1):
            if node.proc.poll() is not None:
                raise AssertionError(f"node {node.name} exited {node.proc.returncode}: {node.log()}")

    def start_haproxy(self) -> None:
        port = free_port()
        servers = "\n".join(f"    server {n.name} {n.url.split('//')[1]} check inter 500ms fall 2 rise 2" for n in self.nodes.values())
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 512
defaults
    mode http
    retries 3
    option redispatch
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend sshexec
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /health
{servers}
""")
        pidfile = self.tmp / "haproxy.pid"
        subprocess.run([HAPROXY, "-f", str(cfg), "-D", "-p", str(pidfile)], check=True, capture_output=True, timeout=30)
        self.haproxy_pid = int(pidfile.read_text().split()[0])
        self.lb = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every node up in haproxy's eyes (rise 2 x 500 ms)
            with contextlib.suppress(httpx.HTTPError):
                seen = {httpx.get(f"{self.lb}/health", timeout=5).json().get("node") for _ in range(2 * self.count)}
                if len(seen) == self.count:
                    return
            time.sleep(0.2)
        raise AssertionError("haproxy did not route to every node within 30 s")

    def __exit__(self, *exc) -> None:
        if self.haproxy_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.haproxy_pid, signal.SIGTERM)
            self.haproxy_pid = None
        stop(*(node.proc for node in self.nodes.values()))
        with contextlib.suppress(Exception):
            self.pg.drop_database(self.dbname)

    # -- talking to it -----------------------------------------------------------------------

    def client(self, url: str | None = None, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=url or self.lb, headers={"Authorization": f"Bearer {token or self.admin}"}, timeout=60)

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def submit(self, runbook: str, url: str | None = None, **variables) -> str:
        with self.client(url) as c:
            r = c.post("/api/runs", json={"runbook": runbook, "vars": variables})
        assert r.status_code == 202, r.text
        return r.json()["run_id"]

    def run(self, run_id: str) -> dict:
        """The run through haproxy. A node killed a moment ago may still get a request before the health checks
        take it out (a user retries, and so does this, a bounded number of times)."""
        for attempt in range(20):
            with contextlib.suppress(httpx.HTTPError):
                with self.client() as c:
                    r = c.get(f"/api/runs/{run_id}")
                if r.status_code == 200:
                    return r.json()
            time.sleep(0.25)
        raise AssertionError(f"GET /api/runs/{run_id} through haproxy kept failing")

    def nodes_view(self, url: str | None = None) -> dict[str, dict]:
        for attempt in range(20):
            with contextlib.suppress(httpx.HTTPError):
                with self.client(url) as c:
                    r = c.get("/api/nodes")
                if r.status_code == 200:
                    return {n["name"]: n for n in r.json()}
            time.sleep(0.25)
        raise AssertionError("GET /api/nodes kept failing")

    def wait_status(self, run_ids, statuses=("succeeded", "failed", "error", "cancelled", "interrupted", "timed-out"), *, limit: float = 300) -> dict[str, dict]:
        """Poll until every run has one of `statuses` (bounded); the runs as the API shows them."""
        deadline = time.monotonic() + limit
        left = set(run_ids)
        seen: dict[str, dict] = {}
        while left:
            for rid in list(left):
                rec = self.run(rid)
                if rec.get("status") in statuses:
                    seen[rid] = rec
                    left.discard(rid)
            if left and time.monotonic() > deadline:
                raise AssertionError(f"runs still not {statuses} after {limit} s: {sorted(left)}")
            time.sleep(0.3)
        return seen


def stop(*procs: subprocess.Popen) -> None:
    """Nodes that are still there: SIGCONT (one may be stopped), SIGINT (their runs cancelled), all signalled
    before any is waited for; then SIGKILL for one still there after 60 s."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    for proc in live:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
