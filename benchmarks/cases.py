"""The cases: the five of issue 7, and the fan-out through a bastion of issue 10. Each returns a CaseResult: rows for the table, raw samples, facts.

A is always sshexec; B is the same work done by hand with the OpenSSH client
and the docker CLI; C (fan-out only) is Ansible. Every sshexec A runs the real
`sshexec` program as a fresh process from the shell, except the library row
of the warm case, which calls `sshexec.run.runner.Runner` in this process.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .env import BenchEnv
from .library import ConnectedStep, Library
from .measure import BenchError, Sample, Variant, paired, run_timed
from .report import CaseResult, Row

MB = 1 << 20


@dataclass
class Sizes:
    fanout: int = 64  # workers
    big_mb: int = 100  # one file of this many MiB
    small_files: int = 2000  # this many files of 1-4 KiB
    lines: int = 1_000_000
    scale: int = 200  # workers (the shared-daemon lab)
    bastion: int = 8  # workers behind the lab's bastion

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(fanout=4, big_mb=10, small_files=200, lines=100_000, scale=8, bastion=4)


@dataclass
class Context:
    env: BenchEnv
    sizes: Sizes
    repeat: int
    log: Callable[[str], None]
    ansible: object | None = None  # benchmarks.ansible.Ansible, when the Ansible baseline is on
    warmup: int = 1  # untimed rounds before the timed ones (0: the smoke test, which checks the harness, not the figures)

    def paired(self, variants: Sequence[Variant]) -> dict[str, list[Sample]]:
        """measure.paired with this run's rounds, warm-up rounds and log."""
        return paired(variants, self.repeat, warmup=self.warmup, log=self.log)


def _walls(samples: list[Sample]) -> list[float]:
    return [s.wall for s in samples]


def _med(values):
    from .measure import median

    return median(values)


# -- 1. warm step -------------------------------------------------------------------------


def warm(ctx: Context) -> CaseResult:
    env = ctx.env
    w = env.workers[0]
    inv = env.inventory(1)
    rb = env.runbook("warm", {"name": "hi", "script": {"syntax": "sh", "inline": "echo hi"}})
    cli = env.sshexec("run", str(rb), "--inventory", str(inv))
    # --log-driver none, like sshexec: both stream the output straight back, neither keeps a json log.
    remote = f"docker run --rm --log-driver none {env.image()} sh -c 'echo hi'"
    baseline = env.ssh(w, remote)
    library = Library(rb, inv)
    with _control_master(env, w) as cp, _closing(ConnectedStep(rb, inv)) as connected:
        # The fair baseline for a step on a connection that is already open (issue 22): OpenSSH through its ControlMaster.
        through = ["ssh", *env.ssh_options(), "-o", f"ControlPath={cp}", "-p", str(w.port), "deploy@127.0.0.1", remote]
        return _warm(ctx, cli, baseline, library, connected, through, inv)


