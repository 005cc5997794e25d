"""`python -m benchmarks.store`: the history's database, measured (issue 20). Figures to read, never asserted by a test.

Three comparisons, each A against B in the same run, interleaved (A B A B …
after an untimed warm-up), medians and their ratio:

- write path: what a step's output costs the step itself. A million
  prefixed lines are fed to the run's PrefixWriter in 4 KiB pieces (as SSH
  delivers them), into the LogWriter of SQLite and of PostgreSQL (A), and
  into a file flushed at every write, as sshexec before the database did (B).
  Two figures each: the time the step's thread spent in write() (what a
  step feels; target at most 1×), and the time until every byte is stored.
- warm step: `sshexec run` of a one-step runbook (echo, busybox, already on
  the worker) as a fresh process: this checkout (A) against the lead's main
  before the database (B, `git archive` of LEGACY into a scratch directory,
  run with the same Python): the warm step must not get slower.
- stream: `sshexec run` of a step that prints --lines lines, the history on
  PostgreSQL (A) against SQLite (B), on the lab's worker: target at most 1.2×.

PostgreSQL is a server of the benchmark's own (sshexec/lab/postgres.py),
started for the run and stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .env import DEFAULT_LAB, DEFAULT_REGISTRY_PORT, PYTHON, BenchEnv, default_home
from .measure import BenchError, Sample, Variant, paired, run_timed, timed_call
from .report import CaseResult, Row, print_table, write_json

REPO = Path(__file__).resolve().parents[1]
LEGACY = "4733b72"  # the lead's main before the database: logs in files, flushed at every write
PIECE = 4096


def _lines(n: int) -> list[bytes]:
    """n lines of a step's output, cut in PIECE-byte pieces as they would arrive."""
    data = b"".join(b"line %07d of the step's output\n" % i for i in range(n))
    return [data[i : i + PIECE] for i in range(0, len(data), PIECE)]


def write_path(lines: int, repeat: int, urls: dict[str, str], scratch: Path, log) -> CaseResult:
    from sshexec.step.output import PrefixWriter
    from sshexec.store.history import History

    pieces = _lines(lines)
    histories = {name: History(url) for name, url in urls.items()}
    n = [0]

    def feed(fh) -> float:
        writer = PrefixWriter(fh, terminal=False, flush=True)
        t0 = time.perf_counter()
        for p in pieces:
            writer.write(b"w1/s | ", p)
        return time.perf_counter() - t0

    def to_file() -> Sample:
        n[0] += 1
        path = scratch / f"output-{n[0]}.log"

        def go():
            with open(path, "ab") as fh:
                spent = feed(fh)
            return {"producer": spent}

        s = timed_call(go)
        path.unlink()
        return s

    def to_db(name: str):
        def sample() -> Sample:
            n[0] += 1
            h = histories[name]
            rid = f"bench-{n[0]}"
            h.start_run(rid, "bench", runbook_path="", inventory="", variables={})

            def go():
                w = h.log_writer(rid)
                spent = feed(w)
                w.close()
                return {"producer": spent}

            s = timed_call(go)
            if len(h.log_text(rid)) != sum(map(len, pieces)) + len(b"w1/s | ") * lines:
                raise BenchError(f"write path ({name}): the stored log is not whole")
            h.finish_run(rid, "succeeded", 0, None)
            return s

        return sample

    variants = [Variant("B", "file, flushed each write", to_file)] + [Variant(f"A-{k}", f"LogWriter on {k}", to_db(k)) for k in urls]
    samples = paired(variants, repeat, log=log)
    res = CaseResult("write-path", samples=samples, figures={"lines": lines, "piece": PIECE})
    b_prod = [s.extra["producer"] for s in samples["B"]]
    for k in urls:
        a = samples[f"A-{k}"]
        res.rows.append(Row("write-path", f"{k}: step's time in write(), {lines:,} lines", "LogWriter", [s.extra["producer"] for s in a], "file + flush", b_prod, target=1.0))
        res.rows.append(Row("write-path", f"{k}: until every byte is stored", "LogWriter + close", [s.wall for s in a], "file + flush", [s.wall for s in samples["B"]]))
    return res


def legacy_tree(scratch: Path) -> Path:
    """The lead's main before the database, as a directory to put on PYTHONPATH (its .pyc compiled, as pip would)."""
    tree = scratch / "legacy"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", LEGACY, "sshexec"], capture_output=True, check=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tree)
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(tree / "sshexec")], check=True)
    return tree


