"""Issue 22's case: sshexec from the shell with the resident agent, paired with the same command in-process and by hand.

Every round runs, interleaved: `sshexec` with the agent (AG, the agent started
before the first round), `sshexec` with SSHEXEC_AGENT=0 (A0, in-process: the
"before"), and the OpenSSH baselines: a fresh `ssh` (B) and, for the warm step,
`ssh` through a ControlMaster that is already open (BM), the fair comparison
for a resident process. The cold row stops the agent before each sample, so
the command finds none (it runs in-process and spawns one, whose preload
competes for the same two cores), against A0.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import subprocess
import threading
import uuid

from .cases import Context, _check_stream_log, _med, _walls, make_payloads
from .measure import BenchError, Sample, Variant, run_timed
from .report import CaseResult, Row


class BenchAgent:
    """The agent of the suite's scratch home, in a runtime directory of its own; stopped at the end."""

    def __init__(self, ctx: Context):
        self.env = ctx.env
        self.run_dir = ctx.env.scratch / "run"
        self.run_dir.mkdir(exist_ok=True)

    def on(self) -> dict[str, str]:
        return {**self.env.env(), "SSHEXEC_AGENT": "auto", "XDG_RUNTIME_DIR": str(self.run_dir)}

    def unkept(self) -> dict[str, str]:
        """The agent, its children keeping no SSH connection (issue 22 before its connections were kept)."""
        return {**self.on(), "SSHEXEC_CONNECTION_IDLE": "0"}

    def off(self) -> dict[str, str]:
        return {**self.env.env(), "SSHEXEC_AGENT": "0"}

    def paths(self):
        """The agent's socket, lock and log. The suite's commands run an installed copy (env.installed_sshexec):
        another interpreter prefix than this process's, so another installation key in the file names. Its
        agent is the one whose lock file is in this private directory."""
        from sshexec.agent import wire

        paths = wire.Paths(str(self.run_dir / "sshexec"))
        for lock in sorted((self.run_dir / "sshexec").glob("agent-*.lock"))[:1]:
            paths.lock, paths.socket, paths.log = str(lock), str(lock.with_suffix(".sock")), str(lock.with_suffix(".log"))
        return paths

    def start(self) -> None:
        run_timed(self.env.sshexec("agent", "start"), env=self.on())

    def wait_up(self) -> None:
        from sshexec.agent import client

        client.wait_until_up(self.paths())

    def stop(self) -> None:
        from sshexec.agent import client

        client.stop(self.paths())

    def status(self) -> dict | None:
        from sshexec.agent import client

        return client.status(self.paths())


class ChildPeak:
    """The peak RSS of the agent's command processes while a sample runs (their VmHWM, polled)."""

    def __init__(self, agent: BenchAgent):
        self.agent, self.peak_kib, self._stop = agent, 0, threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            now = self.agent.status() or {"running": []}
            for child in now["running"]:
                try:
                    with open(f"/proc/{child['pid']}/status") as fh:
                        hwm = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)
                    self.peak_kib = max(self.peak_kib, hwm)
                except OSError:
                    pass


def agent(ctx: Context) -> CaseResult:
    env, sizes = ctx.env, ctx.sizes
    w = env.workers[0]
    inv = env.inventory(1)
    ag = BenchAgent(ctx)
    res = CaseResult("agent")
    cp = f"/tmp/sxcm-{uuid.uuid4().hex[:8]}"
    master = ["ssh", *env.ssh_options(), "-p", str(w.port), "-o", "ControlMaster=yes", "-o", f"ControlPath={cp}", "-o", "ControlPersist=600",
              "-N", "-f", "deploy@127.0.0.1"]  # fmt: skip
    subprocess.run(master, check=True, env=env.env(), timeout=60)
    ag.start()
    try:
        _warm(ctx, ag, cp, inv, res)
        _stream(ctx, ag, inv, res)
        _upload(ctx, ag, inv, res)
        if sizes.fanout > 1 and len(env.workers) >= sizes.fanout:
            _fanout(ctx, ag, res)
        _cold(ctx, ag, inv, res)
        now = ag.status() or {}
        res.figures["agent_rss_kib_at_end"] = now.get("rss_kib")
        res.figures["agent_served"] = now.get("served")
    finally:
        subprocess.run(["ssh", "-o", f"ControlPath={cp}", "-O", "exit", "deploy@127.0.0.1"], capture_output=True, timeout=30)
        ag.stop()
    return res


