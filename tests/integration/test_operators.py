"""Many operators, one fleet: locks and worker slots on the workers, and gc after anyone (issue 12).

Each operator is a process with its own SSHEXEC_HOME, as two machines would be.
Times come from the workers' side: each step prints `date +%s.%N` at its start
and end as output variables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import yaml

from labkit import REPO, docker, extra_worker, inventory_file, leftovers, sshexec, step, stop_run, wait_for_line, worker_docker, worker_exec, write_runbook

TIMED = 'set_sshexec_variable start "$(date +%s.%N)"\n{body}\nset_sshexec_variable end "$(date +%s.%N)"\n'


def lab_inventory(tmp_path: Path, lab, workers=("w1", "w2"), name="inv.yaml", **defaults) -> Path:
    """The lab's inventory, with only `workers`, and `defaults` added (max_steps, lock_stale...)."""
    data = yaml.safe_load(lab.inventory_path.read_text())
    base = lab.inventory_path.parent
    for key in ("identity_file", "known_hosts"):
        data["defaults"][key] = str(base / data["defaults"][key])
    data["defaults"].update(defaults)
    data["workers"] = [w for w in data["workers"] if w["name"] in workers]
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def operator(tmp_path: Path, name: str) -> dict:
    """The environment of one operator: the lab's settings, a history of its own."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    return {**os.environ, "SSHEXEC_HOME": str(home)}


def start(*args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sshexec", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)


def finish(proc: subprocess.Popen, limit: float = 300) -> tuple[int, dict | None, str]:
    out, err = proc.communicate(timeout=limit)  # a hang guard
    data = json.loads(out) if out.strip().startswith(b"{") else None
    return proc.returncode, data, err.decode()


def intervals(data: dict, worker: str) -> tuple[float, float]:
    outs = data["outputs"]
    key = next(k for k in outs if k.endswith(f"[{worker}].start"))
    return float(outs[key]), float(outs[key.replace(".start", ".end")])


def node_dir(lab, worker: str) -> str:
    """work_root/coord/<node> of a lab worker: where its locks, slots and heartbeats live."""
    node = worker_exec(lab, worker, "cat", "/proc/sys/kernel/hostname").strip()
    return f"{lab.work_root(worker)}/coord/{node}"


def history(env: dict) -> list[dict]:
    return json.loads(sshexec("runs", "--json", env=env).stdout)


def test_two_operators_with_one_lock_take_turns_on_each_worker(lab_env, tmp_path):
    inv = lab_inventory(tmp_path, lab_env)
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "deploy", "lock": "deploy",
        "steps": [step("release", lab_env.image_ref("tools"), TIMED.format(body="sleep 3"), target="each")],
    })  # fmt: skip
    procs = [start("run", rb, "--inventory", inv, "--json", "--lock-wait", "120", env=operator(tmp_path, f"op{i}")) for i in (1, 2)]
    results = [finish(p) for p in procs]
    for code, data, err in results:
        assert code == 0 and data["status"] == "succeeded", err
    # They did meet: one of them waited for the other's lock, and said so.
    assert any("waiting for lock deploy on" in err for _, _, err in results)
    first, second = sorted((data for _, data, _ in results), key=lambda d: intervals(d, "w1")[0])
    for w in ("w1", "w2"):
        a, b = intervals(first, w), intervals(second, w)
        assert a[1] <= b[0], f"{w}: the runs overlapped: {a} and {b}"
    # Every lock and heartbeat was given back.
    for w in ("w1", "w2"):
        listed = worker_exec(lab_env, w, "sh", "-c", f"ls -A {node_dir(lab_env, w)}/locks {node_dir(lab_env, w)}/live")
        assert "deploy" not in listed and first["run_id"] not in listed and second["run_id"] not in listed


def test_a_waiting_run_never_steals_the_lock_while_the_holder_starts_its_steps(lab_env, tmp_path):
    """Stress: run B polls a lock that run A holds while A starts step after step, each start
    rewriting A's heartbeat on the worker. B must wait for A's end: no step of one ever runs
    while a step of the other does (worker-side times), and nobody takes anything over.

    They meet for sure: A's second step holds on (a file in its directory, bounded) until B says it
    waits for the lock; A's next three steps then start while B polls. (B's runbook is the same but
    for that hold.) (A warm step is fast enough
    now for A to end before a B that merely started after A's first step gets to the lock.)"""
    inv = lab_inventory(tmp_path, lab_env, workers=("w1",))
    hold = 'echo "holding in $PWD"; end=$(($(date +%s) + 120)); while [ ! -e go ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done; [ -e go ]'
    steps = [step(f"s{i}", lab_env.image_ref("tools"), TIMED.format(body=f"echo short {i}")) for i in range(5)]
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "short", "lock": "stress", "steps": steps})
    held = write_runbook(tmp_path / "held.yaml", {"name": "short", "lock": "stress", "steps": [*steps[:1], step("s1", lab_env.image_ref("tools"), TIMED.format(body=hold)), *steps[2:]]})
    a = start("run", held, "--inventory", inv, "--json", "--lock-wait", "120", env=operator(tmp_path, "a"))
    try:
        where = Path(wait_for_line(a, "| holding in ", stderr=True)[-1].split("| holding in ", 1)[1].strip())
        b = start("run", rb, "--inventory", inv, "--json", "--lock-wait", "120", env=operator(tmp_path, "b"))
        wait_for_line(b, "waiting for lock stress on w1", stderr=True)  # they met: B waits while A holds the lock
        (where / "go").touch()  # A goes on, step after step, while B polls
        results = [finish(a), finish(b)]
    finally:
        for p in (a, locals().get("b")):
            if p is not None:
                stop_run(p)
    for code, data, err in results:
        assert code == 0 and data["status"] == "succeeded", err[-3000:]
        assert "took over" not in err and "taken over" not in err, err[-3000:]
    spans = sorted((float(d["outputs"][k]), float(d["outputs"][k[: -len("start")] + "end"]), d["run_id"], k)
                   for _, d, _ in results for k in d["outputs"] if k.endswith("[w1].start"))  # fmt: skip
    assert len(spans) == 10
    for x, y in zip(spans, spans[1:]):
        assert x[1] <= y[0], f"steps overlapped on w1: {x} and {y}"


