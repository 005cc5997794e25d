"""A command that runs beside a kept link's commands for as long as the link lives (a watcher, say).

It is started on a session channel of its own and never awaited: whoever started it asks
`stirred()` now and then, which reads what it printed without blocking. The link closes it
(_dial.Link.close), and pool.py keeps a link whose only open channels are its companions'.
What the command does when its channel closes is its own business: it must end then
(a `cat >/dev/null` on its stdin ends when the channel or the connection goes).
"""

from __future__ import annotations

import logging

import paramiko

from ..errors import ConnectionLost, reason

log = logging.getLogger("sshexec")


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
            chan = self._require().open_session(timeout=10)
        except (paramiko.SSHException, EOFError, OSError, ConnectionLost) as exc:
            log.info("%s: a command beside the connection could not start: %s", self.worker.name, reason(exc))
            return None
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            log.info("%s: a command beside the connection could not start: %s", self.worker.name, reason(exc))
            return None
        companion = Companion(chan)
        link.companions.append(companion)
        return companion

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
        return bool(live)
