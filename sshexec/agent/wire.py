"""Where the agent lives, which sshexec it is, and the frames client and agent exchange (standard library only).

A frame is a type byte, a 4-byte big-endian length, and a `marshal`ed payload
(plain dicts, lists, strings and numbers). marshal is built into the
interpreter (no import on the client's path) and both sides are the same
Python: the identity holds sys.executable. Only a peer of the agent's own uid
(checked with SO_PEERCRED before any payload is read) ever gets to send one.
"""

import marshal
import os
import sys
import zlib

# The C module under socket: its Python wrapper (enums, selectors) costs the thin client ≈ 3 ms of imports
# (enum, functools, collections...) for nothing it uses. Sockets made by the socket module (the agent's)
# are these same objects underneath: every function here takes either.
import _socket as socket

HELLO = 1  # client -> agent: {"op": "run" | "status" | "stop", "id": identity}
REQUEST = 2  # client -> child, with stdin/stdout/stderr as SCM_RIGHTS: argv, cwd, environ, umask, streams
SIGNAL = 3  # client -> child: {"signum": N}, a Ctrl-C or SIGTERM the client received
STARTED = 4  # child -> client: the command runs (a loss after this is not retried)
EXIT = 5  # child or agent -> client: {"code": N}
STALE = 6  # agent -> client: another sshexec (version or code) than the client's; the agent is ending
STATUS = 7  # agent -> client: what `sshexec agent status` shows
REFUSED = 8  # agent -> client: {"message": ...}
# Between the agent and a reusable child, over the child's control socket:
DONE = 9  # child -> agent: the command ended and its client has its exit code; the child resets
IDLE = 10  # child -> agent: ready for a command; {"connections": [...]} it keeps (sent again when they change)
HAND = 11  # agent -> child, with the next client's connection (SCM_RIGHTS): {"command": ..., "client_pid": N}

_HEAD_SIZE = 5  # kind (1 byte), then the payload's size (4 bytes, big-endian)
_INT = 4  # a C int, as SCM_RIGHTS and SO_PEERCRED carry them (int.to_bytes, not struct: one module fewer on the client's path)
MAX_FRAME = 16 << 20  # a whole environment and argv fit many times over
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WireError(Exception):
    """The other side sent something that is not a frame, or too big a one."""


def send(sock: socket.socket, kind: int, payload: object, fds: list[int] | None = None) -> None:
    data = marshal.dumps(payload)
    frame = bytes((kind,)) + len(data).to_bytes(4, "big") + data
    if fds:
        sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(fd.to_bytes(_INT, sys.byteorder, signed=True) for fd in fds))])
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def recv(sock: socket.socket, *, with_fds: int = 0) -> tuple[int, object, list[int]] | None:
    """One frame (kind, payload, fds received with it); None at a clean end of the stream."""
    fds: list[int] = []
    head = _exact(sock, _HEAD_SIZE, fds if with_fds else None, with_fds)
    if head is None:
        return None
    kind, size = head[0], int.from_bytes(head[1:], "big")
    if size > MAX_FRAME:
        raise WireError(f"a frame of {size} bytes")
    body = _exact(sock, size, None, 0) if size else b""
    if body is None:
        raise WireError("the stream ended inside a frame")
    try:
        return kind, marshal.loads(body), fds
    except (ValueError, EOFError, TypeError) as exc:
        raise WireError(f"an unreadable frame: {exc}") from None


def _exact(sock: socket.socket, n: int, fds: list[int] | None, max_fds: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        if fds is not None and not fds:
            data, anc, _flags, _addr = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(max_fds * _INT))
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(_ints(raw[: len(raw) - len(raw) % _INT]))
        else:
            data = sock.recv(n - len(buf))
        if not data:
            if buf:
                raise WireError("the stream ended inside a frame")
            return None
        buf += data
    return buf


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel (SO_PEERCRED)."""
    pid, uid, _gid = _ints(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 3 * _INT))
    return pid, uid


def _ints(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + _INT], sys.byteorder, signed=True) for i in range(0, len(raw), _INT)]


# -- where, and who ------------------------------------------------------------------


class Paths:
    """The agent's socket, lock file and log for this installation of sshexec and this user."""

    def __init__(self, directory: str):
        key = f"{zlib.crc32(f'{PACKAGE}|{_python()}'.encode()):08x}"
        self.dir = directory
        self.socket = os.path.join(directory, f"agent-{key}.sock")
        self.lock = os.path.join(directory, f"agent-{key}.lock")
        self.log = os.path.join(directory, f"agent-{key}.log")

    @classmethod
    def current(cls) -> "Paths":
        """$XDG_RUNTIME_DIR/sshexec, else $SSHEXEC_HOME/agent; /tmp/sshexec-UID when that path is too long for a socket."""
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            base = os.path.join(runtime, "sshexec")
        else:
            home = os.environ.get("SSHEXEC_HOME") or os.path.join("~", ".local", "share", "sshexec")
            base = os.path.join(os.path.expanduser(home), "agent")
        paths = cls(os.path.abspath(base))
        if len(paths.socket.encode()) > 100:  # sun_path holds 108 bytes
            paths = cls(os.path.join("/tmp", f"sshexec-{os.getuid()}"))
        return paths

    def make_dir(self) -> None:
        """The directory, 0700 and ours: another user must not even see the socket."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        st = os.lstat(self.dir)
        if not os.path.isdir(self.dir) or os.path.islink(self.dir) or st.st_uid != os.getuid():
            raise OSError(f"{self.dir} is not a directory of uid {os.getuid()}: the agent will not use it")
        if st.st_mode & 0o077:
            os.chmod(self.dir, 0o700)


def identity() -> str:
    """Which sshexec this is: the Python (and virtualenv), and the size and mtime of every module of the package.

    A new version (or, in a checkout, any edited module) gives another identity,
    and an agent of another identity ends when a client says hello (STALE).
    ~2 ms for ~170 files.
    """
    crc = 0
    stack = [PACKAGE]
    while stack:
        with os.scandir(stack.pop()) as it:
            entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                elif entry.name.endswith((".py", ".sh")):
                    st = entry.stat()
                    crc = zlib.crc32(f"{entry.path}|{st.st_size}|{st.st_mtime_ns}".encode(), crc)
    return f"{_python()}|{sys.version}|{crc:08x}"


def _python() -> str:
    """The interpreter and its environment, however it was named (`sshexec`'s python3, `python -m sshexec`'s python)."""
    return f"{os.path.realpath(sys.executable)}|{sys.prefix}"
