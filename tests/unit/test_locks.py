"""The pure parts of coordination: taking a lock on many workers in one global order, staleness,
records, slots, image selection, sizes, and the bad input that must exit 2."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from labkit import REPO

from sshexec.errors import Cancelled, InputError, LockBusy, NoFreeSlot, UnreachableError
from sshexec.ops import gc
from sshexec.worker.coord import Owner, Record, age, beat_arg, is_stale, parse_beat, parse_lock_owner, parse_slot_owner
from sshexec.worker.locks import Holding, TakeReply, acquire, parse_take
from sshexec.worker.slots import SlotWait, no_free_slot


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Fleet:
    """Workers on nodes; each node's lock holder; take/release behave as TAKE/RELEASE do."""

    def __init__(self, nodes: dict[str, str], holders: dict[str, str] | None = None):
        self.node_of = nodes
        self.holders = dict(holders or {})
        self.log: list[tuple] = []
        self.lock = threading.Lock()
        self.fail: set[str] = set()
        self.on_take = None

    def workers(self, *names):
        return [SimpleNamespace(name=n) for n in names]

    def take(self, run):
        def one(w):
            with self.lock:
                if self.on_take:
                    self.on_take(run, w.name)
                self.log.append(("take", run, w.name))
                if w.name in self.fail:
                    raise UnreachableError(w.name, "unreachable")
                n = self.node_of[w.name]
                holder = self.holders.get(n)
                if holder in (None, run):
                    self.holders[n] = run
                    return TakeReply(w.name, n, 100, taken=("L",))
                owner = Record(holder, "alice@laptop", 42, 50, 90, 60)
                return TakeReply(w.name, n, 100, held=(Holding("L", owner, Record(holder, since=95, stale=60), 100),))

        return one

    def release(self, run):
        def back(ws):
            with self.lock:
                for w in ws:
                    self.log.append(("release", run, w.name))
                    if self.holders.get(self.node_of[w.name]) == run:
                        del self.holders[self.node_of[w.name]]

        return back

    def held_by(self, run) -> set[str]:
        return {n for n, h in self.holders.items() if h == run}


def test_free_everywhere_takes_every_worker_in_one_round():
    f = Fleet({"w1": "a", "w2": "b", "w3": "c"})
    got = acquire("L", f.workers("w3", "w1", "w2"), f.take("R"), f.release("R"), wait=0)
    assert sorted(got.nodes) == ["a", "b", "c"] and f.held_by("R") == {"a", "b", "c"}
    assert [c[0] for c in f.log] == ["take"] * 3


def test_busy_keeps_what_is_below_in_the_order_gives_back_what_is_above_and_waits():
    f = Fleet({"w1": "a", "w2": "b", "w3": "c"}, {"b": "X"})
    clock = Clock()
    waits = []

    def on_wait(w, holding):
        waits.append((w.name, holding.owner.run, sorted(f.held_by("R"))))
        clock.t += 1
        if len(waits) == 3:
            f.holders.pop("b")  # X is done

    got = acquire("L", f.workers("w3", "w2", "w1"), f.take("R"), f.release("R"), wait=10, on_wait=on_wait, clock=clock, poll=0)
    assert sorted(got.nodes) == ["a", "b", "c"] and f.held_by("R") == {"a", "b", "c"}
    # While waiting for b, R held a (below b) and not c (above it): no two runs can wait for each other.
    assert waits == [("w2", "X", ["a"])] * 3
    assert ("release", "R", "w3") in f.log and f.log[-1] == ("take", "R", "w3")


def test_no_wait_fails_at_once_naming_the_holder_and_keeps_nothing():
    f = Fleet({"w1": "a", "w2": "b"}, {"b": "X"})
    with pytest.raises(LockBusy) as e:
        acquire("L", f.workers("w1", "w2"), f.take("R"), f.release("R"), wait=0)
    assert e.value.worker == "w2" and e.value.lock == "L" and "run X (alice@laptop, pid 42)" in e.value.message
    assert "--lock-wait" in e.value.hint and "sshexec unlock L --worker w2" in e.value.hint
    assert e.value.exit_code == 3 and f.held_by("R") == set()


