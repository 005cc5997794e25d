"""The agent: one process per user and installation, sshexec's modules imported once, a forked child per command.

Why fork, not threads: a command forked from a warm process starts without
paying the interpreter's and the imports' ~0.3-0.4 s, and is otherwise the very
process `sshexec` was before: its own cwd, environment, signal handlers (Ctrl-C
cancels a run exactly as before), its own locks, slots and history writes, so
two commands at once behave as two processes. The agent itself never reads a
command's request (argv, environment: the secrets): the child does, after the
fork, and the child ends with its command.

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

from . import wire

TICK = 0.25  # seconds between housekeeping rounds: reaping children, the idle clock, the socket still ours
DEFAULT_IDLE = 600  # the agent ends after this long without a command (like ControlPersist's 10 minutes)
HELLO_TIMEOUT = 5.0
DEFER = 3.0  # seconds a cold start's preload waits for the command that spawned it


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
    """The accept loop. `serve()` returns in the parent when the agent ends (None), and in each forked child (its connection)."""

    def __init__(self, paths: wire.Paths, identity: str, idle: float):
        self.paths = paths
        self.identity = identity
        self.idle = idle
        self.started = time.time()
        self.served = 0
        self.children: dict[int, tuple[socket.socket, float, int, str]] = {}  # pid -> (conn, since, client pid, command)
        self.last = time.monotonic()
        self.ending = False
        self.listener: socket.socket | None = None
        self.lock_fd = -1
        self.inode = None

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

    def serve(self) -> socket.socket | None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        # A child's end wakes the loop at once (its client waits for the exit code the agent sends).
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        sel = selectors.DefaultSelector()
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
                    continue
                conn = self._accept()
                if conn is not None:
                    sel.close()
                    return conn  # in a forked child
            self._housekeeping()
        sel.close()
        self._close()
        return None

    def _on_term(self, signum, frame) -> None:
        self.ending = True

    def _housekeeping(self) -> None:
        if not self.children and time.monotonic() - self.last > self.idle:
            log(f"idle for {self.idle:.0f} s: ending")
            self.ending = True
        try:
            if os.stat(self.paths.socket).st_ino != self.inode:
                log("the socket was replaced: ending")
                self.ending = True
        except FileNotFoundError:
            log("the socket was removed: ending")
            self.ending = True

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
        log(f"ended; {len(self.children)} command(s) still running go on by themselves")

    # -- one connection -----------------------------------------------------------------

    def _accept(self) -> socket.socket | None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return None
        try:
            pid, uid = wire.peer_uid(conn)
            if uid != os.getuid():
                log(f"refused a client of uid {uid} (pid {pid}): the agent serves uid {os.getuid()} only")
                wire.send(conn, wire.REFUSED, {"message": f"this sshexec agent serves uid {os.getuid()} only"})
                conn.close()
                return None
            conn.settimeout(HELLO_TIMEOUT)
            got = wire.recv(conn)
            if got is None or got[0] != wire.HELLO or not isinstance(got[1], dict):
                conn.close()
                return None
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
                return self._fork(conn, pid, str(hello.get("command", "?")))
            conn.close()
        except (OSError, wire.WireError) as exc:
            log(f"a client (fd {conn.fileno()}) dropped: {exc}")
            conn.close()
        return None

    def _fork(self, conn: socket.socket, client_pid: int, command: str) -> socket.socket | None:
        conn.settimeout(None)
        self.last = time.monotonic()
        self.served += 1
        child = os.fork()
        if child == 0:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self.wake_r.close()
            self.wake_w.close()
            self.listener.close()
            os.close(self.lock_fd)
            for other, *_ in self.children.values():
                other.close()
            self.children.clear()
            return conn
        self.children[child] = (conn, time.time(), client_pid, command)
        log(f"{command}: pid {child} for client pid {client_pid}")
        return None

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn, since, client_pid, command = self.children.pop(pid, (None, 0.0, 0, "?"))
            self.last = time.monotonic()
            if conn is None:
                continue
            # The child says its code itself at exit (atexit), unless it ended otherwise: os._exit (a
            # second Ctrl-C), a signal. Its client takes the first EXIT it reads; this one comes after.
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                log(f"{command}: pid {pid} killed by signal {sig}")
                code = 128 + sig
            else:
                code = os.waitstatus_to_exitcode(status)
            try:
                wire.send(conn, wire.EXIT, {"code": code})
            except OSError:
                pass
            conn.close()

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "started": self.started,
            "uptime": time.time() - self.started,
            "socket": self.paths.socket,
            "log": self.paths.log,
            "identity": self.identity,
            "served": self.served,
            "running": [{"pid": pid, "client_pid": cp, "command": cmd, "since": since} for pid, (_c, since, cp, cmd) in self.children.items()],
            "rss_kib": _rss_kib(os.getpid()),
            "children_rss_kib": sum(_rss_kib(pid) for pid in self.children),
            "connections": 0,
            "idle_limit": self.idle,
        }


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def serve(warm: Callable[[], None], *, defer: bool = False) -> socket.socket | None:
    """The agent's life: lock, preload (`warm`), listen, serve. Returns None when it ends; a forked child gets its connection.

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
