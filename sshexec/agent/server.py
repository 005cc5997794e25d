"""The agent: one process per user and installation, sshexec's modules imported once, a forked child per command, kept for the next.

Why fork, not threads: a command forked from a warm process starts without
paying the interpreter's and the imports' ~0.3-0.4 s, and is otherwise the very
process `sshexec` was before: its own cwd, environment, signal handlers (Ctrl-C
cancels a run exactly as before), its own locks, slots and history writes, so
two commands at once behave as two processes. The agent itself never reads a
command's request (argv, environment: the secrets): the child does.

A child whose command ended cleanly does not exit: it resets (child.py), wipes
the command's secrets from its memory, and tells the agent over its control
socket that it is idle, keeping its authenticated SSH connections
(ssh/pool.py). The next client's socket goes to the most recently idle child
(SCM_RIGHTS), which then runs the command over warm connections; a fresh child
is forked only when none is idle (or about to be). Idle children beyond
MAX_IDLE, and idle ones without connections past the idle limit, are told to
end. docs/architecture.md says why this design and not the agent holding the
connections itself.

Security: the socket is 0600 in a 0700 directory of the user's; on top of that
every connection's uid is read from the kernel (SO_PEERCRED) and a client of
another uid is refused and logged before a byte of its payload is read.
"""

from __future__ import annotations

import fcntl
import gc
import os
import selectors
import signal
import socket
import sys
import time
from typing import Callable

from . import children, wire

TICK = 0.25  # seconds between housekeeping rounds: reaping children, the idle clock, the socket still ours
DEFAULT_IDLE = 600  # the agent ends after this long without a command (like ControlPersist's 10 minutes)
HELLO_TIMEOUT = 5.0
DEFER = 3.0  # seconds a cold start's preload waits for the command that spawned it
MAX_IDLE = 2  # idle children kept (each ~20-30 MiB of its own beside the agent's shared pages)
WAIT_RESET = 1.0  # seconds a client waits for a child that is resetting (its connections warm) before a fresh one is forked


def log(message: str) -> None:
    """A line in the agent's log (its stderr: paths.log). Never argv or environment: only pids, uids, events."""
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} sshexec-agent[{os.getpid()}] {message}\n")
    sys.stderr.flush()


def idle_limit() -> float:
    try:
        return float(os.environ.get("SSHEXEC_AGENT_IDLE", DEFAULT_IDLE))
    except ValueError:
        return DEFAULT_IDLE


