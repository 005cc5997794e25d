"""Workers whose work_root is one directory (home directories on NFS): fan-outs work, and each
cleanup touches only its own worker's part.

Two workers, each with its own Docker daemon (lab workers w1's and w2's), mount
the same work_root. Run directories are `runs/<run id>/<worker>/...`; the
executor cache beside them is shared (content-addressed, uploaded atomically).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from labkit import REPO, extra_worker, inventory_file, leftovers, sshexec, step, stop_run, stored_artifact, wait_for_line, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")


class Pairs:
    """Two extra workers sharing one work_root, kept for the module's tests (two containers each time cost seconds):
    made by the first test, and again after a test that left anything of its runs in the work_root (it fails)."""

    def __init__(self, lab, tmp_path_factory):
        self.lab, self.tmp_path_factory = lab, tmp_path_factory
        self.stack: contextlib.ExitStack | None = None
        self.pair = None

    def get(self):
        if self.pair is None:
            shared = self.lab.work_base / f"nfs-{uuid.uuid4().hex[:6]}"
            self.stack = contextlib.ExitStack()
            self.stack.callback(subprocess.run, ["rm", "-rf", str(shared)])  # last: after both workers are gone
            try:
                a = self.stack.enter_context(extra_worker(self.lab, daemon_of="w1", work=shared))
                b = self.stack.enter_context(extra_worker(self.lab, daemon_of="w2", work=shared))
                workers = [{"name": x.name, "host": "127.0.0.1", "port": x.port, "pools": ["nfs"], "work_root": str(shared)} for x in (a, b)]
                inv = inventory_file(self.tmp_path_factory.mktemp("pair"), self.lab, workers, known_hosts=a.host_keys() + b.host_keys())
            except BaseException:
                self.close()
                raise
            self.pair = (inv, shared, sorted((a.name, b.name)))
        return self.pair

    def close(self) -> None:
        stack, self.stack, self.pair = self.stack, None, None
        if stack is not None:
            stack.close()


@pytest.fixture(scope="module")
def pairs(lab, tmp_path_factory):
    kept = Pairs(lab, tmp_path_factory)
    yield kept
    kept.close()


@pytest.fixture
def shared_pair(lab_env, pairs):
    """(inventory, shared work_root, worker names) for two workers sharing one work_root; each test leaves it empty
    of runs (checked after it: a test that does not gets its pair replaced, and fails)."""
    inv, shared, names = pairs.get()
    yield inv, shared, names
    left = run_dirs(shared)
    if left:
        pairs.close()
    assert left == [], f"left in the shared work_root (the pair is replaced): {left}"


def run(rb, inv, *args):
    res = sshexec("run", rb, "--json", "--inventory", inv, *args)
    assert res.stdout.strip().startswith("{"), res.stdout + res.stderr
    return res, json.loads(res.stdout)


def run_dirs(shared: Path) -> list[str]:
    runs = shared / "runs"
    return sorted(str(p.relative_to(shared)) for p in runs.rglob("*")) if runs.exists() else []


def test_target_each_over_a_shared_work_root(lab_env, tmp_path, shared_pair):
    inv, shared, names = shared_pair
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "nfs", "steps": [
        step("fan", lab_env.image_ref("busybox"), """
            echo "on $SSHEXEC_WORKER in $PWD"
            echo "from $SSHEXEC_WORKER" > "made-by-$SSHEXEC_WORKER.txt"
            new_sshexec_artifact "made-by-$SSHEXEC_WORKER.txt"
            set_sshexec_variable Dir "$PWD"
        """, syntax="sh", pool="nfs", target="each"),
        step("again", lab_env.image_ref("busybox"), "echo again on $SSHEXEC_WORKER", syntax="sh", pool="nfs", target="each"),
    ]})  # fmt: skip
    res, data = run(rb, inv)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(s["worker"] for s in data["steps"] if s["step"] == "fan") == names
    for name in names:
        (s,) = [s for s in data["steps"] if s["step"] == "fan" and s["worker"] == name]
        assert [a["name"] for a in s["artifacts"]] == [f"made-by-{name}.txt"]
        assert stored_artifact(data["run_id"], name, f"made-by-{name}.txt") == f"from {name}\n".encode()
        # Each worker's step ran in its own directory of the run.
        assert data["outputs"][f"fan[{name}].Dir"] == f"{shared}/runs/{data['run_id']}/{name}/fan/files"
    assert run_dirs(shared) == []  # nothing of the run is left, the shared parent included
    from sshexec.executor import executor_hash

    assert sorted(os.listdir(shared / "executor")) == [executor_hash()]  # one shared executor, no half-written copy


def test_failure_and_timeout_leave_nothing_in_a_shared_work_root(lab_env, tmp_path, shared_pair):
    inv, shared, names = shared_pair
    failing = write_runbook(tmp_path / "fail.yaml", {"name": "nfs", "steps": [
        step("fail", lab_env.image_ref("tools"), "mkdir -p a/b; touch a/b/c; chmod 500 a/b; exit 3", pool="nfs", target="each"),
    ]})  # fmt: skip
    res, data = run(failing, inv)
    assert res.returncode == 1 and sorted((s["worker"], s["exit_code"]) for s in data["steps"]) == [(n, 3) for n in names]
    assert run_dirs(shared) == []
    slow = write_runbook(tmp_path / "slow.yaml", {"name": "nfs", "steps": [
        step("slow", lab_env.image_ref("tools"), "mkdir -p a/b; touch a/b/c; chmod 500 a/b; sleep 300", pool="nfs", target="each", timeout=3),
    ]})  # fmt: skip
    res, data = run(slow, inv)
    assert res.returncode == 124 and {s["status"] for s in data["steps"]} == {"timed-out"}
    assert run_dirs(shared) == [] and leftovers(lab_env, [data["run_id"]]) == []


def test_one_worker_ends_while_the_other_is_still_inside_its_step(lab_env, tmp_path, shared_pair):
    """Uneven timing over one work_root: A fails at once and cleans up its part while B still runs
    (B waits for a file the test makes only once A's part is gone); B then succeeds, its shipped
    files and its artifact intact."""
    inv, shared, (a, b) = shared_pair
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "data.txt").write_text("shipped to both\n")
    script = f"""
        if [ "$SSHEXEC_WORKER" = {a} ]; then echo "failing at once"; exit 4; fi
        echo "waiting in $PWD"
        end=$(($(date +%s) + 120))
        while [ ! -e go ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done
        [ -e go ] || fail_step "never let go"
        echo "from $SSHEXEC_WORKER: $(cat data.txt)" > made.txt
        new_sshexec_artifact made.txt
        set_sshexec_variable Shipped "$(cat data.txt)"
    """
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "uneven", "steps": [
        step("uneven", lab_env.image_ref("busybox"), script, syntax="sh", pool="nfs", target="each", files="payload"),
    ]})  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb), "--json", "--inventory", str(inv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)  # fmt: skip
    try:
        line = wait_for_line(proc, f"{b}/uneven | waiting in ", stderr=True)[-1]
        where = Path(line.split("| waiting in ", 1)[1].strip())
        run_dir = where.parents[2]  # runs/<run id>/<b>/uneven/files
        end = time.monotonic() + 120
        while (run_dir / a).exists() and time.monotonic() < end:  # A failed, and cleans up its part
            time.sleep(0.1)
        assert not (run_dir / a).exists(), run_dirs(shared)
        assert proc.poll() is None  # B still inside its step
        assert (where / "data.txt").is_file(), run_dirs(shared)  # A's cleanup left B's files alone
        assert (where / "data.txt").read_text() == "shipped to both\n"
        (where / "go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        stop_run(proc)
    data = json.loads(out)
    assert proc.returncode == 1, err.decode()[-3000:]
    by = {s["worker"]: s for s in data["steps"]}
    assert (by[a]["status"], by[a]["exit_code"]) == ("failed", 4)
    assert by[b]["status"] == "succeeded", by[b]
    assert data["outputs"][f"uneven[{b}].Shipped"] == "shipped to both"
    (art,) = by[b]["artifacts"]
    assert stored_artifact(data["run_id"], b, art["name"]) == f"from {b}: shipped to both\n".encode()
    assert run_dirs(shared) == [] and leftovers(lab_env, [data["run_id"]]) == []


def test_ctrl_c_leaves_nothing_in_a_shared_work_root(lab_env, tmp_path, shared_pair):
    inv, shared, names = shared_pair
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "nfs", "steps": [
        step("long", lab_env.image_ref("tools"), "echo started; mkdir -p a/b; touch a/b/c; chmod 500 a/b; sleep 300", pool="nfs", target="each"),
    ]})  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb), "--inventory", str(inv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)  # fmt: skip
    seen: set[str] = set()
    end = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < end and proc.poll() is None:
        line = proc.stdout.readline().decode()
        if "| started" in line:
            seen.add(line.split("/", 1)[0])
    assert seen == set(names), seen
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    run_id = json.loads(sshexec("runs", "--json").stdout)[0]["id"]
    assert run_dirs(shared) == [] and leftovers(lab_env, [run_id]) == []


def test_prepull_on_workers_sharing_a_work_root(lab_env, shared_pair):
    inv, shared, names = shared_pair
    res = sshexec("prepull", lab_env.image_ref("busybox"), "--feed", "lab", "--inventory", inv, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(w["worker"] for w in json.loads(res.stdout)["workers"] if w["ok"]) == names
    assert run_dirs(shared) == []