@contextmanager
def _control_master(env: BenchEnv, w):
    """An OpenSSH ControlMaster to worker `w`, open for the block; its control path."""
    cp = str(env.scratch / f"cm-{secrets.token_hex(4)}")
    master = ["ssh", *env.ssh_options(), "-p", str(w.port), "-o", "ControlMaster=yes", "-o", f"ControlPath={cp}", "-o", "ControlPersist=600",
              "-N", "-f", "deploy@127.0.0.1"]  # fmt: skip
    subprocess.run(master, check=True, env=env.env(), timeout=60, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield cp
    finally:
        subprocess.run(["ssh", "-o", f"ControlPath={cp}", "-O", "exit", "deploy@127.0.0.1"], capture_output=True, timeout=30)


@contextmanager
def _closing(thing):
    try:
        yield thing
    finally:
        thing.close()


def _warm(ctx: Context, cli, baseline, library: Library, connected: ConnectedStep, through, inv: Path) -> CaseResult:
    env = ctx.env
    # Five steps in one run: one process and one connection for all (the startup is paid once).
    k = 5
    steps = [{"name": f"s{i}", "script": {"syntax": "sh", "inline": "echo hi"}} for i in range(1, k + 1)]
    rb_k = env.runbook_steps(f"warm{k}", steps)
    cli_k = env.sshexec("run", str(rb_k), "--inventory", str(inv))
    one = " ".join(shlex.quote(x) for x in baseline)
    baseline_k = ["sh", "-c", f"for i in {' '.join(map(str, range(k)))}; do {one} >/dev/null || exit 1; done"]
    samples = ctx.paired(
        [
            Variant("A", "sshexec run (CLI)", lambda: run_timed(cli, env=env.env())),
            Variant("L", "Runner.run() in-process", library.sample),
            Variant("B", "ssh + docker run", lambda: run_timed(baseline, env=env.env())),
            Variant("S", "run_step() on a connected session", connected.sample),
            Variant("BM", "ssh + docker run (ControlMaster open)", lambda: run_timed(through, env=env.env())),
            Variant(f"A{k}", f"sshexec run, {k} steps", lambda: run_timed(cli_k, env=env.env())),
            Variant(f"B{k}", f"{k} × ssh + docker run", lambda: run_timed(baseline_k, env=env.env())),
        ]
    )
    env.clear_history()
    a, lib, b = _walls(samples["A"]), _walls(samples["L"]), _walls(samples["B"])
    a_k, b_k = _walls(samples[f"A{k}"]), _walls(samples[f"B{k}"])
    phases = {k: _med([s.extra["phases"].get(k, 0.0) for s in samples["L"]]) for k in samples["L"][-1].extra["phases"]}
    channels = samples["L"][-1].extra["channels"]
    res = CaseResult("warm", samples=samples)
    res.rows.append(Row("warm", "warm step (CLI)", "sshexec run", a, "ssh docker run", b, target=1.25,
                        notes=f"process start+imports+CLI ≈ {(_med(a) - _med(lib)) * 1000:.0f} ms"))  # fmt: skip
    res.rows.append(Row("warm", "warm step (library)", "Runner.run()", lib, "ssh docker run", b, target=1.25,
                        notes=f"per-step overhead {(_med(lib) - _med(b)) * 1000:+.0f} ms; SSH channels: {'+'.join(f'{k}×{v}' for k, v in channels.items())}"))  # fmt: skip
    step, bm = _walls(samples["S"]), _walls(samples["BM"])
    res.rows.append(Row("warm", "warm step on an open connection", "run_step(), connected", step, "ssh -o ControlPath (open)", bm,
                        notes=f"left for client + agent within 1.1×: {(1.1 * _med(bm) - _med(step)) * 1000:+.0f} ms; ControlMaster/fresh ssh "
                              f"{_med(bm) / _med(b):.2f}×"))  # fmt: skip
    per_step = (_med(a_k) - _med(a)) / (k - 1)
    res.rows.append(Row("warm", f"warm runbook, {k} steps (CLI)", f"sshexec run, {k} steps", a_k, f"{k} × ssh docker run", b_k,
                        notes=f"each further step ≈ {per_step * 1000:.0f} ms vs {_med(b) * 1000:.0f} ms by hand"))  # fmt: skip
    res.figures = {"per_further_step_s": per_step, "library_phases_s": phases, "connected_step_over_controlmaster": _med(step) / _med(bm), "library_channels_per_step": channels, "library_overhead_s": _med(lib) - _med(b)}
    return res


# -- 2. fan-out ---------------------------------------------------------------------------


def fanout(ctx: Context) -> CaseResult:
    env, n = ctx.env, ctx.sizes.fanout
    workers = env.workers[:n]
    inv = env.inventory(n)
    rb = env.runbook("fanout", {"name": "t", "target": "each", "script": {"syntax": "sh", "inline": "true"}})
    remote = f"docker run --rm --log-driver none {env.image()} true"
    variants = [
        Variant("A", f"sshexec run, target each ×{n}", lambda: run_timed(env.sshexec("run", str(rb), "--inventory", str(inv), "--parallel", str(n)), env=env.env())),
        Variant("B", f"OpenSSH xargs -P{n}", lambda: run_timed(env.parallel_ssh([(w, remote) for w in workers], n), env=env.env())),
    ]
    figures: dict = {"workers": n}
    if ctx.ansible is not None:
        ans = ctx.ansible
        figures["ansible"] = ans.install()
        ans.provide_python(workers)
        ans_env = ans.configure(workers, forks=n)
        argv = ans.argv(remote, forks=n)
        variants.append(Variant("C", f"ansible -f {n} -m command", lambda: run_timed(argv, env=ans_env)))
    samples = ctx.paired(variants)
    env.clear_history()
    res = CaseResult("fanout", samples=samples, figures=figures)
    a, b = _walls(samples["A"]), _walls(samples["B"])
    res.rows.append(Row("fanout", f"fan-out {n} workers", f"sshexec, target each ×{n}", a, f"ssh + docker run, xargs -P{n}", b, target=1.1))
    if "C" in samples:
        c = _walls(samples["C"])
        res.rows.append(Row("fanout", f"fan-out {n} workers", f"sshexec, target each ×{n}", a, "Ansible ad-hoc (pipelining, ControlPersist)", c,
                            notes=f"Ansible/OpenSSH {_med(c) / _med(b):.2f}×; {figures['ansible']}"))  # fmt: skip
    return res


# -- 3. bundle upload ---------------------------------------------------------------------


def make_payloads(root: Path, sizes: Sizes) -> dict[str, Path]:
    """Random (incompressible) data: one big file, and many small files in 20 directories."""
    big, small = root / "payload-big", root / "payload-small"
    big.mkdir(parents=True, exist_ok=True)
    with open(big / "blob.bin", "wb") as fh:
        for _ in range(sizes.big_mb):
            fh.write(os.urandom(MB))
    for i in range(sizes.small_files):
        d = small / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(os.urandom(1024 + (i * 37) % 3072))
    return {"big": big, "small": small}


def bundle_bytes(files: Path) -> int:
    """The size of the tar stream sshexec sends for a step with `files` (its own bundle code)."""
    from sshexec.worker.bundle import write_bundle

    total = [0]
    write_bundle(lambda data: total.__setitem__(0, total[0] + len(data)), script=b"true", files=files)
    return total[0]


def upload(ctx: Context) -> CaseResult:
    env, sizes = ctx.env, ctx.sizes
    w = env.workers[0]
    inv = env.inventory(1)
    payloads = make_payloads(env.scratch, sizes)
    res = CaseResult("upload")
    res.figures["executor"] = _executor_probe(ctx)
    labels = {"big": f"1 file of {sizes.big_mb} MiB", "small": f"{sizes.small_files} small files"}
    for kind, path in payloads.items():
        rb = env.runbook(f"upload-{kind}", {"name": "t", "script": {"syntax": "sh", "inline": "true"}, "files": str(path)})
        tar = f"tar -c -C {shlex.quote(str(path))} ."
        d = f"{w.work_root}/bench-upload.$$"
        unpack = f'd={d}; mkdir "$d" && tar -x -C "$d"'
        by_hand = f'{unpack} && docker run --rm --log-driver none -v "$d:$d:ro" -w "$d" {env.image()} true; rc=$?; rm -rf "$d"; exit $rc'
        only_tar = f'{unpack}; rc=$?; rm -rf "$d"; exit $rc'
        ssh_by_hand = " ".join(shlex.quote(x) for x in env.ssh(w, by_hand))
        ssh_only_tar = " ".join(shlex.quote(x) for x in env.ssh(w, only_tar))
        variants = [
            Variant("A", "sshexec run", lambda rb=rb: run_timed(env.sshexec("run", str(rb), "--inventory", str(inv)), env=env.env())),
            Variant("B", "tar | ssh tar x; docker run", lambda c=ssh_by_hand: run_timed(["sh", "-c", f"{tar} | {c}"], env=env.env())),
            Variant("T", "tar | ssh tar x", lambda c=ssh_only_tar: run_timed(["sh", "-c", f"{tar} | {c}"], env=env.env())),
        ]
        for v in variants:
            v.sample = _with_wire_bytes(env, w, v.sample)
        samples = ctx.paired(variants)
        env.clear_history()
        res.samples.update({f"{kind}.{k}": v for k, v in samples.items()})
        a, b, t = _walls(samples["A"]), _walls(samples["B"]), _walls(samples["T"])
        wire = {k: int(_med([s.extra["wire_bytes"] for s in v])) for k, v in samples.items()}
        payload = bundle_bytes(path)
        res.figures[kind] = {"bundle_tar_bytes": payload, "wire_bytes_median": wire}
        note = f"wire: A {wire['A'] / MB:.1f} MiB, B {wire['B'] / MB:.1f} MiB (bundle tar {payload / MB:.1f} MiB)"
        res.rows.append(Row("upload", f"upload {labels[kind]}", "sshexec run (script true)", a, "tar | ssh tar x; docker run", b, target=1.25, notes=note))
        res.rows.append(Row("upload", f"upload {labels[kind]}", "sshexec run (script true)", a, "tar | ssh tar x (no container)", t,
                            notes="the issue's literal baseline: starts no container"))  # fmt: skip
    ex = res.figures["executor"]
    res.rows.append(Row("upload", "executor bytes, 2nd run", "Runner.run()", [ex["second_run_executor_bytes"] / 1024], unit="KiB", limit=0,
                        notes=f"sent on executor channels: {' / '.join(str(b) for b in ex['executor_bytes_sent_runs'])} B (1st, 2nd, 3rd run); "
                              f"worker eth0: 1st run +{ex['first_run_extra_wire_bytes'] / 1024:.1f} KiB over a warm run, warm runs differ by {ex['warm_runs_wire_difference_bytes']} B "
                              f"(executor tar {ex['executor_tar_bytes'] / 1024:.1f} KiB)"))  # fmt: skip
    shutil.rmtree(payloads["big"], ignore_errors=True)
    shutil.rmtree(payloads["small"], ignore_errors=True)
    return res


def _with_wire_bytes(env: BenchEnv, worker, sample: Callable[[], Sample]) -> Callable[[], Sample]:
    def wrapped() -> Sample:
        before = env.rx_bytes(worker)
        s = sample()
        s.extra["wire_bytes"] = env.rx_bytes(worker) - before
        return s

    return wrapped


def _executor_probe(ctx: Context) -> dict:
    """First contact uploads the executor; later runs must upload none of it.

    Measured, not inferred: three in-process runs of a tiny step (the executor
    removed before the first), counting (1) the bytes sshexec sends on executor
    upload channels and (2) the bytes the worker's network interface receives
    in all (every SSH packet, encryption included).
    """
    from sshexec.worker.bundle import executor_tar

    env = ctx.env
    w = env.workers[0]
    rb = env.runbook("executor-probe", {"name": "t", "script": {"syntax": "sh", "inline": "true"}})
    library = Library(rb, env.inventory(1))
    shutil.rmtree(env.executor_dir(w), ignore_errors=True)
    wire, sent = [], []
    for _ in range(3):
        before = env.rx_bytes(w)
        s = library.sample()
        wire.append(env.rx_bytes(w) - before)
        sent.append(s.extra["executor_bytes_sent"])
    env.clear_history()
    return {
        "executor_tar_bytes": len(executor_tar()),
        "executor_bytes_sent_runs": sent,  # first contact, then two warm runs
        "wire_bytes_runs": wire,
        "first_run_extra_wire_bytes": wire[0] - min(wire[1:]),
        "second_run_executor_bytes": sent[1],
        "third_run_executor_bytes": sent[2],
        "warm_runs_wire_difference_bytes": abs(wire[1] - wire[2]),
    }


# -- 4. log streaming ---------------------------------------------------------------------


def stream(ctx: Context) -> CaseResult:
    env, n = ctx.env, ctx.sizes.lines
    w = env.workers[0]
    inv = env.inventory(1)
    token = "bench-" + secrets.token_hex(12)
    rb = env.runbook(
        "stream",
        {"name": "seq", "script": {"syntax": "sh", "inline": f'seq {n}\necho "token=$BENCH_TOKEN"'}},
        sensitive={"BENCH_TOKEN": token},
    )
    run_env = dict(env.env(), BENCH_TOKEN=token)
    cli = env.sshexec("run", str(rb), "--inventory", str(inv))
    baseline = env.ssh(w, f"docker run --rm --log-driver none {env.image()} seq {n}")
    checked = []

    def after_a(s: Sample) -> None:
        if not checked:
            checked.append(_check_stream_log(env, n, token))
        env.clear_history()

    samples = ctx.paired(
        [
            Variant("A", "sshexec run > /dev/null", lambda: run_timed(cli, env=run_env), after=after_a),
            Variant("B", "ssh docker run > /dev/null", lambda: run_timed(baseline, env=env.env())),
        ]
    )
    a, b = _walls(samples["A"]), _walls(samples["B"])
    rss_a = [s.maxrss_kb / 1024 for s in samples["A"]]
    rss_b = [s.maxrss_kb / 1024 for s in samples["B"]]
    cpu_a = _med([s.user + s.sys for s in samples["A"]])
    res = CaseResult("stream", samples=samples, figures={"lines": n, "log_check": checked[0] if checked else None, "operator_cpu_s": cpu_a})
    res.rows.append(Row("stream", f"stream {n:,} lines, 1 secret masked", "sshexec run", a, "ssh docker run", b, target=1.25,
                        notes=f"{n / _med(a) / 1000:.0f}k lines/s; operator CPU {cpu_a:.2f} s"))  # fmt: skip
    res.rows.append(Row("stream", "operator peak RSS (streaming)", "sshexec process", rss_a, "ssh client", rss_b, unit="MiB", limit=50))
    return res


def _check_stream_log(env: BenchEnv, n: int, token: str) -> dict:
    """The stored log has every line and the secret masked (never the secret itself)."""
    from sshexec.store.history import History

    h = History(env.state)
    latest = h.runs(1)
    if not latest:
        raise BenchError("the streaming run left no run in the history")
    data = h.log_text(latest[0].id)
    h.close()
    facts = {"log_bytes": len(data), "last_line_present": f"| {n}\n".encode() in data, "masked": b"token=********" in data, "secret_leaked": token.encode() in data}
    if not facts["last_line_present"] or not facts["masked"] or facts["secret_leaked"]:
        raise BenchError(f"streaming log check failed: {facts}")
    return facts


# -- 5. scale -----------------------------------------------------------------------------


def scale(ctx: Context) -> CaseResult:
    from sshexec.ops.check import CHECK

    env, n = ctx.env, ctx.sizes.scale
    workers = env.workers[:n]
    inv_n, inv_1 = env.inventory(n), env.inventory(1)
    jobs = [(w, CHECK.command(("docker",), w.work_root, "")) for w in workers]
    samples = ctx.paired(
        [
            Variant("A", f"sshexec check ×{n}", lambda: run_timed(env.sshexec("check", "--json", "--inventory", str(inv_n)), env=env.env())),
            Variant("B", "OpenSSH xargs -P16, same check script", lambda: run_timed(env.parallel_ssh(jobs, 16), env=env.env())),
        ]
    )
    # Peak RSS with one connection, and with all n open at once (--parallel n); in those runs,
    # every worker must answer: no connection fails (sshd's MaxStartups, the gates, n sockets at once).
    rss_1, rss_n, failed = [], [], set()
    report = env.scratch / "check.json"
    for _ in range(max(3, min(ctx.repeat, 5))):
        rss_1.append(run_timed(env.sshexec("check", "--json", "--inventory", str(inv_1)), env=env.env()).maxrss_kb / 1024)
        at_once = env.sshexec("check", "--json", "--parallel", str(n), "--inventory", str(inv_n))
        rss_n.append(run_timed(at_once, env=env.env(), stdout_path=str(report), ok=(0, 3)).maxrss_kb / 1024)
        failed |= {w["worker"] for w in json.loads(report.read_text())["workers"] if not w["healthy"]}
    failed = sorted(failed)
    per_conn = (_med(rss_n) - _med(rss_1)) / (n - 1) if n > 1 else float("nan")
    a, b = _walls(samples["A"]), _walls(samples["B"])
    rss_a = [s.maxrss_kb / 1024 for s in samples["A"]]
    res = CaseResult("scale", samples=samples)
    res.figures = {"workers": n, "rss_1_worker_mib": rss_1, f"rss_{n}_at_once_mib": rss_n, "rss_per_connection_mib": per_conn, "unhealthy_at_once": failed}
    res.rows.append(Row("scale", f"check {n} workers (parallel 16)", "sshexec check", a, "ssh ×n, xargs -P16", b))
    res.rows.append(Row("scale", f"check {n} workers at once: failed", f"sshexec check --parallel {n}", [float(len(failed))], unit="workers", limit=0,
                        notes=", ".join(failed[:5]) or "every worker healthy"))  # fmt: skip
    res.rows.append(Row("scale", "check memory per open connection", "sshexec check", [per_conn], unit="MiB", limit=0.5))
    res.rows.append(Row("scale", f"check peak RSS, {n} workers", "sshexec check", rss_a, unit="MiB",
                        notes=f"1 worker {_med(rss_1):.1f} MiB; {n} at once {_med(rss_n):.1f} MiB → {per_conn * 1024:.0f} KiB per connection"))  # fmt: skip
    return res


# -- 6. coordination --------------------------------------------------------------------------


def coord(ctx: Context) -> CaseResult:
    """What locks and slots cost a warm step: the same one-step run plain, with `lock:`, and on a max_steps worker.

    In-process (Runner.run()), so that only the coordination differs; the SSH
    channels each opens are counted by kind (take/release for a lock; the
    heartbeat, the slot and the dead runs' sweep ride on GO).
    """
    env = ctx.env
    step = {"name": "hi", "script": {"syntax": "sh", "inline": "echo hi"}}
    plain, locked = env.runbook("coord", step), env.runbook("coord-lock", step, lock="bench")
    inv, slotted = env.inventory(1), env.inventory(1, max_steps=4)
    libs = {"P": Library(plain, inv), "K": Library(locked, inv), "S": Library(plain, slotted)}
    samples = ctx.paired(
        [
            Variant("P", "warm step, no lock", libs["P"].sample),
            Variant("K", "warm step, lock:", libs["K"].sample),
            Variant("S", "warm step, max_steps: 4", libs["S"].sample),
        ]
    )
    env.clear_history()
    p, k, sl = _walls(samples["P"]), _walls(samples["K"]), _walls(samples["S"])

    def channels(key: str) -> str:
        return "+".join(f"{kind}×{n}" for kind, n in samples[key][-1].extra["channels"].items())

    res = CaseResult("coord", samples=samples)
    res.rows.append(Row("coord", "warm step with lock: (library)", "lock:", k, "no lock", p,
                        notes=f"{(_med(k) - _med(p)) * 1000:+.0f} ms; channels {channels('K')} vs {channels('P')}"))  # fmt: skip
    res.rows.append(Row("coord", "warm step on max_steps (library)", "max_steps: 4", sl, "no max_steps", p,
                        notes=f"{(_med(sl) - _med(p)) * 1000:+.0f} ms; channels {channels('S')}"))  # fmt: skip
    res.figures = {"lock_overhead_s": _med(k) - _med(p), "slot_overhead_s": _med(sl) - _med(p),
                   "channels": {key: samples[key][-1].extra["channels"] for key in samples}}  # fmt: skip
    return res


# -- 7. fan-out through a bastion -----------------------------------------------------------


def bastion(ctx: Context) -> CaseResult:
    """target: each over the workers behind the lab's bastion vs OpenSSH with ProxyJump (xargs -P)."""
    from sshexec.lab.containers import SOCKET_IN_WORKER

    env, n = ctx.env, ctx.sizes.bastion
    names = env.internal[:n]
    inv = env.inventory_behind(n)
    rb = env.runbook("bastion", {"name": "t", "pool": "internal", "target": "each", "script": {"syntax": "sh", "inline": "true"}})
    remote = f"docker --host unix://{SOCKET_IN_WORKER} run --rm --log-driver none {env.image()} true"
    a_argv = env.sshexec("run", str(rb), "--inventory", str(inv), "--parallel", str(n))
    b_argv = env.parallel_ssh_behind(names, remote, n)
    samples = ctx.paired(
        [
            Variant("A", f"sshexec run, target each ×{n} behind a bastion", lambda: run_timed(a_argv, env=env.env())),
            Variant("B", f"ssh -J bastion (ProxyJump), xargs -P{n}", lambda: run_timed(b_argv, env=env.env())),
        ]
    )
    env.clear_history()
    # Logins at the bastion for one run of each: sshexec shares one connection to it.
    logins = {}
    for key, argv in (("A", a_argv), ("B", b_argv)):
        before = env.bastion_logins()
        run_timed(argv, env=env.env())
        logins[key] = env.bastion_logins() - before
    env.clear_history()
    a, b = _walls(samples["A"]), _walls(samples["B"])
    res = CaseResult("bastion", samples=samples, figures={"workers": n, "bastion_logins_per_run": logins})
    res.rows.append(Row("bastion", f"fan-out {n} workers behind a bastion", f"sshexec, target each ×{n}", a, f"ssh -J (ProxyJump), xargs -P{n}", b,
                        target=1.3, notes=f"logins at the bastion per run: sshexec {logins['A']}, OpenSSH {logins['B']}"))  # fmt: skip
    return res


CASES = {"warm": warm, "fanout": fanout, "upload": upload, "stream": stream, "scale": scale, "coord": coord, "bastion": bastion}
