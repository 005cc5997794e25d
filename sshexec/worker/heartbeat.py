"""A run's heartbeat on the workers it touches: written, refreshed in the background, given back.

GO (docker.py, coord.GO_SH) writes the heartbeat when a step starts and drops
it when the step leaves nothing behind, so a warm step pays no extra round
trip. Whatever else may outlive a step (a lock, a pull's credentials, a big
bundle being uploaded) writes it first with `ensure()`. While the run lives,
`Heartbeat` rewrites it every lock_stale/3 seconds on each worker where it may
be, over the connection the run already has: no round trip is added to a step.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from ..errors import WorkerError
from ..ssh import Connection
from .coord import ROOT_SH, Owner, parse_lock_owner, stale_seconds
from .scriptlet import Scriptlet

log = logging.getLogger("sshexec")

# Write (mode "create") or refresh (mode "refresh": only where one is) the run's
# heartbeat; "gone" if it had been removed (another run judged this one dead),
# and "lost NAME OWNER" for each lock named after it that this run no longer holds.
BEAT = Scriptlet(
    "beat",
    r"""
root=$1 run=$2 rec=$3 mode=$4; shift 4
""" + ROOT_SH + r"""
H=$C/live/$run
if [ ! -f "$H" ]; then
  [ "$mode" = refresh ] && [ $# -eq 0 ] && exit 0
  [ "$mode" = refresh ] && echo gone
  mkdir -p "$C/live" || exit 101
fi
printf '%s %s\n' "$(date +%s)" "$rec" >"$C/live/.$run.$$" && mv -f "$C/live/.$run.$$" "$H" || exit 101
for name; do
  o=$(cat "$C/locks/$name/owner" 2>/dev/null)
  [ "${o%% *}" = "$run" ] || printf 'lost %s %s\n' "$name" "$o"
done
exit 0
""",
)


# Where a heartbeat is refreshed: a connection to a worker, and the locks the run holds there.
Target = tuple[Connection, tuple[str, ...]]


def record(stale: float, owner: Owner) -> str:
    """BEAT's record argument: STALE START PID OPERATOR."""
    return f"{stale_seconds(stale)} {owner.fields}"


def beat(conn: Connection, run_id: str, owner: Owner, *, mode: str = "create", holding: Iterable[str] = (), timeout: float = 30) -> list[tuple[str | None, str]]:
    """Write or refresh the heartbeat on conn's worker.

    What changed behind this run's back: (lock it no longer holds, or None, warning).
    """
    w = conn.worker
    res = conn.run(BEAT.command(w.docker, w.work_root, run_id, record(w.lock_stale, owner), mode, *holding), timeout=timeout)
    if not res.ok:
        raise WorkerError(w.name, f"could not write the heartbeat of run {run_id} in {w.work_root}/coord: {res.tail(3)}", hint="check that work_root is writable (sshexec check)")
    news = []
    for line in res.text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "gone":
            news.append((None, f"{w.name}: the heartbeat of run {run_id} had been removed: another run judged it dead (silent for more than lock_stale)"))
        elif kind == "lost":
            name, _, who = rest.partition(" ")
            holder = parse_lock_owner(who)
            if holder is None:
                news.append((name, f"{w.name}: lock {name} was broken (sshexec unlock) while run {run_id} held it"))
            else:
                news.append((name, f"{w.name}: lock {name} was taken over by {holder.describe()} while run {run_id} could not refresh its heartbeat"))
    return news


class Heartbeat:
    """Refreshes a run's heartbeat every `interval` seconds on each worker `targets()` names.

    `targets()` returns (connection, lock names held there) pairs; a worker
    whose connection is down is skipped (its heartbeat goes stale, as it should).
    A lock found lost is warned about, and `on_lost(worker name, lock)` called.
    Each worker is refreshed by a thread of its own, on its own schedule: a
    worker that hangs (a refresh waits up to max(5, interval) seconds) never
    delays another's heartbeat.
    """

    def __init__(
        self, run_id: str, owner: Owner, targets: Callable[[], list[Target]], interval: float,
        *, on_lost: Callable[[str, str], None] | None = None,
    ):  # fmt: skip
        self.run_id, self.owner, self.targets = run_id, owner, targets
        self.interval = max(0.5, interval)
        self.on_lost = on_lost or (lambda worker, lock: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beaters: dict[str, threading.Thread] = {}  # worker name -> the thread refreshing it

    def start(self) -> "Heartbeat":
        self._thread = threading.Thread(target=self._loop, name=f"sshexec-heartbeat-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing; wait (5 s at most, in all) for refreshes under way to end."""
        self._stop.set()
        end = time.monotonic() + 5
        if self._thread is not None:
            self._thread.join(timeout=5)  # first: it is the one that starts refreshing threads
        for t in list(self._beaters.values()):
            if t.is_alive():
                t.join(timeout=max(0.0, end - time.monotonic()))

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """Make sure every target has its own refreshing thread (a new target is refreshed at once)."""
        for conn, _ in self.targets():
            name = conn.worker.name
            t = self._beaters.get(name)
            if t is None or not t.is_alive():
                t = threading.Thread(target=self._beat, args=(name,), name=f"sshexec-heartbeat-{self.run_id}-{name}", daemon=True)
                self._beaters[name] = t
                t.start()

    def _beat(self, name: str) -> None:
        """One worker's schedule: refresh, wait `interval`, again, while the worker is a target."""
        while not self._stop.is_set():
            target = next(((c, h) for c, h in self.targets() if c.worker.name == name), None)
            if target is None:
                return  # nothing of the run there now; refresh() starts a new thread if that changes
            if target[0].is_open:
                self._one(*target)
            if self._stop.wait(self.interval):
                return

    def _one(self, conn: Connection, holding: tuple[str, ...]) -> None:
        try:
            for lock, news in beat(conn, self.run_id, self.owner, mode="refresh", holding=holding, timeout=max(5.0, self.interval)):
                log.warning("%s", news)
                if lock is not None:
                    self.on_lost(conn.worker.name, lock)
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried next round; a dead worker just goes stale
            log.info("%s: heartbeat not refreshed: %s", conn.worker.name, exc)
