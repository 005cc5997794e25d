"""`sshexec locks` and `sshexec unlock`: what is held on a worker, and breaking a lock left by a dead run."""

from __future__ import annotations

from ..config.inventory import Worker
from ..errors import WorkerError
from ..ssh import Connection
from ..worker.coord import Record, parse_lock_owner
from ..worker.held import BREAK, LIST, Held, parse_list


def list_held(worker: Worker, conn: Connection | None = None) -> Held:
    """What is held on `worker` (connecting on its own unless a connection is given)."""
    if conn is None:
        with Connection(worker, retries=1) as own:
            return list_held(worker, own)
    res = conn.run(LIST.command(worker.docker, worker.work_root), timeout=30)
    if not res.ok:
        raise WorkerError(worker.name, f"could not read {worker.work_root}/coord: {res.tail(3)}")
    return parse_list(worker, res.text())


def break_lock(worker: Worker, name: str, expect: str) -> tuple[str, Record | None]:
    """Break lock `name` on `worker` if run `expect` still holds it ("": if it is still empty).

    ("broken", old owner), ("changed", the owner now) or ("free", None).
    """
    with Connection(worker, retries=1) as conn:
        res = conn.run(BREAK.command(worker.docker, worker.work_root, name, expect), timeout=60)
    said, _, owner = res.text().strip().partition(" ")
    if res.exit_code not in (0, 3, 4) or said not in ("broken", "changed", "free"):
        raise WorkerError(worker.name, f"could not break lock {name}: {res.tail(3)}")
    return said, parse_lock_owner(owner)