def test_the_wait_is_bounded():
    f = Fleet({"w1": "a"}, {"a": "X"})
    clock = Clock()

    def on_wait(w, holding):
        clock.t += 1

    with pytest.raises(LockBusy, match="after waiting 5s"):
        acquire("L", f.workers("w1"), f.take("R"), f.release("R"), wait=5, on_wait=on_wait, clock=clock, poll=0)
    assert len([c for c in f.log if c[0] == "take"]) == 6 and f.held_by("R") == set()


def test_an_unreachable_worker_fails_the_lock_everywhere():
    f = Fleet({"w1": "a", "w2": "b"})
    f.fail.add("w2")
    with pytest.raises(UnreachableError):
        acquire("L", f.workers("w1", "w2"), f.take("R"), f.release("R"), wait=30)
    assert f.held_by("R") == set()


def test_two_workers_on_one_machine_share_its_lock():
    f = Fleet({"w1": "a", "w1-alias": "a"})
    got = acquire("L", f.workers("w1", "w1-alias"), f.take("R"), f.release("R"), wait=0)
    assert list(got.nodes) == ["a"]


def test_cancel_while_waiting_gives_everything_back():
    f = Fleet({"w1": "a", "w2": "b"}, {"b": "X"})
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        acquire("L", f.workers("w1", "w2"), f.take("R"), f.release("R"), wait=60, cancel=cancel, on_wait=lambda w, h: cancel.set())
    assert f.held_by("R") == set()


def test_two_runs_listing_the_workers_in_opposite_orders_do_not_deadlock():
    f = Fleet({"w1": "a", "w2": "b", "w3": "c"})
    order = {"R1": ("w1", "w2", "w3"), "R2": ("w3", "w2", "w1")}
    done = {}

    def run(r):
        for _ in range(20):
            got = acquire("L", f.workers(*order[r]), f.take(r), f.release(r), wait=60, poll=0.001)
            assert f.held_by(r) == {"a", "b", "c"}  # all of it, the other run none
            f.release(r)([SimpleNamespace(name=n) for n in order[r]])
        done[r] = sorted(got.nodes)

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)  # a guard against a hang, not a speed target
    assert done == {"R1": ["a", "b", "c"], "R2": ["a", "b", "c"]}


# -- records and staleness --------------------------------------------------------------------


@pytest.mark.parametrize("beat, stale, now, dead", [(100, 60, 160, False), (100, 60, 161, True), (None, 60, 0, True), (100, None, 100, True)])
def test_staleness(beat, stale, now, dead):
    assert is_stale(beat, stale, now) is dead


def test_records_read_back():
    b = parse_beat("R", "1700000000 60 1699999000 4242 alice@laptop")
    assert (b.since, b.stale, b.start, b.pid, b.operator) == (1700000000, 60, 1699999000, 4242, "alice@laptop")
    assert parse_beat("R", "") is None and parse_beat("R", "garbage") is None
    lock = parse_lock_owner("R 1700000001 60 1699999000 4242 alice@laptop")
    assert (lock.run, lock.since, lock.stale, lock.pid) == ("R", 1700000001, 60, 4242)
    slot = parse_slot_owner("R 777 1700000002 1699999000 4242 alice@laptop")
    assert (slot.run, slot.gopid, slot.since, slot.pid) == ("R", 777, 1700000002, 4242)
    assert lock.describe(1700000061).startswith("run R (alice@laptop, pid 4242) since ") and lock.describe(1700000061).endswith("(60s ago)")
    assert [age(s) for s in (5, 119, 120, 7260, 200000)] == ["5s", "119s", "2m", "2h01m", "2d"]


def test_the_owner_and_gos_argument():
    o = Owner("alice@laptop", 42, 1700000000)
    assert beat_arg(2.5, None, o) == "3 0 1700000000 42 alice@laptop" and beat_arg(60, 4, o) == "60 4 1700000000 42 alice@laptop"
    here = Owner.here()
    assert "@" in here.operator and " " not in here.operator and here.pid > 0


