"""`python -m benchmarks.serve`: the live log of `sshexec serve`, measured on a lab of its own.

Two figures (issue 14), printed with their targets, never asserted by a test:

- latency: a step prints a line holding the time it was printed (`date +%s.%N`
  in the container: the same kernel clock as here) every `--interval` s; a
  client following GET /api/runs/{id}/log notes when each line arrives.
  Median (target: at most 200 ms), 95th percentile and worst.
- followers: `--clients` clients follow one run printing `--lines` lines; each
  must get every line, in order; the server's peak RSS (VmHWM, sampled from
  /proc while they follow) is compared with 150 MiB.

The server is the real `sshexec serve` process on 127.0.0.1 with a token of
its own and a scratch $SSHEXEC_HOME, removed at the end.
"""

from __future__ import annotations

import argparse
import json
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

from .env import DEFAULT_LAB, DEFAULT_REGISTRY_PORT, BenchEnv, default_home
from .measure import BenchError

READY = re.compile(r"sshexec serve: (http://[^/ ]+)/")
LATENCY_TARGET_MS, RSS_LIMIT_MIB = 200, 150


class Served:
    """`sshexec serve` on 127.0.0.1:0 with its runbooks, a token, and its peak RSS."""

    def __init__(self, env: BenchEnv, runbooks: dict[str, dict]):
        self.dir = env.scratch / "serve"
        (self.dir / "runbooks").mkdir(parents=True)
        for name, doc in runbooks.items():
            (self.dir / "runbooks" / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        self.env = env.env()
        self.token = subprocess.run(env.sshexec("token", "create", "bench", "--role", "operator"), env=self.env, capture_output=True, text=True, check=True).stdout.strip()
        argv = env.sshexec("serve", "--bind", "127.0.0.1:0", "--runbooks", str(self.dir / "runbooks"), "--inventory", str(env.inventory(1)))
        self.proc = subprocess.Popen(argv, env=self.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for line in self.proc.stderr:
            m = READY.search(line)
            if m:
                self.url = m[1]
                break
        else:
            raise BenchError(f"sshexec serve exited {self.proc.wait()} before it listened")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=httpx.Timeout(60, read=900))

    def start(self, runbook: str) -> str:
        with self.client() as c:
            r = c.post("/api/runs", json={"runbook": runbook})
        if r.status_code != 202:
            raise BenchError(f"POST /api/runs {runbook}: {r.status_code} {r.text}")
        return r.json()["run_id"]

    def status(self, field: str) -> int:
        """A kB figure of /proc/PID/status (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # its runs cancelled at once (SIGTERM would drain them first)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def follow(served: Served, run_id: str, on_text) -> dict:
    """Follow the run's SSE log to its end; `on_text(text, received_at)` for every log event."""
    with served.client() as c, c.stream("GET", f"/api/runs/{run_id}/log") as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
                if event == "log":
                    on_text(data, time.time())
                elif event == "end":
                    return data
    raise BenchError(f"the log of {run_id} ended without an end event")


def latency(served: Served, lines: int) -> dict:
    run_id = served.start("ticks")
    delays: list[float] = []
    pattern = re.compile(r"\| tick (\d+\.\d+)$")

    def on_text(text: str, at: float) -> None:
        for line in text.splitlines():
            m = pattern.search(line)
            if m:
                delays.append((at - float(m[1])) * 1000)

    end = follow(served, run_id, on_text)
    if end["status"] != "succeeded" or len(delays) != lines:
        raise BenchError(f"latency run: {end}, {len(delays)} of {lines} ticks seen")
    delays.sort()
    return {
        "lines": lines, "median_ms": statistics.median(delays), "p95_ms": delays[int(0.95 * (len(delays) - 1))], "max_ms": delays[-1],
        "target_ms": LATENCY_TARGET_MS, "ok": statistics.median(delays) <= LATENCY_TARGET_MS,
    }  # fmt: skip


def followers(served: Served, clients: int, lines: int) -> dict:
    run_id = served.start("flood")
    counts, errors = [0] * clients, []
    expected = [0] * clients
    peak = [served.status("VmRSS")]
    done = threading.Event()

    def one(i: int) -> None:
        carry = ""

        def on_text(text: str, at: float) -> None:
            nonlocal carry
            parts = (carry + text).split("\n")
            carry = parts.pop()
            for line in parts:
                _, sep, value = line.partition(" | line ")
                if sep:
                    expected[i] += 1
                    if value != str(expected[i]):
                        errors.append(f"client {i}: line {value!r} where {expected[i]} was due")
                    counts[i] += 1

        try:
            end = follow(served, run_id, on_text)
            if end["status"] != "succeeded":
                errors.append(f"client {i}: the run ended {end}")
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            errors.append(f"client {i}: {type(exc).__name__}: {exc}")

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(served.status("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    wall = time.monotonic() - t0
    hwm = served.status("VmHWM")
    peak_mib = max(max(peak), hwm) / 1024
    every = all(c == lines for c in counts) and not errors
    return {
        "clients": clients, "lines": lines, "lines_per_client": counts, "every_line": every, "errors": errors[:5],
        "server_peak_rss_mib": round(peak_mib, 1), "limit_mib": RSS_LIMIT_MIB, "ok": every and peak_mib <= RSS_LIMIT_MIB, "wall_s": round(wall, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=50, help="latency: lines printed (default 50)")
    p.add_argument("--interval", type=float, default=0.1, help="latency: seconds between them (default 0.1)")
    p.add_argument("--clients", type=int, default=10, help="followers: clients (default 10)")
    p.add_argument("--lines", type=int, default=100_000, help="followers: lines of the run (default 100000)")
    p.add_argument("--lab-name", default=DEFAULT_LAB)
    p.add_argument("--lab-home", type=Path)
    p.add_argument("--registry-port", type=int, default=DEFAULT_REGISTRY_PORT)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    log = lambda msg: print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr)  # noqa: E731
    env = BenchEnv(name=args.lab_name, home=args.lab_home or default_home(args.lab_name), registry_port=args.registry_port, log=log)
    served = None
    try:
        env.up(1)
        # bash's $EPOCHREALTIME: the time the line is printed, to the microsecond (busybox date has no %N).
        tick = f'for ((i = 0; i < {args.ticks}; i++)); do echo "tick $EPOCHREALTIME"; sleep {args.interval}; done'
        flood = f'seq {args.lines} | sed "s/^/line /"'

        def runbook(name: str, image: str, syntax: str, script: str) -> dict:
            return {"name": name, "steps": [{"name": "s", "pool": "linux", "container": {"image": image}, "script": {"syntax": syntax, "inline": script}}]}

        served = Served(env, {"ticks": runbook("ticks", env.image("tools"), "bash", tick), "flood": runbook("flood", env.image(), "sh", flood)})
        log(f"server at {served.url} (pid {served.proc.pid})")
        lat = latency(served, args.ticks)
        log("latency done")
        fol = followers(served, args.clients, args.lines)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if served is not None:
            served.close()
        env.close()
    print(f"live-log latency, line printed in the container -> event at a client ({lat['lines']} lines):")
    print(f"  median {lat['median_ms']:.0f} ms (target <= {LATENCY_TARGET_MS} ms: {'ok' if lat['ok'] else 'MISSED'}), p95 {lat['p95_ms']:.0f} ms, worst {lat['max_ms']:.0f} ms")
    print(f"{fol['clients']} clients following a {fol['lines']:,}-line run ({fol['wall_s']} s):")
    print(f"  every client got every line, in order: {'yes' if fol['every_line'] else 'NO: ' + '; '.join(fol['errors'])}")
    print(f"  server peak RSS {fol['server_peak_rss_mib']} MiB (limit {RSS_LIMIT_MIB} MiB: {'ok' if fol['server_peak_rss_mib'] <= RSS_LIMIT_MIB else 'OVER'})")
    if args.json:
        args.json.write_text(json.dumps({"latency": lat, "followers": fol}, indent=2))
    return 0  # a missed target is a figure to read, not a failure: only a broken benchmark exits 1


if __name__ == "__main__":
    sys.exit(main())
