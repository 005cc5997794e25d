"""`lock: NAME`: taken on every worker a run (or a step) may touch, all or none, in one global order.

A lock is a directory, work_root/coord/<node>/locks/NAME (coord.py): `mkdir`
takes it atomically, under the node's flock'd .mutex so that judging a holder
stale and taking over is one step. Its owner record names the run; the run's
heartbeat says whether that run still lives. A run takes its lock on all the
workers at once (one round trip each, in parallel). If some worker's lock is
held, it keeps what it took below that worker in the global order (node
names: the same for every operator), gives back the rest, and waits there,
then takes the others in order. No run ever waits while holding a lock above
the one it waits for, so no two runs can wait for each other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from ..core.fanout import fan_out
from ..errors import Cancelled, LockBusy, WorkerError
from ..ssh import Connection
from .coord import BEAT_READ_SH, ROOT_SH, Owner, Record, is_stale, parse_beat, parse_lock_owner, read_reply, when
from .heartbeat import Heartbeat, beat, record
from .scriptlet import Scriptlet

log = logging.getLogger("sshexec")

POLL = 1.0  # seconds between two looks at a busy lock

MUTEX_SH = r"""
command -v flock >/dev/null 2>&1 || { echo "error flock is not installed on this worker (util-linux, or busybox): locks need it"; exit 99; }
command exec 9>>"$C/.mutex" || exit 101
flock 9 || { echo "error cannot lock $C/.mutex"; exit 99; }
"""

# Take NAME... for run RUN (rec: STALE START PID OPERATOR), all or none on this worker.
# Prints "node", "now", then per name: taken | mine | took NAME|OLD OWNER|ITS LAST BEAT | held NAME|OWNER|BEAT,
# where BEAT is the holder's heartbeat record, "gone", or "unknown" (empty or partial: taken for alive).
# Exit 0: all taken; 3: some held (nothing taken here).
TAKE = Scriptlet(
    "take",
    r"""
root=$1 run=$2 rec=$3; shift 3
""" + ROOT_SH + BEAT_READ_SH + r"""
for name; do case $name in "" | .* | */*) echo "error bad lock name"; exit 2 ;; esac; done
mkdir -p "$C/live" "$C/locks" || exit 101
""" + MUTEX_SH + r"""
now=$(date +%s)
printf '%s %s\n' "$now" "$rec" >"$C/live/.$run.$$" && mv -f "$C/live/.$run.$$" "$C/live/$run" || exit 101
echo "node $node"
echo "now $now"
took= busy=
for name; do
  L=$C/locks/$name
  if mkdir "$L" 2>/dev/null; then
    printf '%s %s %s\n' "$run" "$now" "$rec" >"$L/owner" || exit 101
    took="$took $name"
    echo "taken $name"
    continue
  fi
  o=$(cat "$L/owner" 2>/dev/null)
  o_run=${o%% *}
  if [ -n "$o" ] && [ "$o_run" = "$run" ]; then echo "mine $name"; continue; fi
  # An empty owner under .mutex: a TAKE that died between mkdir and its record. A heartbeat
  # being written (or cut short) is unknown: its run may well be alive, so the lock stays.
  b=gone dead=1
  if [ -n "$o" ]; then
    co_beat "$C/live/$o_run"
    case $? in
      0) b="$co_t $co_s $co_st $co_p $co_op"; [ $((now - co_t)) -gt "$co_s" ] || dead= ;;
      2) b=unknown dead= ;;
    esac
  fi
  if [ -n "$dead" ]; then
    echo "took $name|$o|$b"
    rm -rf "$L" && mkdir "$L" && printf '%s %s %s\n' "$run" "$now" "$rec" >"$L/owner" || exit 101
    took="$took $name"
  else
    echo "held $name|$o|$b"
    busy=1
  fi
done
if [ -n "$busy" ]; then
  for name in $took; do rm -rf "$C/locks/$name"; done
  exit 3
fi
exit 0
""",
)

# Give back NAME... (mode "names"), or every lock of the run and its heartbeat (mode "all").
RELEASE = Scriptlet(
    "release",
    r"""
root=$1 run=$2 mode=$3; shift 3
""" + ROOT_SH + r"""
[ -d "$C" ] || exit 0
if [ -d "$C/locks" ] && command -v flock >/dev/null 2>&1; then command exec 9>>"$C/.mutex" && flock 9; fi
if [ "$mode" = all ]; then
  for d in "$C"/locks/*; do [ -d "$d" ] && set -- "$@" "${d##*/}"; done
