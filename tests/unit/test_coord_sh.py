"""The worker side of coordination (coord.py, locks.py, heartbeat.py, held.py, gc.py), run by real
shells on a temporary work_root, with a fake docker that records its calls."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from labkit import SCRIPT_SHELLS, fake_docker_bin, require_programs

from sshexec.ops import gc
from sshexec.worker import heartbeat, held, locks, pull
from sshexec.worker.coord import GO_SH, NODE_SH, is_stale
from sshexec.worker.scriptlet import Scriptlet

SHELLS = SCRIPT_SHELLS


@pytest.fixture(autouse=True, scope="module")
def _shells_installed():
    require_programs("dash", "bash", "busybox")

FAKE_DOCKER = """#!/bin/sh
{ printf '%s ' "$@"; echo; } >> "$LOG"
case $1 in
  ps) [ -n "$FAKE_PS" ] && printf '%s\\n' "$FAKE_PS" ;;
  image) [ "$2" = inspect ] && case $FAKE_IMAGES in *"$5"*) printf '%s\\n' "$FAKE_TAGS" ;; *) exit 1 ;; esac ;;
esac
exit 0
"""


@pytest.fixture
def env(tmp_path):
    bindir = fake_docker_bin(tmp_path, FAKE_DOCKER)
    root = tmp_path / "work"
    root.mkdir()
    return {"PATH": f"{bindir}:/usr/bin:/bin", "LOG": str(tmp_path / "docker.log"), "HOME": str(tmp_path), "root": root, "docker": str(bindir / "docker")}


def sh(scriptlet: Scriptlet, *args: str, env: dict, shell=("sh",), check_rc=None) -> subprocess.CompletedProcess:
    argv = scriptlet.argv([env["docker"]], *args)
    run_env = {k: v for k, v in env.items() if k not in ("root", "docker")}
    p = subprocess.run([*shell, *argv[1:]], capture_output=True, text=True, timeout=30, env=run_env)
    if check_rc is not None:
        assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
    return p


def node(env) -> str:
    return sh(Scriptlet("node", "root=/x" + NODE_SH + 'printf %s "$node"'), env=env).stdout


def coord_dir(env) -> Path:
    return env["root"] / "coord" / node(env)


def go(body: str, env: dict, shell=("sh",), *, run="r1", slots=0, stale=60) -> subprocess.CompletedProcess:
    """GO's coordination functions, then `body`, as GO runs them."""
    text = 'root=$1 run=$2 exe=abc beat=$3\nR=$root/runs/$run W=$root/runs/$run/w1\n' + GO_SH + body
    return sh(Scriptlet("t", text), str(env["root"]), run, f"{stale} {slots} 100 42 op@host", env=env, shell=shell)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def now() -> int:
    return int(time.time())


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- GO: heartbeat, slots, reaping ------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_go_writes_the_heartbeat_and_drops_it_when_nothing_stays(env, shell):
    p = go('co_enter\ncat "$C/live/$run"\nco_leave\n[ -e "$C/live/$run" ] && echo kept || echo dropped\n', env, shell)
    assert p.returncode == 0, p.stderr
    beat, result = p.stdout.splitlines()
    t, rest = beat.split(" ", 1)
    assert abs(int(t) - now()) < 60 and rest == "60 100 42 op@host"
    assert result == "dropped"
    assert (coord_dir(env) / "used" / "executor-abc").exists()  # the executor's last use
    assert p.stderr == ""  # GO's stderr carries only its state lines


@pytest.mark.parametrize("keep", ["run-dir", "lock"])
def test_go_keeps_the_heartbeat_while_something_of_the_run_stays(env, keep):
    c = coord_dir(env)
    if keep == "run-dir":
        (env["root"] / "runs" / "r1" / "w1" / "s").mkdir(parents=True)
    else:
        write(c / "locks" / "deploy" / "owner", f"r1 {now()} 60 100 42 op@host\n")
    p = go('co_enter\nco_leave\n[ -e "$C/live/$run" ] && echo kept || echo dropped\n', env)
    assert p.stdout.strip() == "kept", p.stderr