def test_the_holder_killed_with_sigkill_is_taken_over_after_lock_stale(lab_env, tmp_path):
    inv = lab_inventory(tmp_path, lab_env, workers=("w1",), lock_stale=15)  # the least allowed
    holder_env, next_env = operator(tmp_path, "holder"), operator(tmp_path, "next")
    hold = write_runbook(tmp_path / "hold.yaml", {"name": "hold", "lock": "deploy", "steps": [step("s", lab_env.image_ref("busybox"), "echo holding; sleep 120", syntax="sh")]})
    holder = start("run", hold, "--inventory", inv, env=holder_env)
    wait_for_line(holder, "| holding")
    listed = json.loads(sshexec("locks", "--inventory", inv, "--json", env=next_env).stdout)
    (lock,) = listed["workers"][0]["locks"]
    holder_id = lock["holder"]["run"]
    # The run's process: the command itself, or with the resident agent its child there (SSHEXEC_TEST_AGENT=1).
    runner_pid = lock["holder"]["pid"]
    assert lock["lock"] == "deploy" and not lock["stale"]
    assert runner_pid == holder.pid or os.environ.get("SSHEXEC_AGENT", "auto") != "0"
    os.kill(runner_pid, signal.SIGKILL)  # no cleanup of its own, its heartbeat just stops
    holder.wait(timeout=30)

    rb = write_runbook(tmp_path / "next.yaml", {"name": "next", "lock": "deploy", "steps": [step("s", lab_env.image_ref("busybox"), "echo mine now", syntax="sh")]})
    code, data, err = finish(start("run", rb, "--inventory", inv, "--json", "--lock-wait", "60", env=next_env))
    assert code == 0 and data["status"] == "succeeded", err
    assert f"took over lock deploy from run {holder_id} (" in err and f"pid {runner_pid})" in err
    assert history(holder_env)[0]["status"] == "interrupted"
    # On the worker, the killed run's container ended with its SSH session; gc finds nothing alive of it.
    end = time.monotonic() + 60
    while leftovers(lab_env, [holder_id]) and time.monotonic() < end:
        time.sleep(0.5)
    assert leftovers(lab_env, [holder_id]) == []