def test_parse_take():
    text = "node n1\nnow 100\ntaken a\nmine b\ntook c|X 50 5 1 2 o@h|60 5 1 2 o@h\nheld d|Y 90 60 1 3 p@q|95 60 1 3 p@q\n"
    r = parse_take("w1", text)
    assert (r.node, r.now, r.taken) == ("n1", 100, ("a", "b", "c"))
    assert r.took_over[0].owner.run == "X" and r.took_over[0].stale
    assert r.held[0].owner.run == "Y" and not r.held[0].stale and not r.ok


# -- slots --------------------------------------------------------------------------------------


def test_no_free_slot_names_the_runs():
    e = no_free_slot("w1", "2 0:R1 1:R2")
    assert e.holders == ("R1", "R2") and "all 2 (max_steps)" in e.message and e.exit_code == 3


def test_slot_wait_is_bounded_by_the_steps_timeout_and_cancellable():
    clock, lines, cancel = Clock(), [], threading.Event()
    w = SlotWait(10, cancel, lines.append, clock=clock)
    assert not w.expired()
    cancel.set()
    with pytest.raises(Cancelled):
        w.pause("w1")
    assert lines == ["waiting for a free slot on w1 (max_steps)"]
    clock.t = 10
    assert w.expired() and "waited 10s" in w.give_up(NoFreeSlot("w1", "no free slot")).message


# -- images and sizes ---------------------------------------------------------------------------


def img(i, used, size=100, tags=None, refs=None):
    tags = tags if tags is not None else (f"reg/{i}:1",)
    return gc.Image(i, used, size, tuple(tags), tuple(refs if refs is not None else tags))


def test_images_go_least_recently_used_first_until_enough_is_free():
    images = [img("new", 300), img("old", 100), img("mid", 200), img("theirs", 50, refs=()), img("busy", 10), img("shared", 20, tags=("reg/s:1", "x/s:1"), refs=("reg/s:1",))]
    pick = gc.select_images(images, {"sha256:busy"}, free=1000, policy=gc.ImagePolicy(keep_free=1150), now=400)
    assert [i.id for i in pick] == ["old", "mid"]  # 1000 + 100 + 100 >= 1150
    assert gc.select_images(images, set(), free=5000, policy=gc.ImagePolicy(keep_free=1000), now=400) == []
    every = gc.select_images(images, {"sha256:busy"}, free=0, policy=gc.ImagePolicy(keep_free=10**12), now=400)
    assert [i.id for i in every] == ["old", "mid", "new"]  # never someone else's, a shared one, or one in use
    days = gc.select_images(images, set(), free=0, policy=gc.ImagePolicy(older_than=2), now=100 + 3 * 86400)
    assert [i.id for i in days] == ["busy", "old", "mid", "new"]


def test_parse_images():
    text = "free|1024|/var/lib/docker\ninuse|sha256:aa\nimage|aa|100|5000|reg/a:1|reg/a:1,\ngone|bb\n"
    images, in_use, free, gone = gc.parse_images(text)
    assert images == [gc.Image("aa", 100, 5000, ("reg/a:1",), ("reg/a:1",))] and in_use == {"sha256:aa"}
    assert free == (1024 * 1024, "/var/lib/docker") and gone == ["bb"]


@pytest.mark.parametrize("text, size", [("100", 100), ("1k", 1024), ("20G", 20 << 30), ("1.5GiB", 3 << 29), ("512 MB", 512 << 20), ("2T", 2 << 40)])
def test_parse_size(text, size):
    assert gc.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-5G", "5X", "1e3"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="is not a size"):
        gc.parse_size(text)


@pytest.mark.parametrize(
    "images, keep_free, older_than, error",
    [
        (False, "1G", None, "go with --images"),
        (True, None, None, "exactly one of"),
        (True, "1G", "3", "exactly one of"),
        (True, "lots", None, "is not a size"),
        (True, None, "-1", "more than 0 days"),
        (True, None, "soon", "number of days"),
    ],
)
def test_gc_options(images, keep_free, older_than, error):
    with pytest.raises(InputError, match=error) as e:
        gc.check_policy(images, keep_free, older_than)
    assert e.value.exit_code == 2