class Agent:
    """The accept loop. `serve()` returns in the parent when the agent ends (None), and in each forked child (its connection, its control socket)."""

    def __init__(self, paths: wire.Paths, identity: str, idle: float):
        self.paths = paths
        self.identity = identity
        self.idle = idle
        self.started = time.time()
        self.served = 0
        self.children: dict[int, children.Child] = {}
        self.waiting: list[tuple[socket.socket, int, str, float]] = []  # clients waiting for a child that resets
        self.last = time.monotonic()
        self.ending = False
        self.listener: socket.socket | None = None
        self.lock_fd = -1
        self.inode = None
        self.sel: selectors.BaseSelector | None = None
        self.handed: tuple[socket.socket, socket.socket] | None = None  # in a forked child: its client and control socket

    # -- lifecycle --------------------------------------------------------------------

    def take_lock(self, wait: float = 10.0) -> bool:
        """The lock file, held for the agent's life: two agents of one installation never serve at once."""
        self.paths.make_dir()
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        end = time.monotonic() + wait  # an agent that answered STALE is on its way out
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd
        return True

    def listen(self) -> None:
        try:
            os.unlink(self.paths.socket)  # a crashed agent's
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.paths.socket)
        finally:
            os.umask(old)
        os.chmod(self.paths.socket, 0o600)
        sock.listen(64)
        self.inode = os.stat(self.paths.socket).st_ino
        self.listener = sock

    def serve(self) -> tuple[socket.socket, socket.socket] | None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        # A child's end wakes the loop at once (its client waits for the exit code the agent sends).
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.sel = sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "listener")
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        log(f"listening on {self.paths.socket} (idle limit {self.idle:.0f} s)")
        while not self.ending:
            ready = sel.select(TICK)
            self._reap()
            for key, _ in ready:
                if key.data == "wake":
                    try:
                        while self.wake_r.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                elif key.data == "listener":
                    self._accept()
                elif key.data in self.children:
                    self._from_child(self.children[key.data])
                if self.handed is not None:
                    return self.handed  # in a forked child
            self._housekeeping()
            if self.handed is not None:
                return self.handed
        sel.close()
        self._close()
        return None

    def _on_term(self, signum, frame) -> None:
        self.ending = True

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for entry in [w for w in self.waiting if now - w[3] > WAIT_RESET or not self._resetting()]:
            self.waiting.remove(entry)
            self._fork(*entry[:3])  # no child became idle in time: a fresh one
            if self.handed is not None:
                return
        idle = sorted((c for c in self.children.values() if c.state == "idle"), key=lambda c: c.idle_since, reverse=True)
        for i, c in enumerate(idle):
            if i >= MAX_IDLE or (not c.held and time.time() - c.idle_since > self.idle):
                self._retire(c, "beyond the idle children kept" if i >= MAX_IDLE else "idle, with no connection kept")
        if not self._working() and time.monotonic() - self.last > self.idle:
            log(f"idle for {self.idle:.0f} s: ending")
            self.ending = True
        try:
            if os.stat(self.paths.socket).st_ino != self.inode:
                log("the socket was replaced: ending")
                self.ending = True
        except FileNotFoundError:
            log("the socket was removed: ending")
            self.ending = True

    def _working(self) -> bool:
        return bool(self.waiting) or any(c.state != "idle" for c in self.children.values())

    def _resetting(self) -> bool:
        return any(c.state == "resetting" for c in self.children.values())

    def _close(self) -> None:
        try:
            if os.stat(self.paths.socket).st_ino == self.inode:
                os.unlink(self.paths.socket)
        except FileNotFoundError:
            pass
        if self.listener is not None:
            self.listener.close()
        signal.set_wakeup_fd(-1)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # releases the lock
        for c in self.children.values():
            c.ctl.close()  # an idle child ends (closing its connections); a busy one finishes its command
        for conn, *_ in self.waiting:
            conn.close()
        busy = sum(c.state != "idle" for c in self.children.values())
        log(f"ended; {busy} command(s) still running go on by themselves")

    # -- one connection -----------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            pid, uid = wire.peer_uid(conn)
            if uid != os.getuid():
                log(f"refused a client of uid {uid} (pid {pid}): the agent serves uid {os.getuid()} only")
                wire.send(conn, wire.REFUSED, {"message": f"this sshexec agent serves uid {os.getuid()} only"})
                conn.close()
                return
            conn.settimeout(HELLO_TIMEOUT)
            got = wire.recv(conn)
            if got is None or got[0] != wire.HELLO or not isinstance(got[1], dict):
                conn.close()
                return
            hello = got[1]
            op = hello.get("op")
            if op == "status":
                wire.send(conn, wire.STATUS, self.status())
            elif op == "stop":
                log(f"asked to stop by pid {pid}")
                wire.send(conn, wire.EXIT, {"code": 0, "pid": os.getpid()})
                self.ending = True
            elif hello.get("id") != self.identity:
                log(f"a client (pid {pid}) of another sshexec says hello: ending, it starts the new one")
                wire.send(conn, wire.STALE, {"pid": os.getpid()})
                self.ending = True
            elif op == "run":
                conn.settimeout(None)
                self.last = time.monotonic()
                self.served += 1
                self._run(conn, pid, str(hello.get("command", "?")))
                return
            conn.close()
        except (OSError, wire.WireError) as exc:
            log(f"a client (fd {conn.fileno()}) dropped: {exc}")
            conn.close()

    def _run(self, conn: socket.socket, client_pid: int, command: str) -> None:
        """To the most recently idle child; else wait for one that resets; else a fresh child."""
        for c in sorted((c for c in self.children.values() if c.state == "idle"), key=lambda c: c.idle_since, reverse=True):
            if self._hand(c, conn, client_pid, command):
                return
        if self._resetting():
            self.waiting.append((conn, client_pid, command, time.monotonic()))
            return
        self._fork(conn, client_pid, command)

    def _hand(self, c: children.Child, conn: socket.socket, client_pid: int, command: str) -> bool:
        try:
            wire.send(c.ctl, wire.HAND, {"command": command, "client_pid": client_pid}, fds=[conn.fileno()])
        except OSError:
            self._retire(c, "its control socket failed")
            return False
        log(f"{command}: pid {c.pid} (kept, {len(c.held)} connection(s)) for client pid {client_pid}")
        self._busy(c, conn, client_pid, command)
        return True

    def _busy(self, c: children.Child, conn: socket.socket, client_pid: int, command: str) -> None:
        c.state, c.conn, c.since, c.client_pid, c.command, c.held = "busy", conn, time.time(), client_pid, command, []
        c.served += 1

    def _fork(self, conn: socket.socket, client_pid: int, command: str) -> None:
        ctl, theirs = socket.socketpair()
        child = os.fork()
        if child == 0:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self.sel.close()
            self.wake_r.close()
            self.wake_w.close()
            self.listener.close()
            os.close(self.lock_fd)
            ctl.close()
            for other in self.children.values():
                other.ctl.close()
                if other.conn is not None:
                    other.conn.close()
            for other_conn, *_ in self.waiting:
                if other_conn is not conn:
                    other_conn.close()
            self.children.clear()
            self.waiting.clear()
            self.handed = (conn, theirs)
            return
        theirs.close()
        c = self.children[child] = children.Child(child, ctl)
        self._busy(c, conn, client_pid, command)
        self.sel.register(ctl, selectors.EVENT_READ, child)
        log(f"{command}: pid {child} for client pid {client_pid}")

    def _from_child(self, c: children.Child) -> None:
        try:
            got = wire.recv(c.ctl)
        except (OSError, wire.WireError):
            got = None
        if got is None:  # it is ending: the reaper sends its client an exit code if it did not
            self.sel.unregister(c.ctl)
            c.state = "ending"
            return
        kind, payload, _fds = got
        if kind == wire.DONE:
            c.state = "resetting"
            if c.conn is not None:
                c.conn.close()  # the child told its client the exit code itself
                c.conn = None
            self.last = time.monotonic()
        elif kind == wire.IDLE and isinstance(payload, dict):
            if c.state != "idle":
                c.state, c.idle_since = "idle", time.time()
            c.held = list(payload.get("connections") or [])
            if self.waiting:
                conn, client_pid, command, _t = self.waiting.pop(0)
                if not self._hand(c, conn, client_pid, command):
                    self._fork(conn, client_pid, command)

    def _retire(self, c: children.Child, why: str) -> None:
        if c.state == "ending":
            return
        log(f"pid {c.pid} ends: {why}")
        c.state = "ending"
        try:
            self.sel.unregister(c.ctl)
        except (KeyError, ValueError):
            pass
        c.ctl.close()  # the child reads the end of its control socket and exits

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            c = self.children.pop(pid, None)
            if c is None:
                continue
            if c.state != "ending":
                try:
                    self.sel.unregister(c.ctl)
                except (KeyError, ValueError):
                    pass
            c.ctl.close()
            if c.conn is None:
                continue
            self.last = time.monotonic()
            # The child says its code itself (at exit, or before it resets), unless it ended otherwise:
            # os._exit (a second Ctrl-C), a signal. Its client takes the first EXIT it reads; this one comes after.
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                log(f"{c.command}: pid {pid} killed by signal {sig}")
                code = 128 + sig
            else:
                code = os.waitstatus_to_exitcode(status)
            try:
                wire.send(c.conn, wire.EXIT, {"code": code})
            except OSError:
                pass
            c.conn.close()

    def status(self) -> dict:
        return children.status(self)


