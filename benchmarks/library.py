"""sshexec as a library, timed in this process: the per-step cost without the process start-up."""

from __future__ import annotations

import re
import time
from pathlib import Path

from .measure import BenchError, Sample, timed_call


class Library:
    """sshexec as a library: load, Runner(...).run(), with the SSH channels it opens counted by kind."""

    def __init__(self, runbook: Path, inventory: Path):
        self.runbook, self.inventory = runbook, inventory
        self.history = None

    def sample(self) -> Sample:
        import sshexec.ssh.connection as connection
        from sshexec.config.inventory import load_inventory
        from sshexec.config.runbook import load_runbook
        from sshexec.run.runner import Runner
        from sshexec.store.history import History

        if self.history is None:
            self.history = History()
        channels: dict[str, int] = {}
        executor_bytes = [0]
        original = connection.Connection.stream

        def counting(conn, command, **kw):
            # The scriptlet's name ($0) ends the line (command.through_sh); "sshexec-" may also
            # appear earlier, in an argument (a work_root under /var/lib/sshexec-test, say).
            m = re.search(r"\bsshexec-([a-z]+)$", command)
            kind = m.group(1) if m else command.split()[0]
            channels[kind] = channels.get(kind, 0) + 1
            if kind == "executor" and isinstance(kw.get("stdin"), bytes):
                executor_bytes[0] += len(kw["stdin"])  # the executor tar, as sent into the channel
            return original(conn, command, **kw)

        events: list[tuple[str, float]] = []

        def run() -> dict:
            t0 = time.perf_counter()
            rb = load_runbook(self.runbook)
            inv = load_inventory(self.inventory)
            events.append(("loaded", time.perf_counter() - t0))
            runner = Runner(rb, inv, history=self.history, on_event=lambda kind, worker, data: events.append((kind, time.perf_counter() - t0)))
            result = runner.run()
            if not result.ok:
                raise BenchError(f"library run failed: {result.status}: {result.message}")
            return {}

        connection.Connection.stream = counting
        try:
            s = timed_call(run)
        finally:
            connection.Connection.stream = original
        s.extra["phases"] = _phases(events, s.wall)
        s.extra["channels"] = channels
        s.extra["executor_bytes_sent"] = executor_bytes[0]
        return s


def _phases(events: list[tuple[str, float]], wall: float) -> dict[str, float]:
    """Durations between the run's own events, in order: what each stretch of a step cost.

    "stage" appears only when a big bundle is streamed before the container
    starts; "running" when the container has started. Missing marks merge
    their stretch into the next one.
    """
    first: dict[str, float] = {}
    for kind, t in events:
        first.setdefault(kind, t)
    marks = [("loaded", "load"), ("step-start", "prepare"), ("stage", "connect"), ("running", "until started"), ("step-done", "container")]
    out, last = {}, 0.0
    for kind, name in marks:
        if kind in first:
            if name == "until started" and "stage" in first:
                name = "upload + start"
            elif name == "until started":
                name = "connect + start"
            out[name] = first[kind] - last
            last = first[kind]
    out["finish"] = wall - last
    return out
