"""What a Docker daemon per worker shows that one shared daemon hid: caches, pulls, disks and failures are per worker.

Every lab worker has a dockerd of its own (sshexec/lab/workerd.py). Images are
pushed to the lab's registry under a fresh tag per test, so no daemon has them
at first; each daemon is then asked directly (`docker --host`) what it holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from labkit import push_fresh, sshexec, step, worker_docker, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")

LINUX = ("w1", "w2", "w3")


@pytest.fixture
def fresh_image(lab_env):
    """A tag no worker's daemon has yet; removed from every daemon after the test."""
    ref = push_fresh(lab_env)
    yield ref
    for d in lab_env.daemons():
        subprocess.run(["docker", "--host", d.host, "rmi", "-f", ref], capture_output=True)


def has_image(lab, worker: str, ref: str) -> bool:
    return worker_docker(lab, worker, "image", "inspect", ref, check=False).returncode == 0


def run_json(rb, *args, env=None):
    res = sshexec("run", rb, "--json", *args, env=env)
    assert res.stdout.strip().startswith("{"), res.stdout + res.stderr
    return res, json.loads(res.stdout)


def test_if_not_present_pulls_on_each_worker_that_lacks_the_image(lab_env, tmp_path, fresh_image):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "inp", "steps": [step("s", fresh_image, "echo ran", syntax="sh", feed="lab")]})
    first = run_json(rb, "--worker", "w1")[1]
    again = run_json(rb, "--worker", "w1")[1]
    other = run_json(rb, "--worker", "w2")[1]
    assert [d["status"] for d in (first, again, other)] == ["succeeded"] * 3
    assert first["steps"][0]["pulled"] == [fresh_image]
    assert again["steps"][0]["pulled"] == []  # w1's daemon keeps it
    assert other["steps"][0]["pulled"] == [fresh_image]  # w2's daemon never had it: w1's pull did not help
    assert has_image(lab_env, "w1", fresh_image) and has_image(lab_env, "w2", fresh_image)
    assert not has_image(lab_env, "w3", fresh_image)


def pull_events(lab, worker: str, since: int, ref: str) -> list[str]:
    until = str(int(time.time()) + 1)
    out = worker_docker(lab, worker, "events", "--since", str(since), "--until", until,
                        "--filter", "type=image", "--filter", "event=pull", "--format", "{{.Actor.ID}}").stdout  # fmt: skip
    return [line for line in out.split() if line == ref]


def test_one_pull_per_image_per_worker_per_run_counted_on_each_daemon(lab_env, tmp_path, fresh_image):
    since = int(time.time()) - 1
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "once", "steps": [
        step("a", fresh_image, "echo a", syntax="sh", feed="lab", pull="always", target="each"),
        step("b", fresh_image, "echo b", syntax="sh", feed="lab", pull="always", target="each"),
        step("c", fresh_image, "echo c", syntax="sh", feed="lab", pull="always"),
    ]})  # fmt: skip
    res, data = run_json(rb)
    assert res.returncode == 0, res.stderr[-2000:]
    pulled = {(s["step"], s["worker"]): s["pulled"] for s in data["steps"]}
    assert {w for (_, w) in pulled} == set(LINUX)
    for w in LINUX:
        assert pulled[("a", w)] == [fresh_image] and pulled[("b", w)] == []
        # What the daemon itself saw: exactly one pull of the image, whatever the steps asked.
        assert len(pull_events(lab_env, w, since, fresh_image)) == 1, w


def test_prepull_reaches_every_workers_daemon(lab_env, fresh_image):
    res = sshexec("prepull", fresh_image, "--feed", "lab", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    results = {w["worker"]: w for w in json.loads(res.stdout)["workers"]}
    # Every worker in a pool, the one behind the bastion included; never the bastion (a jump host).
    assert set(results) == {*LINUX, "inner1"}
    for name, r in results.items():
        assert r["ok"], r
        local = worker_docker(lab_env, name, "image", "inspect", "--format", "{{.Id}}", fresh_image).stdout.strip()
        assert local == r["image_id"], name


def test_check_reports_free_disk_where_each_daemon_keeps_its_data(lab_env):
    """w3's daemon keeps its data on a small disk of its own: only w3's "docker" free space shows it."""
    d = lab_env.daemon("w3")
    stop_daemon(lab_env, "w3")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m,mode=0711", "tmpfs", str(d.data_root)], check=True)
    try:
        lab_env.up()  # w3's daemon starts on the small disk; the lab pulls its images into it
        subprocess.run(["docker", "restart", f"{lab_env.name}-w3"], check=True, capture_output=True)  # it sees the new mount
        lab_env.up()  # the worker's new port, in the inventory
        res = sshexec("check", "--json")
        data = {w["worker"]: w for w in json.loads(res.stdout)["workers"]}
        w3, w1 = data["w3"], data["w1"]
        assert w3["healthy"] and w3["docker_root"] == str(d.data_root)
        assert w3["docker_free_bytes"] < 400 << 20 < w3["free_bytes"]  # not work_root's disk
        assert w1["docker_free_bytes"] > 1 << 30 and w1["docker_root"] == str(lab_env.daemon("w1").data_root)
        assert any("MiB free in " + str(d.data_root) in warning for warning in w3["warnings"])
        table = sshexec("check", "--worker", "w3", "--wide")
        assert table.returncode == 0 and "docker " in table.stdout and "its Docker daemon's images" in table.stdout
    finally:
        stop_daemon(lab_env, "w3")
        unmount(d.data_root)
        lab_env.up()
        subprocess.run(["docker", "restart", f"{lab_env.name}-w3"], check=True, capture_output=True)
        lab_env.up()


def unmount(path) -> None:
    """umount, asked again while the mount is still busy (the stopped daemon's last files closing, on a loaded machine)."""
    end = time.monotonic() + 60
    while True:
        res = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if res.returncode == 0:
            return
        if "busy" not in res.stderr or time.monotonic() > end:
            raise AssertionError(f"umount {path}: {res.stderr.strip()}")
        time.sleep(0.5)


def stop_daemon(lab, worker: str) -> None:
    """Stop a worker's dockerd by the PID the lab recorded (as `kill PID` would), and wait for it."""
    pid = lab.daemon_pid(worker)
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 60
    while lab.daemon(worker).is_ours(pid) and time.monotonic() < end:
        time.sleep(0.2)
    assert not lab.daemon(worker).is_ours(pid), f"{worker}'s dockerd (pid {pid}) did not stop"


def test_a_stopped_daemon_makes_only_its_worker_unhealthy_and_any_moves_on(lab_env, tmp_path):
    stop_daemon(lab_env, "w1")
    try:
        res = sshexec("check", "--json")
        assert res.returncode == 3
        data = {w["worker"]: w for w in json.loads(res.stdout)["workers"]}
        assert data["w1"]["healthy"] is False and data["w1"]["daemon"] is False
        assert data["w1"]["error"]["error"] == "DaemonDown" and data["w1"]["ssh"] is True
        assert all(w["healthy"] for name, w in data.items() if name != "w1")

        rb = write_runbook(tmp_path / "rb.yaml", {"name": "any", "steps": [step("s", lab_env.image_ref("busybox"), "echo ran on $SSHEXEC_WORKER", syntax="sh")]})
        env = {**os.environ, "SSHEXEC_ANY_ORDER": "inventory"}  # w1 is tried first
        run = sshexec("run", rb, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "w2/s | ran on w2" in run.stdout
        assert "skipping w1" in run.stderr and "Docker daemon is not reachable" in run.stderr
    finally:
        lab_env.up()
    assert sshexec("check", "--worker", "w1").returncode == 0