def _warm(ctx: Context, ag: BenchAgent, cp: str, inv, res: CaseResult) -> None:
    env = ctx.env
    w = env.workers[0]
    rb = env.runbook("agent-warm", {"name": "hi", "script": {"syntax": "sh", "inline": "echo hi"}})
    cli = env.sshexec("run", str(rb), "--inventory", str(inv))
    remote = f"docker run --rm --log-driver none {env.image()} sh -c 'echo hi'"
    fresh = env.ssh(w, remote)
    through = ["ssh", *env.ssh_options(), "-o", f"ControlPath={cp}", "-p", str(w.port), "deploy@127.0.0.1", remote]
    samples = ctx.paired(
        [
            Variant("AG", "sshexec run, agent", lambda: run_timed(cli, env=ag.on())),
            Variant("AN", "sshexec run, agent, no connection kept", lambda: run_timed(cli, env=ag.unkept())),
            Variant("A0", "sshexec run, SSHEXEC_AGENT=0", lambda: run_timed(cli, env=ag.off())),
            Variant("B", "ssh + docker run (fresh)", lambda: run_timed(fresh, env=env.env())),
            Variant("BM", "ssh + docker run (ControlMaster open)", lambda: run_timed(through, env=env.env())),
        ]
    )
    env.clear_history()
    res.samples.update({f"warm.{k}": v for k, v in samples.items()})
    ag_, an, a0, b, bm = (_walls(samples[k]) for k in ("AG", "AN", "A0", "B", "BM"))
    res.rows.append(Row("agent", "warm step, agent vs fresh ssh", "sshexec run (agent)", ag_, "ssh docker run", b, target=0.8,
                        notes=f"ControlMaster/fresh ssh {_med(bm) / _med(b):.2f}×"))  # fmt: skip
    res.rows.append(Row("agent", "warm step, agent vs ControlMaster", "sshexec run (agent)", ag_, "ssh -o ControlPath (open)", bm, target=1.1))
    res.rows.append(Row("agent", "warm step, agent, no connection kept", "sshexec run (SSHEXEC_CONNECTION_IDLE=0)", an, "ssh -o ControlPath (open)",
                        bm, notes=f"vs fresh ssh {_med(an) / _med(b):.2f}×; keeping connections saves {(_med(an) - _med(ag_)) * 1000:.0f} ms"))  # fmt: skip
    res.rows.append(Row("agent", "warm step, in-process (before)", "sshexec run (SSHEXEC_AGENT=0)", a0, "ssh docker run", b,
                        notes=f"agent saves {(_med(a0) - _med(ag_)) * 1000:.0f} ms a command"))  # fmt: skip
    res.rows.append(Row("agent", "client peak RSS (warm step)", "sshexec client", [s.maxrss_kb / 1024 for s in samples["AG"]], "ssh",
                        [s.maxrss_kb / 1024 for s in samples["B"]], unit="MiB", limit=25))  # fmt: skip