def test_gc_policy():
    assert gc.check_policy(False, None, None) is None
    assert gc.check_policy(True, "20G", None) == gc.ImagePolicy(keep_free=20 << 30)
    assert gc.check_policy(True, None, "7") == gc.ImagePolicy(older_than=7.0)


# -- bad input exits 2 ---------------------------------------------------------------------------


def write_inventory(tmp_path, extra: str, name: str = "inv.yaml") -> Path:
    p = tmp_path / name
    p.write_text(f"defaults:\n  user: deploy\nworkers:\n  - name: w1\n    host: 127.0.0.1\n    pools: [linux]\n{extra}")
    return p


def test_max_steps_zero_is_bad_input_with_its_line(tmp_path):
    from sshexec.config.inventory import load_inventory

    with pytest.raises(InputError) as e:
        load_inventory(write_inventory(tmp_path, "    max_steps: 0\n"))
    assert (e.value.line, e.value.field, e.value.exit_code) == (7, "workers[w1].max_steps", 2)
    assert "leave it out for no limit" in e.value.message
    inv = load_inventory(write_inventory(tmp_path, "    max_steps: 2\n    lock_stale: 15\n"))
    assert (inv.workers[0].max_steps, inv.workers[0].lock_stale) == (2, 15)
    inv = load_inventory(write_inventory(tmp_path, ""))
    assert (inv.workers[0].max_steps, inv.workers[0].lock_stale) == (None, 60.0)


@pytest.mark.parametrize("where", ["defaults", "worker"])
def test_a_lock_stale_below_15_seconds_is_refused_with_exit_2(tmp_path, where):
    """A holder beats every lock_stale/3 s, each beat waiting up to 5 s: below 15 s, one slow round
    trip would make a healthy run's locks look dead to the next run."""
    p = tmp_path / "inv.yaml"
    if where == "defaults":
        p.write_text("defaults:\n  user: deploy\n  lock_stale: 3\nworkers:\n  - name: w1\n    host: 127.0.0.1\n    pools: [linux]\n")
        line, field = 3, "defaults.lock_stale"
    else:
        p = write_inventory(tmp_path, "    lock_stale: 14.5\n")
        line, field = 7, "workers[w1].lock_stale"
    res = sx_process("check", "--inventory", str(p))
    assert res.returncode == 2, res.stderr
    assert f"{p}:{line} {field}: lock_stale must be at least 15 seconds" in res.stderr, res.stderr
    assert "every lock_stale/3 seconds" in res.stderr and "(default 60)" in res.stderr
    assert "Traceback" not in res.stderr


def test_one_hung_worker_never_delays_another_workers_heartbeat(monkeypatch):
    """Each worker is beaten on its own schedule: w-hung's beat never returns, w-ok's keep coming."""
    from sshexec.worker import heartbeat as hb

    hung, release = threading.Event(), threading.Event()
    beats: dict[str, int] = {"w-ok": 0, "w-hung": 0}
    three = threading.Event()

    def fake_beat(conn, run_id, owner, *, mode, holding, timeout):
        beats[conn.worker.name] += 1
        if conn.worker.name == "w-hung":
            hung.set()
            release.wait(60)  # a worker that stopped answering (bounded: the test ends it)
        elif beats["w-ok"] >= 3:
            three.set()
        return []

    monkeypatch.setattr(hb, "beat", fake_beat)
    conns = [SimpleNamespace(worker=SimpleNamespace(name=n), is_open=True) for n in ("w-hung", "w-ok")]
    h = hb.Heartbeat("R", Owner.here(), lambda: [(c, ()) for c in conns], 0.5).start()
    try:
        assert hung.wait(60), "the hung worker was never beaten"  # hang guards, not timings
        assert three.wait(60), f"w-ok was beaten {beats['w-ok']} time(s) while w-hung hung"
        assert beats["w-hung"] == 1  # still inside its first beat
    finally:
        release.set()
        h.stop()


