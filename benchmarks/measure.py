"""Timing primitives: one timed process, paired interleaved rounds, and summary statistics.

Every sample is a wall-clock time plus, for a child process, its peak RSS and
CPU time as GNU time reports them (the peak RSS of the process that time
waited for, which for a shell pipeline is the largest of its processes). Variants of a case run interleaved (A B A B ...) so that drift of
the machine (other load, page cache, the daemon's state) touches all of them alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence


class BenchError(RuntimeError):
    """A benchmark could not run as intended (a command failed, a check did not hold)."""


@dataclass
class Sample:
    wall: float  # seconds
    maxrss_kb: int | None = None  # peak RSS of the process tree (kB), when a child process was timed
    user: float | None = None  # CPU seconds
    sys: float | None = None
    extra: dict = field(default_factory=dict)  # case-specific figures (bytes on the wire, phases, ...)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


TIME = "/usr/bin/time"  # GNU time: reports its child's rusage from a process of ~1 MB


def run_timed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: str | None = None,
    stdout_path: str | None = None,
    timeout: float = 900.0,
    ok: Sequence[int] = (0,),
) -> Sample:
    """Run `argv` to completion; its wall time, peak RSS and CPU. BenchError (with stderr) if it fails.

    The peak RSS comes from GNU time wrapped around the command, not from our
    own wait4: a child spawned by this (large) Python process inherits its
    high-water RSS at exec, which would inflate every figure. stdout goes to
    /dev/null unless `stdout_path` is given; stderr to a temp file (never a
    pipe: a chatty child would block on a full pipe). Exit codes in `ok` are
    not failures (`sshexec check` exits 3 when a worker is unhealthy).
    """
    use_time = os.path.exists(TIME)
    with tempfile.TemporaryFile() as err, open(stdout_path or os.devnull, "wb") as out, tempfile.NamedTemporaryFile("r") as usage:
        full = [TIME, "-q", "-o", usage.name, "-f", "%M %U %S", *argv] if use_time else list(argv)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            full, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out, stderr=err, env=dict(env) if env is not None else None, cwd=cwd,
        )  # fmt: skip
        if stdin is not None:
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        timer = threading.Timer(timeout, proc.kill)  # bounded: a hung child is killed
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        if proc.returncode not in ok:
            err.seek(0)
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-15:]
            raise BenchError(f"exit {proc.returncode}: {_show(argv)}\n" + "\n".join("    " + line for line in tail))
        if not use_time:
            return Sample(wall=wall)
        rss, user, sys_ = usage.read().strip().splitlines()[-1].split()
    return Sample(wall=wall, maxrss_kb=int(rss), user=float(user), sys=float(sys_))


def timed_call(fn: Callable[[], dict | None]) -> Sample:
    """Time an in-process call; a dict it returns becomes the sample's extra figures."""
    t0 = time.perf_counter()
    extra = fn()
    return Sample(wall=time.perf_counter() - t0, extra=dict(extra or {}))


def _show(argv: Sequence[str]) -> str:
    text = " ".join(argv)
    return text if len(text) < 300 else text[:300] + "…"


@dataclass
class Variant:
    """One side of a comparison: a name, what it is, and how to take one sample."""

    key: str  # "A" (sshexec), "B" (the baseline), "C", ...
    label: str
    sample: Callable[[], Sample]
    before: Callable[[], None] | None = None  # untimed, before each sample (cleanup, counters)
    after: Callable[[Sample], None] | None = None  # untimed, after each sample


def paired(variants: Sequence[Variant], repeat: int, *, warmup: int = 1, log: Callable[[str], None] = lambda s: None) -> dict[str, list[Sample]]:
    """`warmup` untimed rounds, then `repeat` rounds of every variant in turn (A B C A B C ...)."""
    samples: dict[str, list[Sample]] = {v.key: [] for v in variants}
    for i in range(warmup + repeat):
        for v in variants:
            if v.before:
                v.before()
            s = v.sample()
            if v.after:
                v.after(s)
            if i >= warmup:
                samples[v.key].append(s)
            log(f"  {'warm-up' if i < warmup else f'round {i - warmup + 1}/{repeat}'} {v.key} {v.label}: {s.wall:.3f}s")
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(min, max): with few rounds an IQR means little, so the range is shown."""
    return (min(values), max(values)) if values else (float("nan"), float("nan"))

