"""Workers whose SSH user's login shell is fish or tcsh: every remote command still works.

sshd runs each command as `$SHELL -c LINE`, with the user's login shell. The
lab's worker image has deploy-fish (/usr/bin/fish) and deploy-tcsh
(/usr/bin/tcsh), both in group docker. One worker container serves both, each
user with a work_root of its own; the pool `shells` holds the two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from labkit import REPO, docker, extra_worker, inventory_file, sshexec, step, stored_artifact, write_runbook

SHELLS = {"fish": ("deploy-fish", 1002, "/usr/bin/fish"), "tcsh": ("deploy-tcsh", 1003, "/usr/bin/tcsh")}


class ShellWorkers:
    def __init__(self, xw, inventory):
        self.xw, self.inventory = xw, inventory

    def env(self) -> dict:
        return {**os.environ, "SSHEXEC_INVENTORY": str(self.inventory)}

    def leftovers(self, run_id: str) -> list[str]:
        found = [f"container {c}" for c in docker("ps", "-aq", "--filter", f"label=sshexec.run={run_id}").stdout.split()]
        for name in SHELLS:
            root = self.xw.work / name
            found += [str(p) for p in root.glob(f"runs/{run_id}")] + [str(p) for p in root.rglob("docker-config*")]
        return found


@pytest.fixture(scope="module")
def shells(lab, tmp_path_factory):
    with extra_worker(lab) as xw:
        workers = []
        for name, (user, uid, shell) in SHELLS.items():
            assert docker("exec", xw.id, "getent", "passwd", user).stdout.strip().endswith(f":{shell}")
            root = xw.work / name
            root.mkdir()
            os.chown(root, uid, uid)
            root.chmod(0o700)
            workers.append({"name": name, "host": "127.0.0.1", "port": xw.port, "user": user, "pools": ["shells"], "work_root": str(root)})
        yield ShellWorkers(xw, inventory_file(tmp_path_factory.mktemp("shells"), lab, workers, known_hosts=xw.host_keys()))


def test_check(lab_env, shells):
    res = sshexec("check", "--json", env=shells.env())
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert {w["worker"]: (w["healthy"], w["work_root"]) for w in data["workers"]} == {
        name: (True, str(shells.xw.work / name)) for name in SHELLS
    }


def test_a_step_with_a_feed_login_files_outputs_and_artifacts(lab_env, shells, tmp_path):
    files = tmp_path / "payload"
    files.mkdir()
    (files / "it's 100% $HOME!.txt").write_text("shipped\n")
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "shells", "steps": [
        step("make", lab_env.image_ref("tools"), """
            echo "hello from $SSHEXEC_WORKER as $(id -u)"
            cat "it's 100% \\$HOME!.txt"
            printf 'made on %s' "$SSHEXEC_WORKER" > out.txt
            new_sshexec_artifact out.txt
            set_sshexec_variable Said "it's \\$HOME! 100% \\\\n"
        """, pool="shells", target="each", pull="always", feed="lab", user="worker", files="payload"),
        step("use", lab_env.image_ref("busybox"), 'echo "read: $(get_sshexec_variable make.Said)"', syntax="sh", pool="shells", target="each"),
    ]})  # fmt: skip
    res = sshexec("run", rb, "--json", env=shells.env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(res.stdout)
    by = {(s["step"], s["worker"]): s for s in data["steps"]}
    for name, (user, uid, _) in SHELLS.items():
        assert f"{name}/make | hello from {name} as {uid}" in res.stderr
        assert f"{name}/make | shipped" in res.stderr
        assert f"{name}/use | read: it's $HOME! 100% \\n" in res.stderr
        assert by[("make", name)]["pulled"] == [lab_env.image_ref("tools")]  # logged in to the feed, pulled
        assert by[("make", name)]["outputs"] == {"Said": "it's $HOME! 100% \\n"}
        (art,) = by[("make", name)]["artifacts"]
        assert stored_artifact(data["run_id"], name, art["name"]) == f"made on {name}".encode()
        assert shells.leftovers(data["run_id"]) == []


def test_prepull(lab_env, shells):
    res = sshexec("prepull", lab_env.image_ref("busybox"), "--feed", "lab", "--pool", "shells", "--json", env=shells.env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(w["worker"] for w in json.loads(res.stdout)["workers"] if w["ok"]) == sorted(SHELLS)


def test_a_timeout_cleans_up(lab_env, shells, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "slow", "steps": [step("slow", lab_env.image_ref("busybox"), "echo started; sleep 300", syntax="sh", pool="shells", target="each", timeout=3)]})
    res = sshexec("run", rb, "--json", env=shells.env())
    assert res.returncode == 124, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert {(s["worker"], s["status"]) for s in data["steps"]} == {(name, "timed-out") for name in SHELLS}
    assert shells.leftovers(data["run_id"]) == []


def test_ctrl_c_cleans_up(lab_env, shells, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "long", "steps": [step("long", lab_env.image_ref("busybox"), "echo started; sleep 300", syntax="sh", pool="shells", target="each")]})
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=shells.env())
    try:
        started, end = set(), time.monotonic() + 120
        while started != set(SHELLS) and time.monotonic() < end and proc.poll() is None:
            line = proc.stdout.readline().decode()
            started |= {name for name in SHELLS if line.startswith(f"{name}/long | started")}
        assert started == set(SHELLS), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else started
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    (rec,) = [r for r in json.loads(sshexec("runs", "--json").stdout) if r["runbook"] == "long"][:1]
    assert rec["status"] == "cancelled"
    assert shells.leftovers(rec["id"]) == []