def test_locks_lists_the_holder_and_unlock_breaks_it(lab_env, tmp_path):
    inv = lab_inventory(tmp_path, lab_env, workers=("w1",), lock_stale=15)
    env = operator(tmp_path, "op")
    # The step holds on until the test has seen what it waits for (a file in its directory, bounded).
    hold = 'echo "holding in $PWD"; end=$(($(date +%s) + 120)); while [ ! -e go ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done'
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "hold", "lock": "maint", "steps": [step("s", lab_env.image_ref("busybox"), hold, syntax="sh")]})
    holder = start("run", rb, "--inventory", inv, env=env)
    try:
        where = Path(wait_for_line(holder, "| holding in ")[-1].split("| holding in ", 1)[1].strip())
        # A second run is refused at once: it never started, and says so (no --retry-failed to offer).
        refused = sshexec("run", rb, "--inventory", inv, env=operator(tmp_path, "op2"))
        said = " ".join(refused.stdout.split())
        assert refused.returncode == 3 and "the run did not start: " in said and "no step ran" in said, refused.stdout + refused.stderr
        assert "--retry-failed" not in said
        table = sshexec("locks", "--inventory", inv, env=env)
        assert table.returncode == 0 and "maint" in table.stdout and "held" in table.stdout
        res = sshexec("unlock", "maint", "--worker", "w1", "--inventory", inv, "--yes", env=env)
        assert res.returncode == 0 and "lock maint on w1 broken (it was held by run" in res.stderr, res.stderr
        after = json.loads(sshexec("locks", "--inventory", inv, "--json", env=env).stdout)
        assert after["workers"][0]["locks"] == []
        # The holder's next heartbeat (every lock_stale/3 s) notices, and says so while its step runs.
        wait_for_line(holder, "lock maint was broken (sshexec unlock) while run", stderr=True)
        (where / "go").touch()
        code, _, err = finish(holder)
        assert code == 0, err
    finally:
        if holder.poll() is None:
            holder.kill()


