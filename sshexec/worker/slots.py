"""`max_steps`: how many step containers a worker runs at once, whichever operator started them.

GO takes a slot right before `docker run` and frees it when the container is
gone (coord.GO_SH); a slot whose GO process died is free again. When none is
free GO exits E_NOSLOT, keeping the staged bundle: the step waits on that
worker (target: each), or tries the pool's other workers first (target: any),
for at most the step's timeout, with a live line.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..errors import Cancelled, NoFreeSlot

POLL = 1.0  # seconds between two tries for a slot


def no_free_slot(worker: str, said: str) -> NoFreeSlot:
    """GO's "noslot" state, "SLOTS I:RUN I:RUN...", as an error naming the runs that hold the slots."""
    count, *busy = said.split() or ["?"]
    holders = tuple(dict.fromkeys(b.partition(":")[2] for b in busy if b.partition(":")[2]))
    who = f": run {', '.join(holders)}" if holders else ""
    return NoFreeSlot(
        worker,
        f"no free slot: all {count} (max_steps) run a step container{who}",
        holders=holders,
        hint=f"see `sshexec locks --pool POOL`; raise max_steps of {worker} in the inventory if it can take more",
    )


class SlotWait:
    """Waiting for a slot, at most `limit` seconds in all (the step's timeout), `POLL` at a time."""

    def __init__(self, limit: float, cancel: threading.Event, on_wait: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic):
        self.limit, self.cancel, self.on_wait, self.clock = limit, cancel, on_wait, clock
        self.started = clock()

    def expired(self) -> bool:
        return self.clock() - self.started >= self.limit

    def pause(self, where: str) -> None:
        """Wait before the next try (the live line says where); Cancelled on cancel."""
        self.on_wait(f"waiting for a free slot on {where} (max_steps)")
        if self.cancel.wait(min(POLL, max(0.0, self.limit - (self.clock() - self.started)))):
            raise Cancelled("cancelled while waiting for a free slot")

    def give_up(self, busy: NoFreeSlot) -> NoFreeSlot:
        busy.message += f" (waited {self.clock() - self.started:.0f}s, the step's timeout)"
        return busy