def test_go_takes_a_free_slot_reclaims_a_dead_ones_and_refuses_when_all_run(env):
    c = coord_dir(env)
    write(c / "slots" / "0" / "owner", f"other {os.getpid()} {now()} 1 2 a@b\n")  # a live GO: this test
    write(c / "slots" / "1" / "owner", f"gone {dead_pid()} {now()} 1 2 a@b\n")
    p = go('co_enter\nco_take_slot; echo "rc=$? slot=$co_slot"\ncat "$C/slots/$co_slot/owner"\nco_leave\nls "$C/slots"\n', env, slots=2)
    lines = p.stdout.splitlines()
    assert lines[0] == "rc=0 slot=1", p.stderr
    assert lines[1].split()[0] == "r1" and lines[1].split()[3:] == ["100", "42", "op@host"]
    assert lines[2:] == ["0"]  # its slot is free again after the container; the live one untouched
    p = go('co_enter\nco_take_slot; echo "rc=$? busy=$co_busy"\n', env, slots=1)
    assert p.stdout.strip() == "rc=1 busy= 0:other"


def test_go_sweeps_the_containers_of_runs_whose_heartbeat_went_stale(env):
    c = coord_dir(env)
    write(c / "live" / "dead", "1000 60 1 2 a@b\n")
    write(c / "live" / "fresh", f"{now()} 60 1 2 a@b\n")
    write(c / "live" / "half", "")  # being written: judged next time
    go("co_enter\n", {**env, "FAKE_PS": "c1"})
    log = Path(env["LOG"])
    for _ in range(200):  # the sweep runs in the background: wait for it (bounded)
        if log.exists() and "rm -f" in log.read_text():
            break
        time.sleep(0.05)
    calls = log.read_text().splitlines()
    assert calls[0] == f"ps -aq --filter label=sshexec.run=dead --filter label=sshexec.beat={c} "
    assert calls[1:] == ["rm -f c1 "]  # the dead run's container; nothing of the others
    assert sorted(p.name for p in (c / "live").iterdir()) == ["fresh", "half", "r1"]


def test_go_sweeps_nothing_when_every_run_lives(env):
    write(coord_dir(env) / "live" / "fresh", f"{now()} 60 1 2 a@b\n")
    write(coord_dir(env) / "live" / "late", f"{now() - 90} 60 1 2 a@b\n")  # a refresh late by 30 s is not death
    go("co_enter\n", env)
    assert not Path(env["LOG"]).exists()


# -- locks -------------------------------------------------------------------------------------


def take(env, run: str, *names: str, rc=0):
    p = sh(locks.TAKE, str(env["root"]), run, "5 100 42 op@host", *names, env=env, check_rc=rc)
    return locks.parse_take("w1", p.stdout)


def test_take_is_all_or_none_and_mine_again(env):
    r = take(env, "A", "deploy", "db")
    assert r.ok and r.taken == ("deploy", "db") and r.node == node(env)
    assert take(env, "A", "deploy").taken == ("deploy",)  # its own lock: taken already
    r = take(env, "B", "other", "deploy", rc=3)
    assert not r.ok and [h.lock for h in r.held] == ["deploy"] and r.held[0].owner.run == "A"
    assert not (coord_dir(env) / "locks" / "other").exists()  # what B took here was given back
    owner = (coord_dir(env) / "locks" / "deploy" / "owner").read_text().split()
    assert owner[0] == "A" and owner[2:] == ["5", "100", "42", "op@host"]