fi
for name; do
  case $name in "" | .* | */*) continue ;; esac
  o=$(cat "$C/locks/$name/owner" 2>/dev/null)
  [ "${o%% *}" = "$run" ] && rm -rf "$C/locks/$name" && echo "released $name"
done
[ "$mode" != all ] || rm -f "$C/live/$run"
exit 0
""",
)

@dataclass(frozen=True)
class Holding:
    """A lock as found on a worker: its owner record and that run's heartbeat (None: gone, or unknown)."""

    lock: str
    owner: Record | None
    beat: Record | None
    now: int
    beat_unknown: bool = False  # the heartbeat is there but not whole (being written): its run counts as alive

    @property
    def stale(self) -> bool:
        if self.owner is None:
            return True
        return not self.beat_unknown and is_stale(self.beat.since if self.beat else None, self.beat.stale if self.beat else None, self.now)

    def describe(self) -> str:
        if self.owner is None:
            return "nobody (an empty lock)"
        text = self.owner.describe(self.now)
        if self.beat_unknown:
            return text + ", whose heartbeat is unreadable (being written, or cut short): taken for alive"
        if self.beat is None:
            return text + ", whose heartbeat is gone"
        return text + f", last heartbeat {when(self.beat.since, self.now)}"


def holding(lock: str, fields: list[str], now: int) -> Holding:
    """A lock from a TAKE or LIST line's fields: OWNER, and BEAT (a record, "gone" or "unknown")."""
    owner, beat = (fields + ["", ""])[:2]
    rec = parse_lock_owner(owner)
    if rec is None or beat in ("", "gone"):
        return Holding(lock, rec, None, now)
    found = parse_beat(rec.run, beat)
    return Holding(lock, rec, found, now, beat_unknown=found is None)


@dataclass(frozen=True)
class TakeReply:
    """What TAKE said on one worker."""

    worker: str
    node: str
    now: int
    taken: tuple[str, ...] = ()
    held: tuple[Holding, ...] = ()
    took_over: tuple[Holding, ...] = ()  # stale holders replaced

    @property
    def ok(self) -> bool:
        return not self.held


def parse_take(worker: str, text: str) -> TakeReply:
    node, now, lines = read_reply(text)
    taken: list[str] = []
    held: list[Holding] = []
    took: list[Holding] = []
    for kind, rest in lines:
        if kind in ("taken", "mine"):
            taken.append(rest)
        elif kind in ("took", "held"):
            name, *fields = rest.split("|")
            (took if kind == "took" else held).append(holding(name, fields, now))
            if kind == "took":
                taken.append(name)
    return TakeReply(worker, node, now, tuple(taken), tuple(held), tuple(took))


def take(conn: Connection, run_id: str, owner: Owner, names: Iterable[str]) -> TakeReply:
    """Take `names` on conn's worker for `run_id`, all or none; WorkerError if the worker cannot say."""
    w = conn.worker
    res = conn.run(TAKE.command(w.docker, w.work_root, run_id, record(w.lock_stale, owner), *names), timeout=60)
    if res.exit_code not in (0, 3):
        said = next((line[6:] for line in res.text().splitlines() if line.startswith("error ")), "") or res.tail(3)
        raise WorkerError(w.name, f"could not take a lock in {w.work_root}/coord: {said}", hint="check the worker (sshexec check) and that its work_root is writable")
    reply = parse_take(w.name, res.text())
    if res.exit_code == 3 and not reply.held:
        raise WorkerError(w.name, f"could not read the lock holders in {w.work_root}/coord: {res.tail(3)}")
    return reply


def give_back(conn: Connection, run_id: str, names: Iterable[str] = (), *, everything: bool = False, timeout: float = 30) -> list[str]:
    """Release `names` (or, with everything, every lock of the run and its heartbeat) on conn's worker."""
    w = conn.worker
    mode = "all" if everything else "names"
    res = conn.run(RELEASE.command(w.docker, w.work_root, run_id, mode, *names), timeout=timeout)
    if not res.ok:
        raise WorkerError(w.name, f"could not release the locks of run {run_id}: {res.tail(3)}")
    return [line.split(" ", 1)[1] for line in res.text().splitlines() if line.startswith("released ")]


W = TypeVar("W")


@dataclass
class Acquired:
    """Where a lock is held: node -> the worker it was taken through (one per node)."""

    lock: str
    nodes: dict[str, W] = field(default_factory=dict)
    took_over: list[tuple[W, Holding]] = field(default_factory=list)


def acquire(
    lock: str,
    workers: list[W],
    take: Callable[[W], TakeReply],
    release: Callable[[list[W]], None],
    *,
    wait: float,
    cancel=None,
    on_wait: Callable[[W, Holding], None] | None = None,
    poll: float = POLL,
    clock: Callable[[], float] = time.monotonic,
    parallel: int = 16,
) -> Acquired:
    """Take `lock` on every worker, all or none; wait up to `wait` seconds for held ones.

    `take(w)` asks one worker, `release(ws)` gives back on several. Raises
    LockBusy (naming the holder) past the wait, Cancelled on cancel, or the
    first worker's error; in every case nothing stays held.
    """
    deadline = clock() + wait
    got = Acquired(lock)
    first = fan_out(workers, take, parallel=parallel, cancel=cancel)
    replies: dict[str, TakeReply] = {}
    for w in workers:
        r = first[w.name]
        if isinstance(r, TakeReply):
            replies[w.name] = r
    failed = [first[w.name] for w in workers if w.name not in replies]
    by_node: dict[str, list[W]] = {}
    for w in workers:
        if w.name in replies:
            by_node.setdefault(replies[w.name].node, []).append(w)
    order = sorted(by_node)

    def node_ok(n: str) -> bool:
        return all(replies[w.name].ok for w in by_node[n])

    for n in order:
        if node_ok(n):
            got.nodes[n] = by_node[n][0]
    if failed:
        _give_back(release, got)
        raise failed[0]  # type: ignore[misc]
    busy = [n for n in order if not node_ok(n)]
    _note_takeovers(got, replies, by_node)
    if not busy:
        return got
    k = order.index(busy[0])
    # Keep what is below the first busy node, give back what is above it, then take
    # the rest in order: a run never waits while holding a lock above the one it waits for.
    above = {n: got.nodes.pop(n) for n in order[k + 1 :] if n in got.nodes}
    if above:
        release(list(above.values()))
    try:
        for n in order[k:]:
            w = next((x for x in by_node[n] if not replies[x.name].ok), by_node[n][0]) if n == busy[0] else by_node[n][0]
            reply = replies[w.name] if n == busy[0] else take(w)
            while not reply.ok:
                if clock() >= deadline:
                    raise lock_busy(lock, w.name, reply, wait)
                if on_wait is not None:
                    on_wait(w, reply.held[0])
                if cancel is not None:
                    if cancel.wait(max(0.0, min(poll, deadline - clock()))):
                        raise Cancelled(f"cancelled while waiting for lock {lock}")
                else:
                    time.sleep(max(0.0, min(poll, deadline - clock())))
                reply = take(w)
            got.nodes[n] = w
            got.took_over += [(w, h) for h in reply.took_over]
    except BaseException:
        _give_back(release, got)
        raise
    return got


def _note_takeovers(got: Acquired, replies, by_node) -> None:
    for n, w in got.nodes.items():
        for x in by_node[n]:
            got.took_over += [(x, h) for h in replies[x.name].took_over]


def _give_back(release, got: Acquired) -> None:
    if got.nodes:
        try:
            release(list(got.nodes.values()))
        except Exception as exc:  # noqa: BLE001 - the error being raised matters more; the heartbeat goes stale
            log.warning("could not give back lock %s: %s", got.lock, exc)
        got.nodes.clear()


def lock_busy(lock: str, worker: str, reply: TakeReply, wait: float) -> LockBusy:
    h = reply.held[0]
    waited = f" after waiting {wait:g}s" if wait else ""
    stale = h.beat.stale if h.beat else None
    return LockBusy(
        worker,
        f"lock {lock} is held by {h.describe()}{waited}",
        lock=lock,
        holder=h.describe(),
        hint=(
            f"wait for it with --lock-wait SECONDS; a holder silent for more than {stale or 'its lock_stale'}s is taken over, "
            f"and `sshexec unlock {lock} --worker {worker}` breaks the lock (see `sshexec locks`)"
        ),
    )


class beating:
    """A heartbeat for a short run of one connection (a prepull): written now, refreshed, dropped at the end."""

    def __init__(self, conn: Connection, run_id: str):
        self.conn, self.run_id, self.owner = conn, run_id, Owner.here()
        self.thread: Heartbeat | None = None

    def __enter__(self) -> "beating":
        beat(self.conn, self.run_id, self.owner)
        self.thread = Heartbeat(self.run_id, self.owner, lambda: [(self.conn, ())], self.conn.worker.lock_stale / 3).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.thread is not None:
            self.thread.stop()
        try:
            give_back(self.conn, self.run_id, everything=True)
        except Exception as e:  # noqa: BLE001 - it goes stale by itself; the pull's own result matters more
            log.warning("%s: could not drop the heartbeat of %s: %s", self.conn.worker.name, self.run_id, getattr(e, "message", e))
