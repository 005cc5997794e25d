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


class ConnectedStep:
    """The runbook's first step through `run_step` on a session connected once: a warm step's cost on an open connection.

    What is left of a step once the connection is kept (the agent's aim): GO's round trip and the container, no
    connect, no history. Each sample runs it under a new step name (a fresh directory and container name).
    """

    def __init__(self, runbook: Path, inventory: Path):
        self.runbook, self.inventory = runbook, inventory
        self.session = None
        self.count = 0

    def sample(self) -> Sample:
        import dataclasses
        import threading
        import uuid

        from sshexec.config.inventory import load_inventory
        from sshexec.config.runbook import load_runbook
        from sshexec.core.secrets import Masker
        from sshexec.step.execute import run_step
        from sshexec.step.result import StepContext
        from sshexec.worker.session import WorkerSession

        inv = load_inventory(self.inventory)
        step = load_runbook(self.runbook, inv).steps[0]
        if self.session is None:
            self.session = WorkerSession(next(w for w in inv.workers if step.pool in w.pools), "bench" + uuid.uuid4().hex[:8])
            self.session.open()
        self.count += 1
        step = dataclasses.replace(step, name=f"{step.name}{self.count}")
        ctx = StepContext(run_id=self.session.run_id, variables={}, masker=Masker(), writers=(), artifacts=None, cancel=threading.Event())

        def run() -> dict:
            result = run_step(self.session, step, ctx)
            if result.status != "succeeded":
                raise BenchError(f"step on a connected session failed: {result.status}: {result.message}")
            return {}

        return timed_call(run)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