RUNBOOK = "name: rb\n{top}steps:\n  - name: s\n    pool: linux\n{step}    container: {{image: busybox}}\n    script: {{syntax: sh, inline: 'true'}}\n"


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden", "-x", "", "x" * 65, "a b"])
@pytest.mark.parametrize("where", ["runbook", "step"])
def test_bad_lock_names_are_bad_input_with_file_line_field(tmp_path, name, where):
    from sshexec.config.runbook import load_runbook

    top, step = (f"lock: '{name}'\n", "") if where == "runbook" else ("", f"    lock: '{name}'\n")
    p = tmp_path / "rb.yaml"
    p.write_text(RUNBOOK.format(top=top, step=step))
    with pytest.raises(InputError) as e:
        load_runbook(p)
    assert e.value.exit_code == 2 and e.value.file == str(p)
    assert (e.value.line, e.value.field) == ((2, "lock") if where == "runbook" else (5, "steps[s].lock"))
    if "/" in name:
        assert "'/' would make it a path" in e.value.message


def test_locks_are_read_from_the_runbook(tmp_path):
    from sshexec.config.runbook import load_runbook

    p = tmp_path / "rb.yaml"
    p.write_text(RUNBOOK.format(top="lock: deploy.prod-1\n", step="    lock: db_migrate\n"))
    rb = load_runbook(p)
    assert rb.lock == "deploy.prod-1" and rb.steps[0].lock == "db_migrate"


def sx_process(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sshexec", *args], capture_output=True, text=True, cwd=REPO, timeout=60, stdin=subprocess.DEVNULL, **kw)


def test_bad_input_exits_2_before_any_worker_is_contacted(tmp_path):
    """The real program: a negative --lock-wait, max_steps: 0, a lock name with '/'. (The worker
    127.0.0.1:22 is never contacted: each is refused first.)"""
    inv = write_inventory(tmp_path, "")
    rb = tmp_path / "rb.yaml"
    rb.write_text(RUNBOOK.format(top="lock: deploy\n", step=""))
    for argv in (["--lock-wait", "-1"], ["--lock-wait=-0.5"], ["--lock-wait", "soon"]):
        p = sx_process("run", str(rb), "--inventory", str(inv), *argv)
        assert p.returncode == 2 and "--lock-wait must be" in p.stderr, (argv, p.stderr)
    zero = write_inventory(tmp_path, "    max_steps: 0\n", name="zero.yaml")
    p = sx_process("run", str(rb), "--inventory", str(zero))
    assert p.returncode == 2 and f"{zero}:7 workers[w1].max_steps: max_steps must be between 1 and 10000, not 0" in p.stderr, p.stderr
    rb.write_text(RUNBOOK.format(top="lock: team/deploy\n", step=""))
    p = sx_process("run", str(rb), "--inventory", str(inv))
    assert p.returncode == 2 and f"{rb}:2 lock: bad lock name 'team/deploy'" in p.stderr, p.stderr


def test_unlock_without_a_terminal_needs_yes(tmp_path):
    inv = write_inventory(tmp_path, "")
    p = sx_process("unlock", "deploy", "--worker", "w1", "--inventory", str(inv))
    assert p.returncode == 2 and "--yes" in p.stderr
    p = sx_process("unlock", "a/b", "--worker", "w1", "--inventory", str(inv), "--yes")
    assert p.returncode == 2 and "bad lock name" in p.stderr
    p = sx_process("unlock", "deploy", "--inventory", str(inv), "--yes")
    assert p.returncode == 2 and "--worker" in p.stderr


def test_gc_bad_options_exit_2(tmp_path):
    inv = write_inventory(tmp_path, "")
    p = sx_process("gc", "--inventory", str(inv), "--images")
    assert p.returncode == 2 and "exactly one of --keep-free SIZE or --older-than DAYS" in p.stderr
    p = sx_process("gc", "--inventory", str(inv), "--images", "--keep-free", "lots")
    assert p.returncode == 2 and "is not a size" in p.stderr
