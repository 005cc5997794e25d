"""A command that runs beside a kept link's commands for as long as the link lives (a watcher, say).

It is started on a session channel of its own and never awaited: whoever started it asks
`stirred()` now and then, which reads what it printed without blocking. The link closes it
(_dial.Link.close), and pool.py keeps a link whose only open channels are its companions'.
What the command does when its channel closes is its own business: it must end then
(a `cat >/dev/null` on its stdin ends when the channel or the connection goes).

An `Ahead` is the other kind: a command started on a kept link between commands (pool.py), waiting
for its work on stdin, that the next stream of its kind is handed in place of a fresh session
(worker/docker.py's GO_WAITING: a step skips sshd's fork, the login shell and sh).
"""

from __future__ import annotations

import logging

import paramiko

from ..errors import ConnectionLost, RemoteTimeout, reason

log = logging.getLogger("sshexec")

WINDOW_SIZE = 8 * 1024 * 1024  # every session channel's (connection.py's, and those started ahead)
MAX_PACKET = 32 * 1024


class Companion:
    def __init__(self, channel: paramiko.Channel):
        self.channel = channel

    @property
    def ended(self) -> bool:
        """The command ended, or its channel or the connection did."""
        chan = self.channel
        return chan.closed or chan.eof_received or chan.exit_status_ready() or not chan.get_transport().is_active()

    def stirred(self) -> bool:
        """Whether it printed anything (stdout or stderr) since the last call, or ended; reads without blocking."""
        chan = self.channel
        said = False
        try:
            while chan.recv_ready():
                said = bool(chan.recv(65536)) or said
            while chan.recv_stderr_ready():
                said = bool(chan.recv_stderr(65536)) or said
        except (paramiko.SSHException, EOFError, OSError):
            return True
        return said or self.ended

    def close(self) -> None:
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001 - a channel of a dead connection may fail to close in many ways
            pass


class Ahead(Companion):
    """A command started on a session of its own before it is needed (between commands), waiting for its work on
    stdin: the next `stream(..., ready=...)` of its kind over this link is handed it (`take_ahead`) and skips the
    session's start. Its kind (`key`) says which command it is; the link closes it when it closes."""

    def __init__(self, key: str, channel: paramiko.Channel):
        super().__init__(channel)
        self.key = key


def _beside(transport: paramiko.Transport, command: str, who: str) -> paramiko.Channel | None:
    """`command` started on a session channel of its own, not awaited past its start; None (logged) if it could not start."""
    try:
        chan = transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET, timeout=10)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        log.info("%s: a command beside the connection could not start: %s", who, reason(exc))
        return None
    try:
        chan.exec_command(command)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        chan.close()
        log.info("%s: a command beside the connection could not start: %s", who, reason(exc))
        return None
    return chan


def start_ahead(link) -> bool:
    """Start the command a stream over `link` asked for (`ahead_later`), if none of its kind waits already: pool.py
    calls it between commands, for an idle link. Never raises; False when nothing was started."""
    wanted, link.ahead_wanted = link.ahead_wanted, None
    if wanted is None or link.shed:
        return False
    key, command = wanted
    if link.ahead is not None:
        if link.ahead.key == key and not link.ahead.ended:
            return False
        link.ahead.close()
        link.ahead = None
    chan = _beside(link.transport, command, link.route[-1].label if link.route else "a worker")
    if chan is None:
        return False
    link.ahead = Ahead(key, chan)
    return True


class KeptLinkMixin:
    """What a Connection (connection.py) offers the layers above about its link while pool.py keeps it between commands."""

    def memo(self) -> dict | None:
        """A dict that lives with this connection's link while it is kept between commands (pool.py); None where it is not."""
        link = self._link
        return link.memo if link is not None and link.pool_key is not None else None  # pool_key: only a link pool.py may keep

    def companion(self, command: str) -> Companion | None:
        """Start `command` beside this connection's commands, for as long as its kept link lives. Not awaited past
        its start. None where links are not kept, or when it could not start (a companion is never needed)."""
        link = self._link
        if self.memo() is None or link is None or link.shed:
            return None
        link.companions = [c for c in link.companions if not c.ended]
        try:
            transport = self._require()
        except ConnectionLost as exc:
            log.info("%s: a command beside the connection could not start: %s", self.worker.name, reason(exc))
            return None
        chan = _beside(transport, command, self.worker.name)
        if chan is None:
            return None
        companion = Companion(chan)
        link.companions.append(companion)
        return companion

    def ahead_later(self, key: str, command: str) -> None:
        """Have `command` started ahead between commands (pool.py), for the next stream of kind `key` over this kept
        link to be handed (`take_ahead`). Nothing where links are not kept. `command` must wait for its work on stdin,
        and end when its channel closes before any comes."""
        link = self._link
        if self.memo() is not None and link is not None and not link.shed:
            link.ahead_wanted = (key, command)

    def take_ahead(self, key: str) -> Ahead | None:
        """The command of kind `key` started ahead on this link, still waiting (it is then this caller's alone), or None."""
        link = self._link
        ahead = link.ahead if link is not None else None
        if ahead is None or ahead.key != key:
            return None
        link.ahead = None
        if ahead.ended:
            ahead.close()
            return None
        return ahead

    def _admit(self, ready: Ahead, timeout: float) -> paramiko.Channel:
        """`ready`'s channel, counted by this connection's channel gate like one it opened (connection.session)."""
        if not self.gate.acquire(timeout):
            ready.close()
            raise RemoteTimeout(self.worker.name, f"no SSH channel became free within {timeout:g}s (the worker's sshd limits sessions per connection: MaxSessions)")
        self.gate.admitted(ready.channel, closed=lambda: ready.channel.closed)
        return ready.channel

    def _shed_companions(self) -> bool:
        """Close the link's companions, and start none on it again: sshd refused a channel (MaxSessions), and a
        companion may hold the one a command needs. True if one was open (ask again at once)."""
        link = self._link
        if link is None:
            return False
        link.shed = True
        live = [c for c in link.companions if not c.ended]
        for c in link.companions:
            c.close()
        link.companions = []
        ahead, link.ahead, link.ahead_wanted = link.ahead, None, None
        if ahead is not None:
            if not ahead.ended:
                live.append(ahead)
            ahead.close()
        return bool(live)