def warm(env: BenchEnv, repeat: int, log) -> CaseResult:
    rb = env.runbook("warm-store", {"name": "hi", "script": {"syntax": "sh", "inline": "echo hi"}})
    inv = env.inventory(1)
    old = legacy_tree(env.scratch)
    argv = [PYTHON, "-m", "sshexec", "run", str(rb), "--inventory", str(inv)]
    new_env = dict(env.env(), PYTHONPATH=str(REPO))
    old_env = dict(env.env(), PYTHONPATH=str(old), SSHEXEC_HOME=str(env.scratch / "legacy-home"))
    samples = paired(
        [
            Variant("A", "this checkout (history in SQLite via SQLAlchemy)", lambda: run_timed(argv, env=new_env, cwd=str(REPO))),
            Variant("B", f"{LEGACY} (sqlite3, log file)", lambda: run_timed(argv, env=old_env, cwd=str(env.scratch))),
        ],
        repeat,
        log=log,
    )
    res = CaseResult("warm", samples=samples)
    res.rows.append(Row("warm", "warm step, a fresh sshexec run", "this checkout", [s.wall for s in samples["A"]], LEGACY, [s.wall for s in samples["B"]], target=1.0))
    res.rows.append(Row("warm", "peak RSS of that process", "this checkout", [s.maxrss_kb / 1024 for s in samples["A"]], LEGACY, [s.maxrss_kb / 1024 for s in samples["B"]], unit="MiB"))
    return res


def stream(env: BenchEnv, lines: int, repeat: int, pg_url: str, log) -> CaseResult:
    rb = env.runbook("stream-store", {"name": "seq", "script": {"syntax": "sh", "inline": f"seq {lines}"}})
    inv = env.inventory(1)
    sqlite_url = f"sqlite:///{env.scratch / 'stream-sqlite' / 'history.db'}"

    def one(url: str):
        def sample() -> Sample:
            return run_timed(env.sshexec("run", str(rb), "--inventory", str(inv), "--db", url), env=env.env())

        def after(_: Sample) -> None:
            from sshexec.store.history import History
            from sshexec.store.prune import prune

            h = History(url)
            (last,) = h.runs(1)
            data = h.log_text(last.id)
            stored = data.count(b"\n")
            if last.status != "succeeded" or not data.endswith(b"| %d\n" % lines) or stored != lines:
                raise BenchError(f"stream on {url}: {last.status}, {stored} lines stored of {lines}")
            prune(h, older_than=0)
            h.close()

        return sample, after

    pg_sample, pg_after = one(pg_url)
    lite_sample, lite_after = one(sqlite_url)
    samples = paired([Variant("A", "history on PostgreSQL", pg_sample, after=pg_after), Variant("B", "history on SQLite", lite_sample, after=lite_after)], repeat, log=log)
    res = CaseResult("stream", samples=samples, figures={"lines": lines})
    a, b = [s.wall for s in samples["A"]], [s.wall for s in samples["B"]]
    res.rows.append(Row("stream", f"sshexec run, {lines:,} lines of one step", "--db postgresql", a, "SQLite", b, target=1.2,
                        notes=f"{lines / min(a) / 1000:.0f}k lines/s on PostgreSQL at best"))  # fmt: skip
    res.rows.append(Row("stream", "operator peak RSS", "--db postgresql", [s.maxrss_kb / 1024 for s in samples["A"]], "SQLite", [s.maxrss_kb / 1024 for s in samples["B"]], unit="MiB"))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["write", "warm", "stream"], choices=["write", "warm", "stream"])
    p.add_argument("--lines", type=int, default=1_000_000, help="lines of the write-path and stream cases (default 1000000)")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per case (default 5)")
    p.add_argument("--lab-name", default=DEFAULT_LAB)
    p.add_argument("--lab-home", type=Path)
    p.add_argument("--registry-port", type=int, default=DEFAULT_REGISTRY_PORT)
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    args = p.parse_args(argv)
    log = lambda msg: print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr)  # noqa: E731
    from sshexec.lab.postgres import LocalPostgres
    from sshexec.store.db import Database

    env = BenchEnv(name=args.lab_name, home=args.lab_home or default_home(args.lab_name), registry_port=args.registry_port, log=log)
    pg = LocalPostgres()
    results: list[CaseResult] = []
    try:
        pg.start()
        os.environ["PGPASSWORD"] = pg.password  # for this process and every sshexec it starts; never on a command line
        urls = {}
        for name in ("bench_write", "bench_stream"):
            urls[name] = pg.create_database(name)
            Database(urls[name]).upgrade()
        log(f"PostgreSQL {pg.url()} (pid {pg.pid})")
        if "write" in args.cases:
            lite = f"sqlite:///{env.scratch / 'write-sqlite' / 'history.db'}"
            results.append(write_path(args.lines, args.repeat, {"sqlite": lite, "postgresql": urls["bench_write"]}, env.scratch, log))
        if "warm" in args.cases or "stream" in args.cases:
            env.up(1)
        if "warm" in args.cases:
            results.append(warm(env, args.repeat, log))
        if "stream" in args.cases:
            results.append(stream(env, args.lines, args.repeat, urls["bench_stream"], log))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        pg.stop()
        env.close()
    print_table(results)
    if args.json:
        write_json(args.json, results, {"cases": args.cases, "lines": args.lines, "repeat": args.repeat}, {})
    return 0  # a missed target is a figure to read, not a failure


if __name__ == "__main__":
    sys.exit(main())