def serve(warm: Callable[[], None], *, defer: bool = False) -> tuple[socket.socket, socket.socket] | None:
    """The agent's life: lock, preload (`warm`), listen, serve. Returns None when it ends; a forked child gets its client's
    connection and its control socket to the agent.

    `defer`: spawned by a command that runs in-process meanwhile (a cold start). The preload
    (~0.5 s of CPU) then waits until that command ends, at most DEFER seconds, instead of
    taking a core from it on a small machine.
    """
    os.chdir("/")
    paths = wire.Paths.current()
    try:
        if os.path.getsize(paths.log) > 1 << 20:
            os.truncate(paths.log, 0)
    except OSError:
        pass
    agent = Agent(paths, wire.identity(), idle_limit())
    if not agent.take_lock():
        log("another agent holds the lock: not starting")
        return None
    if defer:
        spawner, end = os.getppid(), time.monotonic() + DEFER
        while os.getppid() == spawner and time.monotonic() < end:
            time.sleep(0.02)
    t0 = time.monotonic()
    warm()
    gc.collect()
    gc.freeze()  # the preloaded objects stay out of every child's collections (and its copy-on-write pages)
    agent.listen()
    log(f"started in {time.monotonic() - t0:.2f} s ({len(sys.modules)} modules preloaded)")
    return agent.serve()
