"""What a kept connection knows of its worker's images between commands (issue 22): GO's inspect, skipped safely.

In the agent's children a connection outlives its command (ssh/pool.py). GO checks the step's
image with `docker image inspect` (~20 ms: the docker CLI starting) before it runs it. Once a GO
over a kept connection has checked an image, a later GO over the same connection is handed that
check's line as `known`: it inspects nothing, runs every check on that line again, and runs the
image by its ID, exactly what was checked.

What makes the line safe to reuse: a watcher beside the connection (ssh/_companion.py), `docker
events --filter type=image`, started BEFORE the GO whose line is kept (and reaching 5 s back, for
the moment before it subscribes). Before each GO it is read without waiting: any byte from it (any
image event: pull, tag, untag, delete, load, build, or an error) or its end forgets every image of
the connection; an ended watcher is started again by the next GO that inspects. A pull by this
sshexec forgets its image at once. An event not yet read when a GO starts cannot make it run
another image than the one checked: the ID is that image, and a deleted one is "No such image"
(docker run: 125), which forgets every image too.

Only where connections are kept (the agent's children): elsewhere nothing is started or kept.
"""

from __future__ import annotations

import threading
from typing import Sequence

from ..ssh import Connection
from .scriptlet import Scriptlet

# `--since 5s` (the docker CLI's clock) replays what came in the moment before it subscribed. The `cat`
# ends when the channel closes or the connection drops: then the events process is killed, and nothing
# of the watcher is left on the worker.
WATCH = Scriptlet(
    "watch",
    r"""
{docker} events --since 5s --filter type=image --format x &
p=$!
cat >/dev/null
kill "$p" 2>/dev/null
""",
)


class Images:
    """The image lines GO printed over one kept connection for one docker command, valid while `watch` is quiet."""

    def __init__(self, watch):
        self.watch = watch
        self.lines: dict[str, str] = {}
        self.lock = threading.Lock()
        # Counts the forgettings: a GO keeps its line only if none came since it began. An event read by
        # another step's GO meanwhile (steps side by side on one connection) forgets this GO's line too.
        self.generation = 0

    def stirred(self) -> bool:
        """Read the watcher (the lock held): on any event or its end, forget every line."""
        if not self.watch.stirred():
            return False
        self.forget()
        return True

    def forget(self, image: str | None = None) -> None:
        self.generation += 1
        if image is None:
            self.lines.clear()
        else:
            self.lines.pop(image, None)


Ticket = tuple  # (Images, its generation when a GO began): where that GO's line may be kept


def _key(docker: Sequence[str]) -> tuple:
    # Per docker command: `--host` (docker_host) makes another daemon, with other images, over the same login.
    return ("sshexec.worker.images", tuple(docker))


def known(conn: Connection, docker: Sequence[str], image: str) -> tuple[str, Ticket | None]:
    """The line to hand GO as `known` for `image` ("" when it must inspect), and the ticket under which the line
    GO prints now may be kept (None: none is kept). Starts the watcher if none runs: before the GO that inspects."""
    memo = conn.memo()
    if memo is None:
        return "", None
    key = _key(docker)
    held: Images | None = memo.get(key)
    if held is not None:
        with held.lock:
            if held.stirred() and held.watch.ended:
                held.watch.close()
                memo.pop(key, None)
                held = None
            else:
                return held.lines.get(image, ""), (held, held.generation)
    with memo.setdefault("sshexec.worker.facts.lock", threading.Lock()):  # steps side by side on one connection: one watcher
        held = memo.get(key)
        if held is None:
            watch = conn.companion(WATCH.command(docker))
            if watch is None:
                return "", None
            held = memo[key] = Images(watch)
    with held.lock:
        return "", (held, held.generation)


def remember(conn: Connection, docker: Sequence[str], ticket: Ticket | None, image: str, line: str) -> None:
    """Keep the line GO printed for `image`, if the watcher that ran before that GO still runs and nothing was
    forgotten since that GO began."""
    memo = conn.memo()
    if ticket is None or memo is None:
        return
    held, generation = ticket
    if memo.get(_key(docker)) is not held:
        return
    with held.lock:
        if not held.stirred() and held.generation == generation:
            held.lines[image] = line


def forget(conn: Connection, docker: Sequence[str], image: str | None = None) -> None:
    """Forget `image` (None: every image) on this connection: it was pulled, or a GO found it gone."""
    memo = conn.memo()
    held = memo.get(_key(docker)) if memo is not None else None
    if held is not None:
        with held.lock:
            held.forget(image)