def _stream(ctx: Context, ag: BenchAgent, inv, res: CaseResult) -> None:
    env, n = ctx.env, ctx.sizes.lines
    w = env.workers[0]
    token = "bench-" + secrets.token_hex(12)
    rb = env.runbook("agent-stream", {"name": "seq", "script": {"syntax": "sh", "inline": f'seq {n}\necho "token=$BENCH_TOKEN"'}},
                     sensitive={"BENCH_TOKEN": token})  # fmt: skip
    cli = env.sshexec("run", str(rb), "--inventory", str(inv))
    baseline = env.ssh(w, f"docker run --rm --log-driver none {env.image()} seq {n}")
    peaks: list[int] = []
    checked: list[dict] = []

    def with_agent() -> Sample:
        with ChildPeak(ag) as peak:
            s = run_timed(cli, env={**ag.on(), "BENCH_TOKEN": token})
        peaks.append(peak.peak_kib)
        return s

    def after(s: Sample) -> None:
        if not checked:
            checked.append(_check_stream_log(env, n, token))
        env.clear_history()

    samples = ctx.paired(
        [
            Variant("AG", "sshexec run > /dev/null, agent", with_agent, after=after),
            Variant("A0", "sshexec run > /dev/null, SSHEXEC_AGENT=0", lambda: run_timed(cli, env={**ag.off(), "BENCH_TOKEN": token}), after=after),
            Variant("B", "ssh docker run > /dev/null", lambda: run_timed(baseline, env=env.env())),
        ]
    )
    res.samples.update({f"stream.{k}": v for k, v in samples.items()})
    ag_, a0, b = (_walls(samples[k]) for k in ("AG", "A0", "B"))
    parent = (ag.status() or {}).get("rss_kib", 0) / 1024
    res.figures["stream"] = {"lines": n, "log_check": checked[0] if checked else None, "agent_child_peak_kib": peaks}
    res.rows.append(Row("agent", f"stream {n:,} lines, agent", "sshexec run (agent)", ag_, "ssh docker run", b, target=1.15,
                        notes=f"in-process {_med(a0) / _med(b):.2f}×"))  # fmt: skip
    res.rows.append(Row("agent", "client peak RSS (streaming)", "sshexec client", [s.maxrss_kb / 1024 for s in samples["AG"]], "ssh",
                        [s.maxrss_kb / 1024 for s in samples["B"]], unit="MiB", limit=25,
                        notes=f"agent {parent:.0f} MiB; its command's peak {_med(peaks) / 1024:.0f} MiB (in-process: "
                              f"{_med([s.maxrss_kb for s in samples['A0']]) / 1024:.0f} MiB)"))  # fmt: skip


def _upload(ctx: Context, ag: BenchAgent, inv, res: CaseResult) -> None:
    env, sizes = ctx.env, ctx.sizes
    w = env.workers[0]
    payloads = make_payloads(env.scratch, sizes)
    labels = {"big": f"1 file of {sizes.big_mb} MiB", "small": f"{sizes.small_files} small files"}
    for kind, path in payloads.items():
        rb = env.runbook(f"agent-upload-{kind}", {"name": "t", "script": {"syntax": "sh", "inline": "true"}, "files": str(path)})
        cli = env.sshexec("run", str(rb), "--inventory", str(inv))
        d = f"{w.work_root}/bench-upload.$$"
        by_hand = f'd={d}; mkdir "$d" && tar -x -C "$d" && docker run --rm --log-driver none -v "$d:$d:ro" -w "$d" {env.image()} true; rc=$?; rm -rf "$d"; exit $rc'
        ssh_by_hand = " ".join(shlex.quote(x) for x in env.ssh(w, by_hand))
        tar = f"tar -c -C {shlex.quote(str(path))} ."
        samples = ctx.paired(
            [
                Variant("AG", "sshexec run, agent", lambda cli=cli: run_timed(cli, env=ag.on())),
                Variant("A0", "sshexec run, SSHEXEC_AGENT=0", lambda cli=cli: run_timed(cli, env=ag.off())),
                Variant("B", "tar | ssh tar x; docker run", lambda c=ssh_by_hand: run_timed(["sh", "-c", f"{tar} | {c}"], env=env.env())),
            ]
        )
        env.clear_history()
        res.samples.update({f"upload-{kind}.{k}": v for k, v in samples.items()})
        ag_, a0, b = (_walls(samples[k]) for k in ("AG", "A0", "B"))
        res.rows.append(Row("agent", f"upload {labels[kind]}, agent", "sshexec run (agent)", ag_, "tar | ssh tar x; docker run", b, target=1.15,
                            notes=f"in-process {_med(a0) / _med(b):.2f}×"))  # fmt: skip
    for path in payloads.values():
        shutil.rmtree(path, ignore_errors=True)