class Terminal:
    """`sshexec ARGS...` on a pseudo-terminal of its own (so it may ask), read as it goes."""

    def __init__(self, *args, env):
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "sshexec", *map(str, args)], stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
        os.close(slave)
        self.seen = ""

    def wait_for(self, text: str, limit: float = 60) -> None:
        import select

        end = time.monotonic() + limit
        while text not in self.seen:
            ready, _, _ = select.select([self.master], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError(f"{text!r} never appeared; the terminal shows {self.seen!r}")
            try:
                self.seen += os.read(self.master, 4096).decode(errors="replace")
            except OSError:  # the program ended and closed the terminal
                raise AssertionError(f"{text!r} never appeared; the terminal shows {self.seen!r}") from None

    def answer(self, line: str) -> int:
        os.write(self.master, line.encode() + b"\n")
        code = self.proc.wait(timeout=60)
        try:
            while chunk := os.read(self.master, 4096):
                self.seen += chunk.decode(errors="replace")
        except OSError:
            pass
        os.close(self.master)
        return code


def test_unlock_of_an_empty_lock_breaks_it_only_if_it_is_still_empty(lab_env, tmp_path):
    """The person confirms breaking a lock that showed no owner; a run takes it before the "y"."""
    inv = lab_inventory(tmp_path, lab_env, workers=("w1",))
    env = {**operator(tmp_path, "op"), "COLUMNS": "200"}
    lock = f"{node_dir(lab_env, 'w1')}/locks/empty-{uuid.uuid4().hex[:6]}"
    name = lock.rsplit("/", 1)[1]
    as_deploy = ("exec", "-u", "deploy", f"{lab_env.name}-w1", "sh", "-c")
    docker(*as_deploy, f"mkdir -p {lock}")  # a TAKE that died between mkdir and its owner record
    try:
        term = Terminal("unlock", name, "--worker", "w1", "--inventory", inv, env=env)
        term.wait_for(f"Break lock {name} on w1? [y/N]")
        assert "held by nobody (an empty lock)" in term.seen
        docker(*as_deploy, f"echo 'r-meanwhile 1 60 1 2 other@host' >{lock}/owner")  # a run took it meanwhile
        code = term.answer("y")
        assert code == 2 and "changed hands meanwhile: now held by run r-meanwhile" in term.seen, term.seen
        assert "nothing was broken" in term.seen
        assert worker_exec(lab_env, "w1", "cat", f"{lock}/owner").startswith("r-meanwhile ")
    finally:
        docker(*as_deploy, f"rm -rf {lock}", check=False)


def test_max_steps_one_never_runs_two_containers_on_a_worker(lab_env, tmp_path):
    inv = lab_inventory(tmp_path, lab_env, max_steps=1)
    beats = {w: node_dir(lab_env, w) for w in ("w1", "w2")}
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "any", "steps": [step("s", lab_env.image_ref("tools"), TIMED.format(body="sleep 2"), target="any")]})
    seen = {w: [] for w in beats}
    stop = threading.Event()

    def sample():
        # Each worker's daemon, asked through the worker itself: its step containers (label sshexec.beat).
        while not stop.is_set():
            for w, beat in beats.items():
                out = docker("exec", "-u", "deploy", f"{lab_env.name}-{w}", "docker", "ps", "-q", "--filter", f"label=sshexec.beat={beat}", check=False).stdout
                seen[w].append(len(out.split()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        procs = [start("run", rb, "--inventory", inv, "--json", env=operator(tmp_path, f"op{i}")) for i in range(4)]
        results = [finish(p) for p in procs]
    finally:
        stop.set()
        sampler.join(timeout=60)
    for code, data, err in results:
        assert code == 0 and data["status"] == "succeeded", err
    assert all(seen[w] for w in beats) and max(max(seen[w]) for w in beats) == 1, seen  # sampled while they ran, never two
    assert sum(n for w in beats for n in seen[w]) > 0  # the sampler did see the containers
    by_worker: dict[str, list] = {}
    for _, data, _ in results:
        (s,) = data["steps"]
        by_worker.setdefault(s["worker"], []).append(intervals(data, s["worker"]))
    assert set(by_worker) == {"w1", "w2"}  # target: any went where a slot was free
    for w, spans in by_worker.items():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (w, spans)


def test_check_shows_the_slots_in_use(lab_env, tmp_path):
    inv = lab_inventory(tmp_path, lab_env, workers=("w1",), max_steps=2)
    env = operator(tmp_path, "op")
    # The step holds its slot until the test has looked (a file in its directory, bounded), not for a fixed time.
    hold = 'echo "running in $PWD"; end=$(($(date +%s) + 120)); while [ ! -e go ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done; [ -e go ]'
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "busy", "steps": [step("s", lab_env.image_ref("busybox"), hold, syntax="sh")]})
    proc = start("run", rb, "--inventory", inv, env=env)
    try:
        where = Path(wait_for_line(proc, "| running in ")[-1].split("| running in ", 1)[1].strip())
        res = sshexec("check", "--inventory", inv, "--json", env=env)
        (w,) = json.loads(res.stdout)["workers"]
        assert w["slots"] == {"used": 1, "max": 2} and w["node"] == "w1"
        assert "1/2" in sshexec("check", "--inventory", inv, "--wide", env=env).stdout
        (where / "go").touch()
        assert finish(proc)[0] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    (w,) = json.loads(sshexec("check", "--inventory", inv, "--json", env=env).stdout)["workers"]
    assert w["slots"] == {"used": 0, "max": 2}


