"""The agent's kept connections know which images GO checked (issue 22, "per-worker facts: images present"): a warm
step runs no `docker image inspect`, and any image event on the worker (a tag moved to an image with an ENTRYPOINT, to
another image) is seen before the next step: it is checked and run as a first step would be. No watcher outlives its link.

Counted at the worker: w1's `docker` is a shim (in w1's container) that logs each docker command before running it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest
import yaml

from agentkit import own_agent
from labkit import REPO, docker, step, worker_exec, write_runbook

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SSHEXEC_CONNECTION_IDLE", "4")  # short, for the idle close below; the runs come quicker
    yield from own_agent(tmp_path_factory, monkeypatch)


@pytest.fixture
def w1(lab_env, tmp_path):
    """w1 with a logging docker shim, an image tag of this test's own (a copy of busybox), and an inventory that uses both."""
    token = secrets.token_hex(4)
    shim, log, tag = f"/tmp/sxfacts-{token}", f"/tmp/sxfacts-{token}.log", f"127.0.0.1:5999/sxfacts/{token}:1"
    # With the file {shim}.gone, the next `docker run` is given another image ID (one no daemon has): as if the
    # image its connection checked had been deleted in the moment before the run, too late for the watcher.
    text = (f'#!/bin/sh\nprintf "ppid=%s %s\\n" "$PPID" "$*" >>{log}\n'
            f'if [ "$1" = run ] && rm {shim}.gone 2>/dev/null; then\n'
            f'  for a do shift; case $a in sha256:*) a=sha256:{"0" * 64} ;; esac; set -- "$@" "$a"; done\n'
            f'fi\nSXFACTS={token} exec docker "$@"\n')  # fmt: skip
    subprocess.run(["docker", "exec", "-i", f"{lab_env.name}-w1", "sh", "-c", f"cat >{shim} && chmod 755 {shim} && : >{log} && chmod 666 {log}"],
                   input=text, text=True, check=True, timeout=60)  # fmt: skip
    retag(lab_env, "busybox", tag)
    data = yaml.safe_load(lab_env.inventory_path.read_text())
    base = lab_env.inventory_path.parent
    for key in ("identity_file", "known_hosts"):
        data["defaults"][key] = str(base / data["defaults"][key])
    data["workers"] = [{**w, "docker": shim} for w in data["workers"] if w["name"] == "w1"]
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(data))
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "facts", "steps": [step("s", tag, "echo ran as $(id -un)", syntax="sh", pull="never")]})
    yield {"lab": lab_env, "log": log, "tag": tag, "inv": inv, "rb": rb, "shim": shim, "token": token}
    worker_exec(lab_env, "w1", "sh", "-c", f"docker rmi {tag} >/dev/null 2>&1; rm -f {shim} {shim}.gone {log}")


def retag(lab, image: str, tag: str) -> None:
    worker_exec(lab, "w1", "docker", "tag", lab.image_ref(image), tag)


def run(w) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sshexec", "run", str(w["rb"]), "--inventory", str(w["inv"]), "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env=os.environ.copy())  # fmt: skip


def inspects(w) -> int:
    return worker_exec(w["lab"], "w1", "cat", w["log"]).count("image inspect")


def warm(w) -> None:
    """Runs until one ran without inspecting (the second, unless an image event of the last seconds came late): the
    kept connection knows the image. Then one more must inspect nothing either."""
    for _ in range(4):
        before = inspects(w)
        res = run(w)
        assert res.returncode == 0 and "ran as root" in res.stderr, res.stdout + res.stderr
        if inspects(w) == before:
            break
    else:
        raise AssertionError("every warm run inspected the image")
    before = inspects(w)
    res = run(w)
    assert res.returncode == 0 and "ran as root" in res.stderr, res.stdout + res.stderr
    assert inspects(w) == before, "a warm run through the agent inspected an image its connection had checked"


def watchers(w) -> list[str]:
    """This test's `docker events` processes on w1 (their environment names the shim's token): other agents' are not counted."""
    find = f'for p in $(ps -eo pid,args | sed -n "s/^ *\\([0-9]*\\) docker events .*/\\1/p"); do grep -qz "^SXFACTS={w["token"]}$" /proc/$p/environ 2>/dev/null && echo $p; done; true'
    # As deploy: root in the container may not read another user's environment (no CAP_SYS_PTRACE).
    return docker("exec", "-u", "deploy", f"{w['lab'].name}-w1", "sh", "-c", find).stdout.split()


def test_a_warm_run_skips_the_inspect_and_in_process_runs_do_not(w1, agent):
    res = run(w1)
    assert res.returncode == 0, res.stderr
    assert inspects(w1) == 1, "the first run checks the image"
    warm(w1)
    # Without the agent, each command checks the image: what the count above is measured against.
    before = inspects(w1)
    res = subprocess.run([sys.executable, "-m", "sshexec", "run", str(w1["rb"]), "--inventory", str(w1["inv"])], capture_output=True, text=True,
                         cwd=REPO, timeout=120, env={**os.environ, "SSHEXEC_AGENT": "0"})  # fmt: skip
    assert res.returncode == 0 and inspects(w1) == before + 1, res.stderr


def test_a_tag_moved_to_an_image_with_an_entrypoint_is_refused_on_a_warm_connection(w1, agent):
    warm(w1)
    retag(w1["lab"], "entrypoint", w1["tag"])
    res = run(w1)
    assert res.returncode == 3, res.stdout + res.stderr
    (s,) = json.loads(res.stdout)["steps"]
    assert s["error"]["error"] == "ImageRefused" and "ENTRYPOINT" in s["message"] and "ran as" not in res.stderr, s
    # Moved to another plain image: the run uses it, as a first run would.
    retag(w1["lab"], "nonroot", w1["tag"])
    res = run(w1)
    assert res.returncode == 0 and "ran as app" in res.stderr, res.stdout + res.stderr


