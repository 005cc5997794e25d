"""A forked child of the agent taking on its client's command: the client's stdin/stdout/stderr, cwd, environment and umask.

After `adopt()` the process is, to the program, the `sshexec` process the
client would have been: file descriptors 0-2 are the client's own (passed over
the socket), so a terminal is a terminal (colours, width, progress), a pipe a
pipe, and output goes straight to it, never through the agent. The environment
is the client's, whole and only: nothing of the agent's own environment is left.

A thread reads the rest of the connection: a SIGNAL frame is raised here as the
signal itself (Ctrl-C, SIGTERM: the run cancels exactly as before), and the end
of the connection (the client killed, even with -9) is a SIGTERM, which cancels
a run and cleans its worker. The exit code goes back at the very end, after the
interpreter's own atexit work.
"""

from __future__ import annotations

import atexit
import io
import os
import signal
import socket
import sys
import threading
import time

from . import wire

_state = {"code": 1, "conn": None, "done": False}


def adopt(conn: socket.socket) -> None:
    """Read the command's request and become its process. Raises SystemExit(2) for a cwd that is gone."""
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
    os.umask(req["umask"])
    time.tzset()
    sys.argv = list(req["argv"])
    _streams(req["streams"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _state["conn"] = conn
    atexit.register(_report)  # registered first: runs last, after the program's own atexit work
    wire.send(conn, wire.STARTED, {"pid": os.getpid()})
    threading.Thread(target=_watch, args=(conn,), name="sshexec-agent-client", daemon=True).start()
    try:
        os.chdir(req["cwd"])
    except OSError as exc:
        sys.stderr.write(f"sshexec: cannot enter the working directory {req['cwd']}: {exc.strerror}\n")
        raise SystemExit(2) from None


def exited(code: object) -> None:
    """What SystemExit carried: the code the client exits with."""
    _state["code"] = 0 if code is None else code if isinstance(code, int) else 1


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
            # _report the client leaves by itself: the process is ending anyway.)
            if not _state["done"]:
                os.kill(os.getpid(), signal.SIGTERM)
            return
        kind, payload, _fds = got
        if kind == wire.SIGNAL and isinstance(payload, dict) and payload.get("signum") in (signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), payload["signum"])


def _report() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    conn = _state["conn"]
    _state["done"] = True
    try:
        wire.send(conn, wire.EXIT, {"code": _state["code"]})
    except OSError:
        pass