def test_gc_removes_what_a_dead_run_left_and_never_a_live_runs(lab_env, tmp_path):
    inv = lab_inventory(tmp_path, lab_env, workers=("w1",))
    env = operator(tmp_path, "op")
    root, beat = str(lab_env.work_root("w1")), node_dir(lab_env, "w1")
    # The live run holds on until the test has seen gc leave it alone (a file in its directory, bounded), then ends well.
    hold = 'echo "running in $PWD"; end=$(($(date +%s) + 120)); while [ ! -e go ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done; [ -e go ] && echo done'
    live_rb = write_runbook(tmp_path / "live.yaml", {"name": "live", "steps": [step("s", lab_env.image_ref("busybox"), hold, syntax="sh")]})
    live = start("run", live_rb, "--inventory", inv, env=env)
    dead = f"20200101-000000-{uuid.uuid4().hex[:6]}"
    prepull = f"prepull-{uuid.uuid4().hex[:12]}"
    orphan = f"sx-gc-orphan-{dead}"
    try:
        where = Path(wait_for_line(live, "| running in ")[-1].split("| running in ", 1)[1].strip())
        live_id = history(env)[0]["id"]
        # What a run killed with its worker's GO (not just its operator) leaves: a container, a stale
        # heartbeat, a step directory; and a prepull's credentials from an hour ago.
        # On w1's own Docker daemon (each lab worker has one).
        worker_docker(lab_env, "w1", "run", "-d", "--name", orphan, "--label", f"sshexec.run={dead}", "--label", f"sshexec.beat={beat}", lab_env.image_ref("busybox"), "sleep", "300")
        docker("exec", "-u", "deploy", f"{lab_env.name}-w1", "sh", "-c", (
            f"mkdir -p {root}/runs/{dead}/w1/s/files {root}/runs/{prepull}/docker-config {beat}/live"
            f" && echo '{{}}' > {root}/runs/{prepull}/docker-config/config.json"
            f" && echo '1000 60 1 2 gone@host' > {beat}/live/{dead} && touch -d '1 hour ago' {root}/runs/{prepull}"
        ))  # fmt: skip
        planted = {("container", orphan), ("run-dir", dead), ("run-dir", prepull), ("heartbeat", dead)}

        def found(res) -> dict:
            items = json.loads(res.stdout)["workers"][0]["items"]
            assert not [i for i in items if live_id in i["what"] + i["note"]], items  # nothing of the live run
            return {(i["kind"], i["what"].rsplit("/", 1)[-1]): i for i in items}

        dry = found(sshexec("gc", "--inventory", inv, "--dry-run", "--json", env=env))
        assert planted <= set(dry) and {dry[k]["action"] for k in planted} == {"would remove"}, dry
        assert "registry credentials inside" in dry[("run-dir", prepull)]["note"]
        assert worker_docker(lab_env, "w1", "ps", "-aq", "--filter", f"name={orphan}").stdout.strip()

        res = sshexec("gc", "--inventory", inv, "--json", env=env)
        assert res.returncode == 0, res.stderr
        done = found(res)
        assert planted <= set(done) and {done[k]["action"] for k in planted} == {"removed"}, done
        assert worker_docker(lab_env, "w1", "ps", "-aq", "--filter", f"name={orphan}").stdout.strip() == ""
        left = worker_exec(lab_env, "w1", "ls", "-A", f"{root}/runs")
        assert dead not in left and prepull not in left
        # The live run: untouched, and it finishes well.
        assert live_id in left and worker_docker(lab_env, "w1", "ps", "-q", "--filter", f"label=sshexec.run={live_id}").stdout.strip()
        (where / "go").touch()
        code, _, err = finish(live)
        assert code == 0, err  # 1 had it never seen the file: its directory gone
    finally:
        worker_docker(lab_env, "w1", "rm", "-f", orphan, check=False)
        if live.poll() is None:
            live.kill()