def _fanout(ctx: Context, ag: BenchAgent, res: CaseResult) -> None:
    env, n = ctx.env, ctx.sizes.fanout
    workers = env.workers[:n]
    inv = env.inventory(n)
    rb = env.runbook("agent-fanout", {"name": "t", "target": "each", "script": {"syntax": "sh", "inline": "true"}})
    cli = env.sshexec("run", str(rb), "--inventory", str(inv), "--parallel", str(n))
    remote = f"docker run --rm --log-driver none {env.image()} true"
    # The floor: the same containers started on this machine's Docker with no SSH at all (the lab's workers
    # share it, or run their daemons on these same cores). No tool that starts a container per worker goes below it.
    local = subprocess.run(["docker", "image", "inspect", env.image()], capture_output=True).returncode == 0
    floor = [Variant("F", f"docker run ×{n} here, no SSH (xargs -P{n})", lambda: run_timed(env.parallel_local(shlex.split(remote), n)))] if local else []
    samples = ctx.paired(
        [
            Variant("AG", f"sshexec run, target each ×{n}, agent", lambda: run_timed(cli, env=ag.on())),
            Variant("AN", f"sshexec run, target each ×{n}, agent, no connection kept", lambda: run_timed(cli, env=ag.unkept())),
            Variant("A0", f"sshexec run, target each ×{n}, SSHEXEC_AGENT=0", lambda: run_timed(cli, env=ag.off())),
            Variant("B", f"OpenSSH xargs -P{n}", lambda: run_timed(env.parallel_ssh([(w, remote) for w in workers], n), env=env.env())),
            *floor,
        ]
    )
    env.clear_history()
    res.samples.update({f"fanout.{k}": v for k, v in samples.items()})
    ag_, an, a0, b = (_walls(samples[k]) for k in ("AG", "AN", "A0", "B"))
    res.rows.append(Row("agent", f"fan-out {n} workers (2nd run on), agent", f"sshexec, target each ×{n} (agent)", ag_, f"ssh + docker run, xargs -P{n}", b,
                        target=0.7, notes=f"in-process {_med(a0) / _med(b):.2f}×; agent, no connection kept {_med(an) / _med(b):.2f}×"))  # fmt: skip
    if floor:
        f = _walls(samples["F"])
        res.rows.append(Row("agent", f"fan-out {n}: the containers alone (floor)", f"docker run ×{n} here, no SSH", f, f"ssh + docker run, xargs -P{n}", b,
                            notes=f"no tool starting {n} containers here goes below {_med(f) / _med(b):.2f}× OpenSSH; sshexec (agent) is {_med(ag_) / _med(f):.2f}× it"))  # fmt: skip


def _cold(ctx: Context, ag: BenchAgent, inv, res: CaseResult) -> None:
    env = ctx.env
    rb = env.runbook("agent-cold", {"name": "hi", "script": {"syntax": "sh", "inline": "echo hi"}})
    cli = env.sshexec("run", str(rb), "--inventory", str(inv))

    def after_cold(s: Sample) -> None:
        ag.wait_up()  # the agent it spawned finishes its preload before the next sample (untimed)

    samples = ctx.paired(
        [
            Variant("AC", "sshexec run, no agent yet (SSHEXEC_AGENT=auto)", lambda: run_timed(cli, env=ag.on()), before=ag.stop, after=after_cold),
            Variant("A0", "sshexec run, SSHEXEC_AGENT=0", lambda: run_timed(cli, env=ag.off())),
        ]
    )
    env.clear_history()
    res.samples.update({f"cold.{k}": v for k, v in samples.items()})
    res.rows.append(Row("agent", "first command, cold agent", "sshexec run (agent starting)", _walls(samples["AC"]), "sshexec run (SSHEXEC_AGENT=0)",
                        _walls(samples["A0"]), target=1.1, notes="the command runs in-process while the agent it spawned preloads"))  # fmt: skip
    if ag.status() is None:
        raise BenchError("the cold command did not leave an agent running")
