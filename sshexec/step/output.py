"""Live output: service messages out, secrets masked, lines prefixed, memory bounded.

Bytes from a container pass three stages, each holding back as little as it can:

1. `LineStream` cuts complete lines and takes out service messages (on raw
   bytes: a masked message could not be decoded). Everything else passes
   on at once, even a line without its newline yet.
2. `MaskStream` passes them through the run's `Masker` (core/secrets.py),
   holding back only a tail that could be the start of a secret.
3. `PrefixWriter` puts ``worker/step | `` at the start of every line, in the
   terminal (control characters made visible) and in the stored log (bytes
   kept as they are).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import BinaryIO, Callable, Iterable

from ..core.secrets import Masker

MAX_MESSAGE = 64 * 1024 * 1024


class MaskStream:
    """Stage 2: masks a byte stream, holding back only a possible secret prefix."""

    def __init__(self, masker: Masker, out: Callable[[bytes], None]):
        self.masker = masker
        self.out = out
        self._buf = b""

    def feed(self, data: bytes) -> None:
        if not data:
            return
        buf = self._buf + data if self._buf else data
        cut = self.masker.safe_cut(buf)
        self._buf = buf[cut:]
        if cut:
            self.out(self.masker.mask(buf[:cut]))

    def flush(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, b""
            self.out(self.masker.mask(buf))


class LineStream:
    """Stage 1: finds service messages in a raw stream; passes everything else on.

    `marker` is b"##sshexec[<nonce>] " (None for a stream without messages,
    like stderr). `on_message(body)` gets the bytes after the marker.
    """

    def __init__(self, marker: bytes | None, out: Callable[[bytes], None], on_message: Callable[[bytes], None]):
        self.marker = marker
        self.out = out
        self.on_message = on_message
        self._buf = b""
        self._in_message = False

    def feed(self, data: bytes) -> None:
        if self.marker is None:
            self.out(data)
            return
        buf = self._buf + data if self._buf else data
        self._buf = b""
        marker = self.marker
        while buf:
            if self._in_message:
                end = buf.find(b"\n")
                if end == -1:
                    if len(buf) > MAX_MESSAGE:
                        logging.getLogger("sshexec").warning("dropped a service message longer than %d bytes", MAX_MESSAGE)
                        self._in_message = False
                        buf = b""
                    self._buf = buf
                    return
                self.on_message(buf[:end])
                self._in_message = False
                buf = buf[end + 1 :]
                continue
            pos = buf.find(marker)
            if pos == -1:
                # Hold back a tail that may be the start of a marker.
                keep = _prefix_tail(buf, marker)
                if keep:
                    if len(buf) > keep:
                        self.out(buf[:-keep])
                    self._buf = buf[-keep:]
                else:
                    self.out(buf)
                return
            if pos:
                self.out(buf[:pos])
            self._in_message = True
            buf = buf[pos + len(marker) :]

    def flush(self) -> None:
        buf, self._buf = self._buf, b""
        if buf and not self._in_message:
            self.out(buf)
        self._in_message = False


def _prefix_tail(buf: bytes, marker: bytes) -> int:
    """Length of the longest tail of buf that is a proper prefix of marker."""
    first = marker[:1]
    start = max(0, len(buf) - len(marker) + 1)
    i = buf.find(first, start)
    while i != -1:
        if marker.startswith(buf[i:]):
            return len(buf) - i
        i = buf.find(first, i + 1)
    return 0


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f-\xff]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    if c < 0x20:
        return "^" + chr(c + 0x40)
    if c == 0x7F:
        return "^?"
    return f"\\x{c:02x}"


def neutralise(data: bytes) -> bytes:
    """Make terminal control sequences visible (ESC -> ^[) and undecodable bytes safe."""
    if not _CONTROL_BYTES.search(data):
        return data
    text = data.decode("utf-8", "replace")
    return _CONTROL.sub(_visible, text).encode("utf-8")


class PrefixWriter:
    """Writes chunks of lines from many sources to one file, each line prefixed with its source.

    A line left open by one source is closed before another source writes.
    Thread-safe. `terminal=True` neutralises control characters.
    """

    def __init__(self, fh: BinaryIO, *, terminal: bool = False, flush: bool = True):
        self.fh = fh
        self.terminal = terminal
        self.flush_each = flush
        self._lock = threading.Lock()
        self._open: bytes | None = None

    def write(self, prefix: bytes, data: bytes) -> None:
        if not data:
            return
        if self.terminal:
            data = neutralise(data)
        parts = []
        with self._lock:
            if self._open is not None and self._open != prefix:
                parts.append(b"\n")
                self._open = None
            if self._open is None:
                parts.append(prefix)
            if data.endswith(b"\n"):
                parts.append(data[:-1].replace(b"\n", b"\n" + prefix))
                parts.append(b"\n")
                self._open = None
            else:
                parts.append(data.replace(b"\n", b"\n" + prefix))
                self._open = prefix
            self.fh.write(b"".join(parts))
            if self.flush_each:
                self.fh.flush()

    def end(self, prefix: bytes) -> None:
        """Close `prefix`'s open line, if it has one."""
        with self._lock:
            if self._open == prefix:
                self.fh.write(b"\n")
                self._open = None
                if self.flush_each:
                    self.fh.flush()


class OutputPipeline:
    """stdout and stderr of one step on one worker, from raw bytes to the writers."""

    def __init__(
        self,
        *,
        prefix_out: bytes,
        prefix_err: bytes,
        marker: bytes,
        masker: Masker,
        writers: Iterable[PrefixWriter],
        on_message: Callable[[bytes], None],
        tail_lines: int = 20,
    ):
        self.writers = tuple(writers)
        self.prefix_out, self.prefix_err = prefix_out, prefix_err
        self._err_tail = bytearray()
        self.tail_lines = tail_lines

        def sink(prefix):
            def write(data: bytes) -> None:
                for w in self.writers:
                    w.write(prefix, data)
            return write

        err_sink = sink(prefix_err)

        def err_out(data: bytes) -> None:
            self._err_tail.extend(data)
            if len(self._err_tail) > 8192:
                del self._err_tail[:-8192]
            err_sink(data)

        self._out_mask = MaskStream(masker, sink(prefix_out))
        self._err_mask = MaskStream(masker, err_out)
        self._out = LineStream(marker, self._out_mask.feed, on_message)
        # Service messages come on stdout; a sensitive value is announced on stderr too.
        self._err = LineStream(marker, self._err_mask.feed, on_message)

    def stdout(self, data: bytes) -> None:
        self._out.feed(data)

    def stderr(self, data: bytes) -> None:
        self._err.feed(data)

    def close(self) -> None:
        self._out.flush()
        self._out_mask.flush()
        self._err.flush()
        self._err_mask.flush()
        for w in self.writers:
            w.end(self.prefix_out)
            w.end(self.prefix_err)

    def stderr_tail(self) -> str:
        """The last lines of (masked) stderr, for error messages."""
        lines = bytes(self._err_tail).decode("utf-8", "replace").strip().splitlines()
        return "\n".join(lines[-self.tail_lines :])