def _build(lab, tag: str) -> None:
    """An image of its own (its own id) from the lab's tools image: no new layer, a label."""
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=f"FROM {lab.image_ref('tools')}\nLABEL sshexec.test={tag}\n".encode(),
                   env={**os.environ, "DOCKER_BUILDKIT": "0"}, check=True, capture_output=True, timeout=300)  # fmt: skip


def _push(lab, ref: str) -> None:
    cfg = Path(f"/tmp/sshexec-test-docker-{uuid.uuid4().hex[:6]}")
    cfg.mkdir(mode=0o700)
    try:
        subprocess.run(["docker", "--config", str(cfg), "login", "-u", "sshexec", "--password-stdin", lab.registry_address], input=lab.registry_password().encode(), check=True, capture_output=True)
        subprocess.run(["docker", "--config", str(cfg), "push", ref], check=True, capture_output=True, timeout=600)
    finally:
        subprocess.run(["rm", "-rf", str(cfg)])


def test_gc_images_removes_only_sshexecs_least_recently_used(lab_env, tmp_path):
    tag = uuid.uuid4().hex[:8]
    old, recent = (f"{lab_env.registry_address}/sshexec/gc-{n}:{tag}" for n in ("old", "recent"))
    theirs = f"sx-gc-theirs:{tag}"
    try:
        for ref in (old, recent):
            _build(lab_env, ref)
            _push(lab_env, ref)
            docker("rmi", ref)  # gone from the daemon: the prepull below really pulls it
        _build(lab_env, theirs)  # "someone else" pulled this one: sshexec has no record of it
        # A worker of its own, whose work_root is a small tmpfs: the free space gc measures stays put.
        with extra_worker(lab_env, tmpfs={"/srv/gc": "size=64m,mode=1777"}) as xw:
            inv = inventory_file(tmp_path, lab_env, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["linux"], "work_root": "/srv/gc"}], known_hosts=xw.host_keys())
            for ref in (old, recent):
                res = sshexec("prepull", ref, "--feed", "lab", "--inventory", inv, "--json")
                assert res.returncode == 0, res.stderr
            old_id = docker("image", "inspect", "--format", "{{.Id}}", old).stdout.strip().removeprefix("sha256:")
            docker("exec", "-u", "deploy", xw.id, "sh", "-c", f"touch -d '100 days ago' /srv/gc/coord/{xw.name}/images/{old_id}.used")

            dry = json.loads(sshexec("gc", "--inventory", inv, "--images", "--keep-free", "1P", "--dry-run", "--json").stdout)
            (report,) = dry["workers"]
            assert report["free_path"] == "/srv/gc"
            images = [i for i in report["items"] if i["kind"] == "image"]
            assert [i["what"] for i in images] == [old, recent]  # least recently used first; never theirs
            assert "last used 100 days ago" in images[0]["note"]

            size = int(docker("image", "inspect", "--format", "{{.Size}}", old).stdout)
            keep_free = report["free_bytes"] + size // 2  # old alone frees enough
            res = sshexec("gc", "--inventory", inv, "--images", "--keep-free", str(keep_free), "--json")
            assert res.returncode == 0, res.stderr
            removed = [i["what"] for i in json.loads(res.stdout)["workers"][0]["items"] if i["kind"] == "image"]
            assert removed == [old]
            assert docker("image", "inspect", old, check=False).returncode != 0
            assert docker("image", "inspect", recent, check=False).returncode == 0
            assert docker("image", "inspect", theirs, check=False).returncode == 0
    finally:
        docker("rmi", "-f", old, recent, theirs, check=False)