@pytest.mark.parametrize(
    "beat, taken_over",
    [("fresh", False), ("stale", True), ("gone", True), ("unreadable", False)],
)
def test_a_lock_is_taken_over_only_when_its_holders_heartbeat_is_stale_or_gone(env, beat, taken_over):
    take(env, "A", "deploy")
    live = coord_dir(env) / "live" / "A"
    if beat == "stale":
        live.write_text(f"{now() - 6} 5 100 42 op@host\n")
    elif beat == "gone":
        live.unlink()
    elif beat == "unreadable":
        live.write_text("garbage\n")
    r = take(env, "B", "deploy", rc=0 if taken_over else 3)
    assert r.ok is taken_over
    if taken_over:
        assert r.took_over[0].owner.run == "A" and r.took_over[0].stale
        assert (coord_dir(env) / "locks" / "deploy" / "owner").read_text().startswith("B ")


@pytest.mark.parametrize("age, stale", [(0, 5), (5, 5), (6, 5), (100, 60), (61, 60), (3, 1)])
def test_the_worker_and_sshexec_judge_staleness_alike(env, age, stale):
    take(env, "A", "deploy")
    holder_beat = now() - age
    (coord_dir(env) / "live" / "A").write_text(f"{holder_beat} {stale} 100 42 op@host\n")
    p = sh(locks.TAKE, str(env["root"]), "B", "5 1 1 x@y", "deploy", env=env)
    reply = locks.parse_take("w1", p.stdout)
    assert reply.ok is is_stale(holder_beat, stale, reply.now)


# A heartbeat caught while it is written (an older sshexec wrote it in place) or cut short: no
# judgement may call its run dead. Partial records that today's arithmetic would take for an
# old beat (a number alone, a beat with its lock_stale cut) are the dangerous ones.
HALF_WRITTEN = {"empty": "", "number-alone": "17", "stale-cut": "1000 6", "no-operator": "1000 60 100 42"}


