"""GO's reply, read: the state lines GO prints on stderr until "staged", and what a GO round trip came to.

GO (docker.py) stages the bundle, checks the executor, the image and a slot,
then runs the container. Until "##sshexec-state staged" its stderr carries
only state lines (and a failing command's own words); after it, stderr is the
container's. `GoState` reads the first part and forwards the second;
`GoReply` is what `WorkerSession.go()` hands back to the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConnectionLost
from .docker import LEFT_MARKER, STATE_MARKER, ImageInfo, WorkerFacts, parse_state

_LEFT = LEFT_MARKER.encode()


class GoState:
    """Reads GO's state lines on stderr until "staged"; after it, stderr is the container's (`forward`)."""

    def __init__(self, image: str, on_staged: Callable[[], None], forward: Callable[[bytes], None]):
        self.image = image
        self.on_staged, self.forward = on_staged, forward
        self.started = False
        self.root: WorkerFacts | None = None  # GO's "root" line: where work_root is, uid, gid, machine
        self.info: ImageInfo | None = None  # GO's "image" line: the image is here, and what it is
        self.image_line = ""  # ... as GO printed it: what a kept connection hands a later GO as `known` (facts.py)
        self.facts: dict[str, str] = {}  # any other state line: noimage, noslot, coord, executor-missing...
        self.early = bytearray()  # stderr before "staged" that is no state line (a failing command's words)
        self._buf = b""
        self._tail = b""  # the last bytes forwarded, where GO's "left" line would be

    @property
    def left_marked(self) -> bool:
        """GO said that it could not remove the step's directory."""
        return _LEFT in self._tail

    def feed(self, data: bytes) -> None:
        if self.started:
            self._forward(data)
            return
        buf = self._buf + data
        while not self.started:
            line, sep, rest = buf.partition(b"\n")
            if not sep:
                break
            buf = rest
            if line.startswith(STATE_MARKER):
                self._state(line[len(STATE_MARKER):].decode("utf-8", "replace"))
            else:
                self.early.extend(line + b"\n")
                del self.early[:-8192]
        if self.started:
            self._buf = b""
            if buf:
                self._forward(buf)
        else:
            self._buf = buf

    def _forward(self, data: bytes) -> None:
        self._tail = (self._tail + data)[-4096:]
        self.forward(data)

    def _state(self, line: str) -> None:
        kind, fields = parse_state(line)
        if kind == "root" and len(fields) == 4:
            self.root = WorkerFacts(*fields)
        elif kind == "image" and len(fields) >= 6:
            self.info = ImageInfo.parse(self.image, fields)
            self.image_line = "\t".join(fields)
        elif kind == "staged":
            self.started = True
            self.on_staged()
        else:
            self.facts[kind] = fields[0] if fields else ""


@dataclass(frozen=True)
class GoReply:
    """What one GO round trip came to.

    Before "staged" (`started` False) GO stopped on its own, and `code` says
    why (docker.E_*), with `facts` and `early` for the message. Once started,
    the container ran: `code` is the run scriptlet's exit status (None if none
    came), `aborted` says whether sshexec stopped it ("timeout" | "cancel"),
    `lost` whether the connection died while it ran.
    """

    started: bool
    code: int | None
    facts: dict[str, str] = field(default_factory=dict)
    early: str = ""
    aborted: str | None = None
    lost: ConnectionLost | None = None
    finished: bool = False  # the run scriptlet ended by itself, its cleanup included
    left_marked: bool = False  # ... and said that it could not remove the step's directory
    known: bool = False  # GO ran with a kept connection's image line (facts.py): no inspect, docker run by the ID
