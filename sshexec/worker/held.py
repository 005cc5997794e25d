"""What is held on a worker, for `sshexec locks`, `unlock` and `check`: locks, slots, live runs.

Read with one round trip (LIST); a lock is broken (BREAK) only if it still
belongs to the run the person confirmed, under the worker's mutex (coord.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.inventory import Worker
from .coord import BEAT_READ_SH, ROOT_SH, SLOT_ALIVE_SH, Record, parse_beat, parse_slot_owner, read_reply
from .locks import MUTEX_SH, Holding, holding
from .scriptlet import Scriptlet

# Everything held on this worker: "lock NAME|OWNER|ITS RUN'S BEAT", "slot I|OWNER|alive or dead", "live RUN|BEAT";
# a BEAT is the record, "gone" or "unknown" (empty or partial: taken for alive, as TAKE does).
LIST = Scriptlet(
    "locks",
    r"""
root=$1
""" + ROOT_SH + SLOT_ALIVE_SH + BEAT_READ_SH + r"""
echo "node $node"
echo "now $(date +%s)"
beat() {
  co_beat "$1"
  case $? in 0) b="$co_t $co_s $co_st $co_p $co_op" ;; 1) b=gone ;; *) b=unknown ;; esac
}
for d in "$C"/locks/*; do
  [ -d "$d" ] || continue
  o=$(cat "$d/owner" 2>/dev/null)
  b=gone
  [ -z "$o" ] || beat "$C/live/${o%% *}"
  echo "lock ${d##*/}|$o|$b"
done
for d in "$C"/slots/*; do
  [ -d "$d" ] || continue
  if co_alive "$d"; then a=alive; else a=dead; fi
  echo "slot ${d##*/}|$(cat "$d/owner" 2>/dev/null)|$a"
done
for f in "$C"/live/*; do
  [ -f "$f" ] || continue
  beat "$f"
  [ "$b" = gone ] || echo "live ${f##*/}|$b"
done
exit 0
""",
)

# Break lock NAME if its owner is still run EXPECT, or, with EXPECT "", if it is still empty (there
# is no word for "whoever holds it"): "broken OWNER" (0), "changed OWNER" (3), "free" (4).
BREAK = Scriptlet(
    "unlock",
    r"""
root=$1 name=$2 expect=$3
""" + ROOT_SH + r"""
case $name in "" | .* | */*) exit 2 ;; esac
L=$C/locks/$name
[ -d "$L" ] || { echo free; exit 4; }
""" + MUTEX_SH + r"""
[ -d "$L" ] || { echo free; exit 4; }
o=$(cat "$L/owner" 2>/dev/null)
if [ "${o%% *}" != "$expect" ]; then echo "changed $o"; exit 3; fi
rm -rf "$L" || exit 101
echo "broken $o"
exit 0
""",
)


@dataclass(frozen=True)
class Slot:
    index: str
    owner: Record | None
    alive: bool  # its GO process still runs; a dead one is free for the next step


@dataclass(frozen=True)
class Held:
    """One worker's locks, slots and live runs, as its LIST said."""

    worker: str
    node: str = ""
    now: int = 0
    max_steps: int | None = None
    locks: tuple[Holding, ...] = ()
    slots: tuple[Slot, ...] = ()
    runs: tuple[Record, ...] = field(default_factory=tuple)  # heartbeats

    @property
    def slots_used(self) -> int:
        return sum(1 for s in self.slots if s.alive)

    def to_dict(self) -> dict:
        def rec(r: Record | None) -> dict | None:
            if r is None:
                return None
            return {"run": r.run, "operator": r.operator, "pid": r.pid, "since": r.since, "age": self.now - r.since if r.since is not None else None}

        return {
            "worker": self.worker,
            "node": self.node,
            "max_steps": self.max_steps,
            "slots_used": self.slots_used,
            "locks": [
                {"lock": h.lock, "holder": rec(h.owner), "heartbeat_age": self.now - h.beat.since if h.beat and h.beat.since is not None else None,
                 "lock_stale": h.beat.stale if h.beat else None, "stale": h.stale}
                for h in self.locks
            ],  # fmt: skip
            "slots": [{"slot": s.index, "holder": rec(s.owner), "running": s.alive} for s in self.slots],
            "runs": [{"run": r.run, "operator": r.operator, "pid": r.pid, "heartbeat_age": self.now - r.since if r.since is not None else None, "lock_stale": r.stale} for r in self.runs],
        }


def parse_list(worker: Worker, text: str) -> Held:
    node, now, lines = read_reply(text)
    locks: list[Holding] = []
    slots: list[Slot] = []
    runs: list[Record] = []
    for kind, rest in lines:
        if kind == "lock":
            name, *fields = rest.split("|")
            locks.append(holding(name, fields, now))
        elif kind == "slot":
            index, owner, alive = (rest.split("|") + ["", ""])[:3]
            slots.append(Slot(index, parse_slot_owner(owner), alive == "alive"))
        elif kind == "live":
            run, _, beat = rest.partition("|")
            runs.append(parse_beat(run, beat) or Record(run))  # unknown: listed, with no age
    slots.sort(key=lambda s: int(s.index) if s.index.isdigit() else 0)
    return Held(worker.name, node, now, worker.max_steps, tuple(locks), tuple(slots), tuple(runs))
