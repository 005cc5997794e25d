"""The agent's children as it sees them (busy with a client, resetting after one, idle), and what `sshexec agent status` shows."""

from __future__ import annotations

import os
import socket
import time


class Child:
    """A forked child as the agent sees it: busy with a client, resetting after one, or idle."""

    __slots__ = ("pid", "ctl", "conn", "since", "client_pid", "command", "state", "idle_since", "held", "served")

    def __init__(self, pid: int, ctl: socket.socket):
        self.pid, self.ctl = pid, ctl
        self.conn: socket.socket | None = None  # the agent's copy of the client's connection, while busy
        self.since, self.client_pid, self.command = 0.0, 0, "?"
        self.state = "busy"
        self.idle_since = 0.0
        self.held: list = []
        self.served = 0


def status(agent) -> dict:
    kids = list(agent.children.values())
    idle = [c for c in kids if c.state == "idle"]
    return {
        "pid": os.getpid(),
        "started": agent.started,
        "uptime": time.time() - agent.started,
        "socket": agent.paths.socket,
        "log": agent.paths.log,
        "identity": agent.identity,
        "served": agent.served,
        "running": [{"pid": c.pid, "client_pid": c.client_pid, "command": c.command, "since": c.since} for c in kids if c.state == "busy"],
        "resetting": [c.pid for c in kids if c.state == "resetting"],
        "idle_children": [{"pid": c.pid, "idle": time.time() - c.idle_since, "served": c.served, "rss_kib": rss_kib(c.pid)} for c in idle],
        "rss_kib": rss_kib(os.getpid()),
        "children_rss_kib": sum(rss_kib(c.pid) for c in kids if c.state != "idle"),
        "idle_children_rss_kib": sum(rss_kib(c.pid) for c in idle),
        "connections": sum(len(c.held) for c in idle),
        "held": [{**h, "child": c.pid} for c in idle for h in c.held],
        "idle_limit": agent.idle,
        "connection_idle_limit": connection_idle(),
    }


CONNECTION_IDLE = 600.0  # like OpenSSH's ControlPersist of 10 minutes


def connection_idle() -> float:
    """Seconds a kept SSH connection may stay idle: $SSHEXEC_CONNECTION_IDLE (0 keeps none), else 600.
    The one reading of it: ssh/pool.py keeps and closes by it, `agent status` shows it."""
    try:
        return max(0.0, float(os.environ.get("SSHEXEC_CONNECTION_IDLE", CONNECTION_IDLE)))
    except ValueError:
        return CONNECTION_IDLE


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
