"""What a remote command did (`Result`), and how `Connection.stream` tells that it stopped one (`Aborted`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Cancelled


@dataclass(frozen=True)
class Result:
    """What one remote command did."""

    worker: str
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failed(self) -> bool:
        return not self.ok

    def __bool__(self) -> bool:
        return self.ok

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def tail(self, lines: int = 10) -> str:
        """The last lines of stderr (or stdout when stderr is empty), for error messages."""
        data = self.stderr.strip() or self.stdout.strip()
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class StdinClosed(Exception):
    """The remote command stopped reading its stdin."""


class CancelledRemote(Cancelled):
    """Raised inside `stream` when the cancel event is set; the caller cleans up."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


class Aborted(Exception):
    """`stream` stopped a command (timeout or cancel) through `on_abort`; `exit_code` is None if it never ended."""

    def __init__(self, reason: str, exit_code: int | None):
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code
