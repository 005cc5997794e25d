"""The thin client: hand `sshexec run|check|logs|runs` to the agent, with nothing but the standard library imported.

`delegate()` returns the exit code of a command the agent ran, or None: "run it
here, in this process, as before". None is the answer whenever the agent is
off (SSHEXEC_AGENT=0), the command is another one, or there is no agent yet
(cold start). Then this process spawns one, detached, for the commands that
follow, and runs the command itself, so a cold command costs what it did
before. An agent of another sshexec (a new version, an edited checkout) is told
to end and replaced the same way.

What crosses the socket: argv, the working directory, the whole environment of
this process (the secrets a command reads come from here, the client's, and
only reach the command's own child, which ends, or wipes them before the next
command: child.py, scrub.py), the umask, how
stdin/stdout/stderr are encoded and buffered, and the three file descriptors
themselves (SCM_RIGHTS).
"""

# _signal and _socket: the C modules, not their Python wrappers (enum, selectors: ≈ 6 ms of the client's start).
import _signal as signal
import _socket as socket
import os
import sys
import time

from . import wire

DELEGATED = ("run", "check", "logs", "runs")
OFF = ("0", "off", "no", "false", "never")
_SPAWN = "from sshexec._entry import agent_main; agent_main(defer={defer})"
# What the agent's own process keeps of the environment that starts it: where it lives and how
# Python finds sshexec. Never a secret: a command's environment reaches its child only.
_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "PYTHONHOME",
         "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "XDG_RUNTIME_DIR", "SSHEXEC_HOME", "SSHEXEC_AGENT_IDLE", "SSHEXEC_CONNECTION_IDLE")  # fmt: skip


class AgentError(Exception):
    """The agent could not be reached, started or stopped; the message says what to do."""


def enabled() -> bool:
    return os.environ.get("SSHEXEC_AGENT", "auto").strip().lower() not in OFF


def delegate(args: list[str]) -> int | None:
    """The exit code of the command run by the agent, or None to run it in this process."""
    if not args or args[0] not in DELEGATED or not enabled():
        return None
    try:
        paths = wire.Paths.current()
        ident = wire.identity()
        cwd = os.getcwd()
    except OSError:
        return None  # no place for the agent, or a cwd that is gone: as before, in-process
    sock = connect(paths)
    if sock is None:
        start(paths)
        return None
    try:
        return _hand_over(sock, paths, ident, args, cwd)
    finally:
        sock.close()


def connect(paths: wire.Paths) -> socket.socket | None:
    """A connection to the agent, or None. The process listening must be of this uid (SO_PEERCRED, both ways):
    a socket another user planted where the agent's would be gets nothing, not even argv."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(paths.socket)
        pid, uid = wire.peer_uid(sock)
    except OSError:
        sock.close()
        return None
    if uid != os.getuid():
        sock.close()
        sys.stderr.write(f"sshexec: {paths.socket} is served by uid {uid} (pid {pid}), not by you: not using it; "
                         "this command runs without the agent\n")  # fmt: skip
        return None
    return sock


def _hand_over(sock: socket.socket, paths: wire.Paths, ident: str, args: list[str], cwd: str) -> int | None:
    request = {
        "argv": [sys.argv[0] if sys.argv else "sshexec", *args],
        "cwd": cwd,
        "env": dict(os.environ),
        "umask": _umask(),
        "streams": [_stream(s) for s in (sys.stdin, sys.stdout, sys.stderr)],
    }
    fds, opened = _std_fds()
    old = {}
    started = False
    try:
        try:
            wire.send(sock, wire.HELLO, {"op": "run", "id": ident, "command": args[0]})
            wire.send(sock, wire.REQUEST, request, fds=fds)
        except OSError:
            if _refused(sock, paths):  # an agent that refuses says so at once, and closes
                return 3
            start(paths)
            return None
        del request

        def forward(signum, frame):
            try:
                wire.send(sock, wire.SIGNAL, {"signum": signum})
            except OSError:
                pass

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, forward)
        while True:
            try:
                got = wire.recv(sock)
            except (OSError, wire.WireError):
                got = None
            if got is None:
                if not started:  # the agent died before the command began: a new one, and this command here
                    start(paths)
                    return None
                sys.stderr.write(f"sshexec: the agent's process for this command ended without an exit code; see {paths.log}\n")
                return 3
            kind, payload, _fds = got
            if kind == wire.STARTED:
                started = True
            elif kind == wire.EXIT:
                return int(payload.get("code", 3))
            elif kind == wire.STALE:
                start(paths, force=True)  # the old agent still holds the lock for a moment; the new one waits for it
                return None
            elif kind == wire.REFUSED:
                _say_refused(paths, payload)
                return 3
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for fd in opened:
            os.close(fd)


def _refused(sock: socket.socket, paths: wire.Paths) -> bool:
    try:
        sock.settimeout(1.0)
        got = wire.recv(sock)
    except (OSError, wire.WireError):
        return False
    if got is not None and got[0] == wire.REFUSED:
        _say_refused(paths, got[1])
        return True
    return False


def _say_refused(paths: wire.Paths, payload: object) -> None:
    message = payload.get("message") if isinstance(payload, dict) else None
    sys.stderr.write(f"sshexec: the agent at {paths.socket} refused this command: {message}; "
                     "run it without the agent with SSHEXEC_AGENT=0\n")  # fmt: skip


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stream(stream) -> tuple | None:
    if stream is None:
        return None
    raw = type(getattr(stream, "buffer", None)).__name__ == "FileIO"  # PYTHONUNBUFFERED / -u: no buffer under the text layer
    return (stream.encoding, stream.errors, stream.line_buffering, getattr(stream, "write_through", False), raw)


def _std_fds() -> tuple[list[int], list[int]]:
    """Descriptors 0-2 to pass; /dev/null in place of one that is closed."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            fds.append(null)
            opened.append(null)
    return fds, opened


