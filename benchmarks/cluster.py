"""`python -m benchmarks.cluster`: issue 20's cluster, measured. Figures to read, never asserted by a test.

Real `sshexec serve` nodes on a PostgreSQL of the benchmark's own (sshexec/lab/postgres.py, stopped by
its PID at the end), running on the lab's workers:

- throughput: --runs runs of a one-line busybox step, queued at once, with 1, 2 and 3 nodes (task cap
  --cap each): runs per minute from the first submit to the last end. It must grow with nodes.
- submit -> first line: one node, idle; POST /api/runs, then the run's log as server-sent events: the
  time until its first line arrives. Median of --repeat x 3.
- cross-node live log: a python step prints its clock (time.time()) every 0.2 s on node n1 (n2 drains, so
  n1 runs it); the log is followed through n2's API; each line's age when it arrives. Median: target 300 ms.
- a million lines through a node: a step printing --lines lines, submitted to one node on PostgreSQL (A)
  and on SQLite (B), interleaved after an untimed run of each, submit to end: target A/B at most 1.2.
- RSS per node: VmRSS and VmHWM (peak) of each of the 3 nodes after the throughput run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from .env import BenchEnv, REPO

READY = re.compile(r"sshexec serve: (https?://[^/ ]+)/")
ENDED = ("succeeded", "failed", "error", "cancelled", "interrupted", "timed-out")


class Nodes:
    """n `sshexec serve` nodes on one database, started as processes and stopped (SIGINT, then SIGKILL) by their PIDs."""

    def __init__(self, env: dict, db: str, runbooks: Path, inventory: Path, n: int, cap: int):
        self.env = {**env, "SSHEXEC_DB": db}
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        from sshexec.store.tokens import TokenStore

        store = TokenStore(db)  # in this process: a `sshexec token create` process is a second or two of set-up, not measured
        self.token = store.create(f"bench{time.monotonic_ns()}", "admin")
        store.db.close()
        # The nodes start side by side, then each is waited for (in the order of their names: urls[i] is n{i+1}).
        for proc in [self._spawn(f"n{i}", runbooks, inventory, cap) for i in range(1, n + 1)]:
            self._wait_ready(proc)

    def sx(self, *args) -> str:
        res = subprocess.run([sys.executable, "-m", "sshexec", *args], capture_output=True, text=True, env=self.env, cwd=REPO, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"sshexec {' '.join(args)}: {res.stderr}")
        return res.stdout

    def _spawn(self, name: str, runbooks: Path, inventory: Path, cap: int) -> subprocess.Popen:
        argv = [sys.executable, "-m", "sshexec", "serve", "--bind", "127.0.0.1:0", "--runbooks", str(runbooks), "--inventory", str(inventory),
                "--node", name, "--task-cap", str(cap), "--node-stale", "10s"]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env, cwd=REPO)
        self.procs.append(proc)
        return proc

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            m = READY.search(line)
            if m:
                self.urls.append(m[1])
                threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep the pipe drained
                return
        raise RuntimeError(f"node {proc.args[proc.args.index('--node') + 1]} exited {proc.wait()}")

    def client(self, i: int = 0) -> httpx.Client:
        return httpx.Client(base_url=self.urls[i], headers={"Authorization": f"Bearer {self.token}"}, timeout=60)

    def submit(self, runbook: str, i: int = 0) -> str:
        with self.client(i) as c:
            r = c.post("/api/runs", json={"runbook": runbook})
        r.raise_for_status()
        return r.json()["run_id"]

    def rss(self) -> list[tuple[int, int]]:
        out = []
        for p in self.procs:
            status = Path(f"/proc/{p.pid}/status").read_text()
            kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM")))}
            out.append((kb["VmRSS"], kb["VmHWM"]))
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_ended(history, ids, limit: float = 3600) -> float:
    """Poll the database until every run ended; the time it happened (monotonic)."""
    from sqlalchemy import text

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with history.db.read() as c:
            left = c.execute(text("SELECT count(*) FROM runs WHERE id IN :ids AND status IN ('queued', 'running')").bindparams(_ids()), {"ids": list(ids)}).scalar()
        if not left:
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"runs not ended after {limit} s")


def _ids():
    from sqlalchemy import bindparam

    return bindparam("ids", expanding=True)


def first_line(nodes: Nodes, runbook: str, i: int = 0) -> float:
    t0 = time.monotonic()
    rid = nodes.submit(runbook, i)
    with nodes.client(i) as c, c.stream("GET", f"/api/runs/{rid}/log", timeout=httpx.Timeout(60, read=600)) as r:
        for line in r.iter_lines():
            if line.startswith("event: log"):
                return time.monotonic() - t0
    raise RuntimeError("no log line")


def ages(nodes: Nodes, runbook: str, run_on: int, follow_on: int) -> list[float]:
    rid = nodes.submit(runbook, run_on)
    out = []
    with nodes.client(follow_on) as c, c.stream("GET", f"/api/runs/{rid}/log", timeout=httpx.Timeout(60, read=600)) as r:
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "log":
                now = time.time()
                for text_line in json.loads(line[5:].strip()).splitlines():
                    if "| tick " in text_line:
                        out.append(now - float(text_line.split("| tick ")[1]))
            elif event == "end":
                break
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", default=None, help="the lab's name (default: the benchmarks' own)")
    ap.add_argument("--lab-home", type=Path, default=None)
    ap.add_argument("--registry-port", type=int, default=None)
    ap.add_argument("--workers", type=int, default=1, help="bring the lab up to at least this many workers (a new lab shares the host's dockerd)")
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--cap", type=int, default=4)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated: throughput,first,cross,million")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    kw = {k: v for k, v in (("name", args.lab), ("home", args.lab_home), ("registry_port", args.registry_port)) if v is not None}
    env = BenchEnv(**kw)
    env.up(workers=args.workers, internal=1)  # a new lab needs one (and its bastion)
    from sshexec.lab.postgres import LocalPostgres
    from sshexec.store.history import History

    bb, tools = env.image("busybox"), env.image("tools")
    feed = "lab" if "feeds" in yaml.safe_load(env.lab.inventory_path.read_text()) else None

    def step(name, image, script, syntax="sh"):
        s = {"name": name, "pool": "linux", "container": {"image": image, **({"feed": feed} if feed else {})}, "script": {"syntax": syntax, "inline": script}}
        return {"name": name, "steps": [s]}

    books = env.scratch / "runbooks"
    books.mkdir()
    for name, data in {
        "mark": step("mark", bb, "echo marker"),
        "ticks": step("ticks", tools, "import time, sys\nfor i in range(25):\n    print('tick %.6f' % time.time(), flush=True)\n    time.sleep(0.2)\n", "python"),
        "million": step("million", bb, f"awk 'BEGIN {{ for (i = 0; i < {args.lines}; i++) printf \"line %07d of the step output\\n\", i }}'"),
    }.items():
        (books / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    inventory = env.inventory(len(env.workers))
    pg = LocalPostgres().start()
    base = {**env.env(), "PGPASSWORD": pg.password}
    results: dict = {"workers": len(env.workers), "cap": args.cap}

    def cluster(n: int, tag: str) -> tuple[Nodes, History]:
        from sshexec.store.db import Database

        url = pg.create_database(f"b_{tag}_{os.getpid()}")
        os.environ["PGPASSWORD"] = pg.password
        db = Database(url)  # `sshexec db upgrade`, in this process (set-up, not measured)
        db.upgrade()
        db.close()
        return Nodes(base, url, books, inventory, n, args.cap), History(url)

    try:
        if "throughput" not in skip:
            for n in (1, 2, 3):
                nodes, h = cluster(n, f"t{n}")
                try:
                    first_line(nodes, "mark")  # warm: images on the workers, connections
                    t0 = time.monotonic()
                    ids = [nodes.submit("mark", i % n) for i in range(args.runs)]
                    took = wait_ended(h, ids) - t0
                    results[f"throughput_{n}"] = args.runs / took * 60
                    print(f"{n} node(s): {args.runs} runs in {took:.1f} s = {results[f'throughput_{n}']:.0f} runs/min", flush=True)
                    if n == 3:
                        results["rss_kb"] = nodes.rss()
                        print(f"RSS per node (VmRSS, VmHWM kB): {results['rss_kb']}", flush=True)
                finally:
                    nodes.close()
        if "first" not in skip or "cross" not in skip:
            nodes, h = cluster(2, "lat")
            try:
                if "first" not in skip:
                    first_line(nodes, "mark")
                    lat = [first_line(nodes, "mark") for _ in range(3 * args.repeat)]
                    results["submit_to_first_line_s"] = statistics.median(lat)
                    print(f"submit -> first line: median {statistics.median(lat):.3f} s of {len(lat)}: {[round(x, 3) for x in lat]}", flush=True)
                if "cross" not in skip:
                    nodes.sx("nodes", "drain", "n2")
                    time.sleep(1.5)
                    got = []
                    for _ in range(args.repeat):
                        got += ages(nodes, "ticks", 0, 1)
                    results["cross_node_latency_s"] = statistics.median(got)
                    print(f"cross-node live log: median {statistics.median(got) * 1000:.0f} ms of {len(got)} lines (p90 {sorted(got)[int(len(got) * 0.9)] * 1000:.0f} ms)", flush=True)
            finally:
                nodes.close()
        if "million" not in skip:
            pgn, pgh = cluster(1, "m")
            sqlite_home = env.scratch / "sqlite-node"
            sqlite_url = f"sqlite:///{sqlite_home / 'history.db'}"
            sq = Nodes({**base, "SSHEXEC_HOME": str(sqlite_home)}, sqlite_url, books, inventory, 1, 1)
            sqh = History(sqlite_url)
            times = {"postgresql": [], "sqlite": []}
            try:
                for nodes, h in ((pgn, pgh), (sq, sqh)):  # untimed warm-up of the very case: caches, the database's files
                    wait_ended(h, [nodes.submit("million")])
                for _ in range(args.repeat):
                    for name, nodes, h in (("postgresql", pgn, pgh), ("sqlite", sq, sqh)):
                        t0 = time.monotonic()
                        rid = nodes.submit("million")
                        times[name].append(wait_ended(h, [rid]) - t0)
                        assert h.run(rid).status == "succeeded", h.run(rid)
                        print(f"  {args.lines} lines, {name}: {times[name][-1]:.1f} s", flush=True)
                ratio = statistics.median(times["postgresql"]) / statistics.median(times["sqlite"])
                results["million"] = {k: statistics.median(v) for k, v in times.items()} | {"ratio": ratio}
                print(f"{args.lines} lines through a node: PostgreSQL {statistics.median(times['postgresql']):.1f} s, SQLite {statistics.median(times['sqlite']):.1f} s: {ratio:.2f}x", flush=True)
            finally:
                pgn.close()
                sq.close()
    finally:
        pg.stop()
        env.close()
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
