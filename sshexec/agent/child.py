"""A forked child of the agent taking on its client's command: the client's stdin/stdout/stderr, cwd, environment and umask.

After `adopt()` the process is, to the program, the `sshexec` process the
client would have been: file descriptors 0-2 are the client's own (passed over
the socket), so a terminal is a terminal (colours, width, progress), a pipe a
pipe, and output goes straight to it, never through the agent. The environment
is the client's, whole and only: nothing of the agent's own environment is left.

A thread reads the rest of the connection: a SIGNAL frame is raised here as the
signal itself (Ctrl-C, SIGTERM: the run cancels exactly as before), and the end
of the connection (the client killed, even with -9) is a SIGTERM, which cancels
a run and cleans its worker.

A child whose command ended cleanly (no signal, no cancel) may serve another
(`reusable`): it sends the exit code (`finish`), becomes again what the agent
forked (`reset`), says so to the agent over its control socket and waits for the
next client (`wait_for_next`), keeping its SSH connections (ssh/pool.py). A child
that cannot be reused ends, and the exit code goes back at the very end, after
the interpreter's own atexit work.
"""

from __future__ import annotations

import atexit
import io
import os
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Callable

from . import wire

_state: dict = {"code": 1, "conn": None, "done": False, "interrupted": False, "watch": None, "env": None}
_forked: dict = {}  # what the agent forked: environment, umask, argv, streams, signal handlers


def remember_forked() -> None:
    """Note what this process is before its first command, to become it again after each (`reset`)."""
    _forked.update(
        env=dict(os.environ), umask=_umask(), argv=list(sys.argv),
        streams=(sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__),
        signals={s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGTSTP)},
        stdio=[os.dup(fd) for fd in (0, 1, 2)],
    )  # fmt: skip
    for fd in _forked["stdio"]:
        os.set_inheritable(fd, False)
    atexit.register(_report)  # registered first: runs last, after the program's own atexit work


def adopt(conn: socket.socket) -> None:
    """Read the command's request and become its process. Raises SystemExit(2) for a cwd that is gone."""
    _state.update(code=1, conn=None, done=False, interrupted=False, watch=None, env=None)
    conn.settimeout(10)  # a client that said hello and no more does not hold a child for ever
    got = wire.recv(conn, with_fds=3)
    conn.settimeout(None)
    if got is None or got[0] != wire.REQUEST or len(got[2]) != 3:
        os._exit(3)
    _kind, req, fds = got
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(req["env"])
    _state["env"] = req["env"]  # kept until `reset`: which secrets to wipe (scrub.py)
    os.umask(req["umask"])
    time.tzset()
    sys.argv = list(req["argv"])
    _streams(req["streams"])
    signal.signal(signal.SIGINT, _interrupted(signal.default_int_handler))
    signal.signal(signal.SIGTERM, _interrupted(signal.SIG_DFL))
    _state["conn"] = conn
    wire.send(conn, wire.STARTED, {"pid": os.getpid()})
    watch = threading.Thread(target=_watch, args=(conn,), name="sshexec-agent-client", daemon=True)
    _state["watch"] = watch
    watch.start()
    cwd = req["cwd"]
    del req, got
    try:
        os.chdir(cwd)
    except OSError as exc:
        sys.stderr.write(f"sshexec: cannot enter the working directory {cwd}: {exc.strerror}\n")
        raise SystemExit(2) from None


def _interrupted(then):
    """A Ctrl-C or SIGTERM marks the command as interrupted (its child is not reused), then acts as before."""

    def handler(signum, frame):
        _state["interrupted"] = True
        if then is signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        elif callable(then):
            then(signum, frame)

    return handler


def exited(code: object) -> None:
    """What SystemExit carried: the code the client exits with."""
    _state["code"] = 0 if code is None else code if isinstance(code, int) else 1


def reusable() -> bool:
    """The command ended by itself: no signal, no cancel (nor an exit code that says one: 128 and above), its client still there."""
    code = _state["code"]
    return not _state["interrupted"] and _state["conn"] is not None and not (isinstance(code, int) and code >= 128)


def finish() -> None:
    """Send the exit code now (a reusable child does not exit), and let go of the client's connection."""
    _report()
    conn, _state["conn"] = _state["conn"], None
    try:
        conn.shutdown(socket.SHUT_RDWR)  # ends the watching thread's read
    except OSError:
        pass
    watch = _state["watch"]
    if watch is not None:
        watch.join(5)
    conn.close()