# -- start, stop, status --------------------------------------------------------------


def running(paths: wire.Paths) -> bool:
    """Whether an agent holds the lock (it may still be preloading, not yet listening)."""
    import fcntl

    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def start(paths: wire.Paths, *, force: bool = False, defer: bool = True) -> int | None:
    """Spawn the agent, detached, unless one holds the lock already; its pid, or None.

    `defer`: this process runs its command itself meanwhile; the agent preloads once it is done."""
    if running(paths) and not force:
        return None
    try:
        paths.make_dir()
        env = {k: v for k, v in os.environ.items() if k in _KEEP}
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        return os.posix_spawn(sys.executable, [sys.executable, "-c", _SPAWN.format(defer=bool(defer))], env, file_actions=actions, setsid=True)
    except OSError as exc:
        sys.stderr.write(f"sshexec: could not start the agent ({exc}); this command runs without it\n")
        return None


def ask(paths: wire.Paths, op: str) -> tuple[int, dict] | None:
    """Send `op` (status, stop) to the agent; its answer (kind, payload), or None if none answers."""
    sock = connect(paths)
    if sock is None:
        return None
    try:
        sock.settimeout(10)
        wire.send(sock, wire.HELLO, {"op": op, "id": ""})
        got = wire.recv(sock)
    except (OSError, wire.WireError):
        return None
    finally:
        sock.close()
    if got is None:
        return None
    return got[0], got[1]


def status(paths: wire.Paths) -> dict | None:
    got = ask(paths, "status")
    return got[1] if got and got[0] == wire.STATUS else None


def wait_until_up(paths: wire.Paths, limit: float = 60.0) -> dict:
    """Poll until the agent answers status (it preloads first); AgentError past `limit` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        now = status(paths)
        if now is not None:
            return now
        time.sleep(0.05)
    raise AgentError(f"the agent did not answer on {paths.socket} within {limit:.0f} s; see its log {paths.log}")


def stop(paths: wire.Paths, limit: float = 30.0) -> int | None:
    """Ask the agent to end; the pid that ended, None if none was running. Its running commands finish by themselves."""
    got = ask(paths, "stop")
    if got is None:
        return None
    pid = got[1].get("pid")
    end = time.monotonic() + limit
    while running(paths):
        if time.monotonic() > end:
            raise AgentError(f"the agent (pid {pid}) did not end within {limit:.0f} s; see its log {paths.log}")
        time.sleep(0.05)
    return pid