@pytest.mark.parametrize("record", HALF_WRITTEN, ids=str)
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_half_written_heartbeat_is_unknown_never_dead(env, shell, record):
    """TAKE, GO's sweep, gc and LIST all read it: none takes the lock, reaps or removes anything."""
    text = HALF_WRITTEN[record]
    take(env, "A", "deploy")
    c = coord_dir(env)
    (c / "live" / "A").write_text(text)
    write(env["root"] / "runs" / "A" / "w1" / "s" / "script", "x")  # A's step directory

    p = sh(locks.TAKE, str(env["root"]), "B", "5 1 1 x@y", "deploy", env=env, shell=shell)
    reply = locks.parse_take("w1", p.stdout)
    assert p.returncode == 3 and not reply.ok and not reply.took_over, p.stdout
    (h,) = reply.held
    assert h.owner.run == "A" and h.beat_unknown and not h.stale and "unreadable" in h.describe()
    assert (c / "locks" / "deploy" / "owner").read_text().startswith("A ")

    swept = go('co_enter\necho "dead:$co_dead"\n', env, shell, run="C")
    assert swept.stdout.strip() == "dead:", swept.stdout + swept.stderr  # GO's sweep judged nobody dead
    gone = sh(gc.SWEEP_DEAD, str(env["root"]), "remove", "cur", "30", "10", "60", env=env, shell=shell, check_rc=0).stdout
    assert gc.parse_sweep("w1", gone).items == [], gone
    assert (c / "live" / "A").read_text() == text and (env["root"] / "runs" / "A").exists()

    from sshexec.config.inventory import Worker

    listed = held.parse_list(Worker("w1", "h", 22, "u", None, Path("/kh"), ("docker",), "/w", 5.0), sh(held.LIST, str(env["root"]), env=env, shell=shell, check_rc=0).stdout)
    (lock,) = listed.locks
    assert lock.beat_unknown and not lock.stale
    assert {r.run: r.since for r in listed.runs}["A"] is None  # listed, with no age to show
    assert listed.to_dict()["locks"][0]["stale"] is False


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_go_replaces_the_heartbeat_in_one_step(env, shell):
    """A reader beside a GO that writes the heartbeat again and again never finds it empty or partial."""
    import threading

    c = coord_dir(env)
    go("co_enter\n", env, shell)  # the first one: the file exists from now on
    live = c / "live" / "r1"
    done = threading.Event()
    seen: list[str] = []

    def read():
        while not done.is_set():
            seen.append(live.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        p = go('i=0\nwhile [ "$i" -lt 300 ]; do co_enter; i=$((i + 1)); done\n', env, shell)
    finally:
        done.set()
        reader.join(30)
    assert p.returncode == 0, p.stderr
    bad = [s for s in seen if len(s.split()) != 5 or not s.endswith("\n")]
    assert len(seen) > 100 and bad == [], f"{len(bad)} of {len(seen)} reads found {bad[:3]!r}"
    assert [f.name for f in (c / "live").iterdir()] == ["r1"]  # no temporary file left


def test_release_gives_back_only_the_runs_own_locks(env):
    take(env, "A", "a1", "a2")
    take(env, "B", "b1")
    out = sh(locks.RELEASE, str(env["root"]), "A", "names", "a1", "b1", env=env, check_rc=0).stdout
    assert out.split() == ["released", "a1"]
    assert sorted(p.name for p in (coord_dir(env) / "locks").iterdir()) == ["a2", "b1"]
    sh(locks.RELEASE, str(env["root"]), "A", "all", env=env, check_rc=0)
    assert sorted(p.name for p in (coord_dir(env) / "locks").iterdir()) == ["b1"]
    assert not (coord_dir(env) / "live" / "A").exists() and (coord_dir(env) / "live" / "B").exists()


def test_break_only_what_was_confirmed(env):
    take(env, "A", "deploy")
    assert sh(held.BREAK, str(env["root"]), "deploy", "B", env=env, check_rc=3).stdout.startswith("changed A ")
    assert sh(held.BREAK, str(env["root"]), "deploy", "A", env=env, check_rc=0).stdout.startswith("broken A ")
    assert sh(held.BREAK, str(env["root"]), "deploy", "", env=env, check_rc=4).stdout.strip() == "free"
    assert sh(held.BREAK, str(env["root"]), "../x", "", env=env).returncode == 2  # never a path


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_an_empty_lock_is_broken_only_while_it_is_still_empty(env, shell):
    """`sshexec unlock` confirmed "nobody (an empty lock)": if a run took it meanwhile, it stays that run's."""
    locks_dir = coord_dir(env) / "locks"
    (locks_dir / "deploy").mkdir(parents=True)  # a TAKE that died between mkdir and its owner record
    assert sh(held.BREAK, str(env["root"]), "deploy", "", env=env, shell=shell, check_rc=0).stdout.strip() == "broken"
    assert not (locks_dir / "deploy").exists()
    take(env, "A", "deploy")  # the lock was empty when listed; run A took it before the person said yes
    p = sh(held.BREAK, str(env["root"]), "deploy", "", env=env, shell=shell, check_rc=3)
    assert p.stdout.startswith("changed A ")
    assert (locks_dir / "deploy" / "owner").read_text().startswith("A ")
    for whoever in ("-", "*"):  # no word means "whoever holds it"
        assert sh(held.BREAK, str(env["root"]), "deploy", whoever, env=env, shell=shell, check_rc=3).stdout.startswith("changed A ")
    assert (locks_dir / "deploy" / "owner").read_text().startswith("A ")


def test_list_shows_locks_slots_and_runs(env):
    from sshexec.config.inventory import Worker

    take(env, "A", "deploy")
    c = coord_dir(env)
    write(c / "slots" / "0" / "owner", f"R {os.getpid()} {now()} 100 7 op@host\n")
    write(c / "slots" / "1" / "owner", f"Q {dead_pid()} {now()} 100 7 op@host\n")
    out = sh(held.LIST, str(env["root"]), env=env, check_rc=0).stdout
    h = held.parse_list(Worker("w1", "h", 22, "u", None, Path("/kh"), ("docker",), "/w", 5.0, max_steps=2), out)
    assert [x.lock for x in h.locks] == ["deploy"] and h.locks[0].owner.run == "A" and not h.locks[0].stale
    assert [(s.index, s.owner.run, s.alive) for s in h.slots] == [("0", "R", True), ("1", "Q", False)]
    assert h.slots_used == 1 and [r.run for r in h.runs] == ["A"]
    assert h.to_dict()["locks"][0]["holder"]["operator"] == "op@host"


def test_a_refreshed_heartbeat_says_what_was_lost(env):
    root = str(env["root"])
    assert sh(heartbeat.BEAT, root, "A", "5 1 2 a@b", "refresh", env=env, check_rc=0).stdout == ""
    assert not (coord_dir(env) / "live" / "A").exists()  # nothing of A here: nothing to keep alive
    sh(heartbeat.BEAT, root, "A", "5 1 2 a@b", "create", env=env, check_rc=0)
    take(env, "A", "deploy")
    (coord_dir(env) / "live" / "A").unlink()  # judged dead meanwhile...
    take(env, "B", "deploy")  # ...and its lock taken over
    out = sh(heartbeat.BEAT, root, "A", "5 1 2 a@b", "refresh", "deploy", env=env, check_rc=0).stdout
    assert out.splitlines()[0] == "gone" and out.splitlines()[1].startswith("lost deploy B ")


@pytest.mark.parametrize("name", ["../etc", "../../../etc", ".hidden", "a/b", ""])
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_lock_names_never_become_paths_on_the_worker(env, shell, name):
    """TAKE and BREAK refuse the name (exit 2) before touching anything; RELEASE skips it. Checked where
    each name would really land: under work_root/coord/<node>/locks/, so `../etc` is coord/<node>/etc."""
    root = env["root"]
    assert sh(locks.TAKE, str(root), "A", "5 1 1 x@y", name, env=env, shell=shell).returncode == 2
    assert [p for p in root.rglob("*")] == []  # nothing created: not even coord/<node>/
    # Planted where the name points, owned by run A: neither BREAK nor RELEASE may remove it.
    landing = coord_dir(env) / "locks" / name if name else coord_dir(env) / "locks" / "x"
    write(landing / "owner", "A 1 5 1 1 x@y\n")

    def tree():  # what is under work_root, but the node's .mutex (RELEASE may create it: it is no path of a name)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".mutex")

    before = tree()
    assert sh(held.BREAK, str(root), name, "A", env=env, shell=shell).returncode == 2
    assert sh(locks.RELEASE, str(root), "A", "names", name, env=env, shell=shell, check_rc=0).stdout == ""
    assert tree() == before


# -- gc ------------------------------------------------------------------------------------------


def age_path(path: Path, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(path, (t, t))


def test_gc_removes_what_dead_runs_left_and_nothing_of_live_ones(env):
    root = env["root"]
    c = coord_dir(env)
    dead, alive, young, old = (f"20240101-00000{i}-abcdef" for i in range(4))
    write(c / "live" / dead, "1000 60 1 2 a@b\n")
    write(c / "live" / alive, f"{now()} 60 1 2 a@b\n")
    write(c / "live" / f".{dead}.4242", "1000 60 1 2 a@b\n")  # a write interrupted before its rename, long ago
    age_path(c / "live" / f".{dead}.4242", 1)
    write(c / "live" / f".{alive}.4243", "")  # one being written now
    write(root / "runs" / dead / "docker-config-1" / "config.json", "{}")
    write(root / "runs" / alive / "s" / "script", "x")
    write(root / "runs" / young / "s" / "script", "x")  # no heartbeat, but new: perhaps an older sshexec's
    write(root / "runs" / old / "s" / "script", "x")
    age_path(root / "runs" / old, 1)
    write(root / "runs" / "w1" / "x", "x")  # not named like a run: not gc's to judge
    age_path(root / "runs" / "w1", 1)
    write(root / ".prepull-abc" / "config.json", "{}")
    age_path(root / ".prepull-abc", 1)
    for h, days in (("cur", 100), ("old", 40), ("used", 40)):
        write(root / "executor" / h / "run.sh", "")
        age_path(root / "executor" / h / "run.sh", days)
    write(c / "used" / "executor-used", "")
    env = {**env, "FAKE_PS": f"c1 {dead} sshexec-dead-s-w1\nc2 {alive} sshexec-alive-s-w1"}
    args = (str(root),)
    listed = sh(gc.SWEEP_DEAD, *args, "list", "cur", "30", "10", "60", env=env, check_rc=0).stdout
    report = gc.parse_sweep("w1", listed)
    got = {(i.kind, Path(i.what).name if "/" in i.what else i.what) for i in report.items}
    assert got == {
        ("container", "sshexec-dead-s-w1"), ("run-dir", dead), ("run-dir", old), ("credentials", ".prepull-abc"),
        ("heartbeat", dead), ("heartbeat", f".{dead}.4242"), ("executor", "old"),
    }  # fmt: skip
    assert {i.action for i in report.items} == {"would remove"} and (root / "runs" / dead).exists()
    assert "registry credentials" in next(i.note for i in report.items if i.what.endswith(f"/{dead}"))
    Path(env["LOG"]).unlink()
    removed = gc.parse_sweep("w1", sh(gc.SWEEP_DEAD, *args, "remove", "cur", "30", "10", "60", env=env, check_rc=0).stdout)
    assert {i.action for i in removed.items} == {"removed"}
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted([alive, young, "w1"])
    assert sorted(p.name for p in (root / "executor").iterdir()) == ["cur", "used"]
    assert sorted(p.name for p in (c / "live").iterdir()) == sorted([alive, f".{alive}.4243"])
    assert "rm -f c1 " in Path(env["LOG"]).read_text() and "c2" not in Path(env["LOG"]).read_text().split("rm -f", 1)[1]


def test_gc_records_pulls_and_removes_only_images_all_of_whose_tags_it_pulled(env):
    root = str(env["root"])
    sh(pull.RECORD, root, "aa11", "reg/app:1", env=env, check_rc=0)
    sh(pull.RECORD, root, "aa11", "reg/app:1", env=env, check_rc=0)
    sh(pull.RECORD, root, "bb22", "reg/lib:1", env=env, check_rc=0)
    assert (coord_dir(env) / "images" / "aa11").read_text() == "reg/app:1\n"
    assert sh(pull.RECORD, root, "../x", "r", env=env).returncode == 2
    shared = {**env, "FAKE_IMAGES": "sha256:bb22", "FAKE_TAGS": "reg/lib:1 theirs/lib:latest"}
    out = sh(gc.REMOVE_IMAGES, root, "bb22", env=shared, check_rc=0).stdout
    assert out.startswith("kept|bb22|also tagged theirs/lib:latest") and "rmi" not in Path(env["LOG"]).read_text()
    ours = {**env, "FAKE_IMAGES": "sha256:aa11", "FAKE_TAGS": "reg/app:1"}
    assert sh(gc.REMOVE_IMAGES, root, "aa11", env=ours, check_rc=0).stdout.strip() == "removed|aa11"
    assert "rmi reg/app:1 " in Path(env["LOG"]).read_text()  # untagged, never forced (-f)
    assert not (coord_dir(env) / "images" / "aa11").exists()


def test_every_coordination_scriptlet_takes_values_only_as_parameters():
    for s in (locks.TAKE, locks.RELEASE, held.LIST, held.BREAK, heartbeat.BEAT, gc.SWEEP_DEAD, pull.RECORD, gc.IMAGES, gc.REMOVE_IMAGES):
        assert set(re.findall(r"(?<!\{)\{[A-Za-z_]+\}(?!\})", s.text)) <= {"{docker}"}, s.name
        body = s.argv(["docker"], "VALUE")[2]
        p = subprocess.run(["sh", "-n", "-c", body], capture_output=True, timeout=10)
        assert p.returncode == 0, (s.name, p.stderr)