def own_threads() -> list[threading.Thread]:
    """The thread that watches the client's connection (it ends in `finish`)."""
    return [_state["watch"]] if _state["watch"] is not None else []


def client_env() -> dict:
    """The finished command's environment, handed over once (for the secrets to wipe)."""
    env, _state["env"] = _state["env"], None
    return env or {}


def reset() -> None:
    """Become again what the agent forked: its environment, umask, argv, signal handlers, cwd "/", and
    descriptors 0-2 (stdin /dev/null, stdout and stderr the agent's log)."""
    os.environ.clear()
    os.environ.update(_forked["env"])
    os.umask(_forked["umask"])
    time.tzset()
    sys.argv = list(_forked["argv"])
    for fd, saved in zip((0, 1, 2), _forked["stdio"]):
        os.dup2(saved, fd)
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            if stream is not None and stream not in _forked["streams"]:
                stream.flush()
                stream.detach()  # their raw files have closefd=False: the descriptors stay
        except (OSError, ValueError):
            pass
    sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__ = _forked["streams"]
    for sig, handler in _forked["signals"].items():
        signal.signal(sig, handler)
    os.chdir("/")


def wait_for_next(ctl: socket.socket, held: Callable[[], list], tick: Callable[[], None], every: float = 1.0) -> socket.socket | None:
    """Tell the agent this child is idle (with the connections it holds), then wait for the next client's
    connection (HAND, with its descriptor). None: the agent said QUIT, or ended."""
    last = held()
    try:
        wire.send(ctl, wire.IDLE, {"connections": last})
    except OSError:
        return None
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ)
    try:
        while True:
            if not sel.select(every):
                tick()
                now = held()
                if len(now) != len(last):
                    last = now
                    try:
                        wire.send(ctl, wire.IDLE, {"connections": now})
                    except OSError:
                        return None
                continue
            try:
                got = wire.recv(ctl, with_fds=1)
            except (OSError, wire.WireError):
                return None
            if got is None or got[0] != wire.HAND or len(got[2]) != 1:
                for fd in got[2] if got else ():
                    os.close(fd)
                return None
            return socket.socket(fileno=got[2][0])
    finally:
        sel.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _streams(specs: list) -> None:
    """sys.stdin/stdout/stderr made again over fds 0-2, as the client's interpreter made them (encoding, buffering)."""
    made = []
    for fd, spec in zip((0, 1, 2), specs):
        if spec is None:
            made.append(None)
            continue
        encoding, errors, line_buffering, write_through, unbuffered = spec
        raw = io.open(fd, "rb" if fd == 0 else "wb", buffering=0 if unbuffered else -1, closefd=False)
        made.append(io.TextIOWrapper(raw, encoding=encoding, errors=errors, line_buffering=line_buffering, write_through=write_through))
    sys.stdin, sys.stdout, sys.stderr = made
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = made


def _watch(conn: socket.socket) -> None:
    while True:
        try:
            got = wire.recv(conn)
        except (OSError, wire.WireError):
            got = None
        if got is None:
            # The client is gone (killed, even with -9): cancel as a SIGTERM would, once. (After
            # _report the client leaves by itself: the process is ending, or serving no one.)
            if not _state["done"]:
                _state["interrupted"] = True
                os.kill(os.getpid(), signal.SIGTERM)
            return
        kind, payload, _fds = got
        if kind == wire.SIGNAL and isinstance(payload, dict) and payload.get("signum") in (signal.SIGINT, signal.SIGTERM):
            _state["interrupted"] = True
            os.kill(os.getpid(), payload["signum"])


def _report() -> None:
    if _state["done"] or _state["conn"] is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    _state["done"] = True
    _let_go_of_stdio()
    try:
        wire.send(_state["conn"], wire.EXIT, {"code": _state["code"]})
    except OSError:
        pass


def _let_go_of_stdio() -> None:
    """Descriptors 0-2 become the agent's again (stdin /dev/null, its log) before the exit code goes: the
    client's pipes end with the client, not when this child is done forgetting the command (a caller
    reading `$(sshexec ...)` to its end waits for every copy of the pipe). Its output is flushed by then."""
    saved = _forked.get("stdio")
    if saved:
        for fd, mine in zip((0, 1, 2), saved):
            try:
                os.dup2(mine, fd)
            except OSError:
                pass
