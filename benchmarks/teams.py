"""`python -m benchmarks.teams`: what a Prometheus scrape of GET /metrics costs on a big history (issue 21).

The collector (server/metrics.py) reads the database at every scrape: runs by runbook and status, a histogram of
every finished step attempt, running runs per node, notification states. On a SQLite history of --runs runs
(--steps steps each), a scrape (A) is measured against what the runs page asks of the same database (B: the 50
newest runs and the count), interleaved, medians and their ratio. Figures to read, never asserted by a test.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


def fill(db, runs: int, steps: int) -> None:
    from sqlalchemy import insert

    from sshexec.store.schema import runs as runs_t
    from sshexec.store.schema import steps as steps_t

    rng = random.Random(21)
    now = time.time() - runs * 60
    statuses = ["succeeded"] * 8 + ["failed", "cancelled"]
    batch_r, batch_s = [], []
    for i in range(runs):
        rid = f"bench-{i:07d}"
        start = now + i * 60
        batch_r.append(dict(id=rid, runbook=f"rb{i % 12}", started=start, finished=start + 30, status=rng.choice(statuses), exit_code=0, host="bench"))
        for j in range(steps):
            d = rng.expovariate(1 / 20)
            batch_s.append(dict(run_id=rid, seq=j, step=f"s{j}", worker=f"w{j % 4}", status="succeeded", started=start, finished=start + d, attempt=1, attempts=1))
        if len(batch_r) >= 2000:
            with db.write() as c:
                c.execute(insert(runs_t), batch_r)
                c.execute(insert(steps_t), batch_s)
            batch_r, batch_s = [], []
    if batch_r:
        with db.write() as c:
            c.execute(insert(runs_t), batch_r)
            c.execute(insert(steps_t), batch_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.teams", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args(argv)
    from sshexec.server.metrics import exposition, registry_for
    from sshexec.store.db import Database
    from sshexec.store.history import History

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'history.db'}").ready()
        t0 = time.monotonic()
        fill(db, args.runs, args.steps)
        print(f"history: {args.runs:,} runs, {args.runs * args.steps:,} step rows in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        registry, history = registry_for(db), History(db)

        def scrape() -> None:
            exposition(registry)

        def page() -> None:
            history.runs(50)
            history.count()

        for f in (scrape, page):
            f()  # warm-up, untimed
        a, b = [], []
        for _ in range(args.repeat):
            for f, out in ((scrape, a), (page, b)):
                t = time.perf_counter()
                f()
                out.append(time.perf_counter() - t)
        ma, mb = statistics.median(a), statistics.median(b)
        size = len(exposition(registry)[0])
        print(f"scrape of /metrics (A): median {ma * 1000:.1f} ms, {size:,} bytes")
        print(f"runs page's queries (B): median {mb * 1000:.1f} ms")
        print(f"A/B: {ma / mb:.1f}x  ({args.repeat} rounds each, interleaved)")
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