def test_an_image_removed_under_a_warm_connection_is_not_run_from_memory(w1, agent):
    warm(w1)
    worker_exec(w1["lab"], "w1", "docker", "rmi", w1["tag"])
    res = run(w1)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "not on w1" in json.loads(res.stdout)["steps"][0]["message"], res.stdout


def test_an_image_gone_in_the_moment_before_a_warm_run_is_inspected_again_not_a_failure(w1, agent):
    warm(w1)
    worker_exec(w1["lab"], "w1", "sh", "-c", f"touch {w1['shim']}.gone && chown deploy {w1['shim']}.gone")
    before = inspects(w1)
    res = run(w1)
    assert res.returncode == 0 and "ran as root" in res.stderr, res.stdout + res.stderr
    assert "No such image: sha256:" + "0" * 64 in res.stderr  # the run by the remembered ID failed ...
    assert inspects(w1) == before + 1  # ... and GO checked the image again, then ran it
    assert json.loads(res.stdout)["steps"][0]["status"] == "succeeded"


def test_no_watcher_nor_go_started_ahead_outlives_its_connection(w1, agent):
    warm(w1)
    assert len(watchers(w1)) == 1, "the kept connection has its watcher"
    assert soon(lambda: go_shells(w1)), "and its GO started ahead"
    # The kept connection closes after its idle time (SSHEXEC_CONNECTION_IDLE=4), and what ran beside it ends with it.
    end = time.monotonic() + 30
    while (watchers(w1) or go_shells(w1)) and time.monotonic() < end:
        time.sleep(0.5)
    assert watchers(w1) == [], "a docker events process outlived the idle close of its connection"
    assert not go_shells(w1), "a GO started ahead outlived the idle close of its connection"
    warm(w1)
    assert len(watchers(w1)) == 1
    assert soon(lambda: go_shells(w1))
    agent.stop()
    end = time.monotonic() + 30
    while (watchers(w1) or go_shells(w1)) and time.monotonic() < end:
        time.sleep(0.5)
    assert watchers(w1) == [], "a docker events process outlived `sshexec agent stop`"
    assert not go_shells(w1), "a GO started ahead outlived `sshexec agent stop`"


def test_a_worker_with_one_session_per_connection_runs_warm_steps_through_the_agent(lab_env, tmp_path, agent):
    """sshd's MaxSessions 1: the watcher would hold the only session GO needs. sshd's refusal sheds it (and no other
    starts on that connection): every run succeeds, without the cache."""
    from labkit import extra_worker, inventory_file

    with extra_worker(lab_env, env={"SSHEXEC_SSHD_CONFIG": "MaxSessions 1"}) as xw:
        inv = inventory_file(tmp_path, lab_env, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["one"], "work_root": str(xw.work)}], known_hosts=xw.host_keys())
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "one", "steps": [step("s", lab_env.image_ref("busybox"), "echo ran", syntax="sh", pool="one")]})
        for _ in range(3):
            res = subprocess.run([sys.executable, "-m", "sshexec", "run", str(rb), "--inventory", str(inv)], capture_output=True, text=True, cwd=REPO, timeout=120,
                                 env=os.environ.copy())  # fmt: skip
            assert res.returncode == 0 and "ran" in res.stdout + res.stderr, res.stdout + res.stderr


def go_shells(w) -> set[str]:
    """PIDs of the GO shells on w1 that hold GO as a function (docker.GO_WAITING, started ahead) with this test's
    docker shim in it: waiting for a step, or running one. ([s]: the pattern never matches the finding shell itself.)"""
    shim = w["shim"]
    find = f'for p in /proc/[0-9]*; do tr "\\0" " " <$p/cmdline 2>/dev/null | grep -q "[s]x_go() {{.*{shim}" && echo ${{p#/proc/}}; done; true'
    return set(docker("exec", "-u", "deploy", f"{w['lab'].name}-w1", "sh", "-c", find).stdout.split())


def soon(what, limit: float = 30):
    end = time.monotonic() + limit
    while not (got := what()) and time.monotonic() < end:
        time.sleep(0.2)
    return got


def test_a_warm_step_runs_in_go_started_ahead(w1, agent):
    """Between commands the agent's child starts GO on each kept connection, waiting for its arguments (ssh/_companion.py
    Ahead, docker.GO_WAITING): the next step runs in it (the docker shim's parent is that shell), and another waits
    after it. One killed meanwhile is not a failure: a fresh GO runs the step. (None outlives its connection: the
    test above.)"""
    warm(w1)
    waiting = soon(lambda: go_shells(w1))
    assert waiting, "no GO was started ahead on the kept connection"
    res = run(w1)
    assert res.returncode == 0 and "ran as root" in res.stderr, res.stdout + res.stderr
    ran_in = [line.split()[0].removeprefix("ppid=") for line in worker_exec(w1["lab"], "w1", "cat", w1["log"]).splitlines() if " run " in f" {line} "]
    assert ran_in[-1] in waiting, (ran_in, waiting)
    after = soon(lambda: go_shells(w1) - waiting)
    assert after and not (go_shells(w1) & waiting), "the GO that ran the step waits no more, and another does"
    worker_exec(w1["lab"], "w1", "kill", *after)
    res = run(w1)
    assert res.returncode == 0 and "ran as root" in res.stderr, res.stdout + res.stderr
