"""`sshexec agent start|stop|status`: the resident agent that makes run, check, logs and runs start fast."""

from __future__ import annotations

import time

from invoke import task

from ..errors import AgentError, InputError
from . import ui
from .common import HELP_JSON, optional_operands
from .complete import option_values

ACTIONS = ("start", "stop", "status")


@option_values(action=ACTIONS)
@optional_operands("action")
@task(positional=["action"], help={"action": "start | stop | status (default)", "json": HELP_JSON})
def agent(c, action=None, json=False):
    """The resident agent: run, check, logs and runs start fast.

    With an agent, `sshexec run|check|logs|runs` import only Python's standard
    library and hand the command over a Unix socket (0600, in a 0700 directory
    of yours: $XDG_RUNTIME_DIR/sshexec, else $SSHEXEC_HOME/agent); the agent
    forks a child that runs it with your terminal, working directory and
    environment, exactly as before. A child whose command ended cleanly is
    kept for the next one, with its SSH connections (closed after
    SSHEXEC_CONNECTION_IDLE seconds idle, 600 by default). SSHEXEC_AGENT=auto
    (the default) starts the agent on first use; SSHEXEC_AGENT=0 runs every
    command in-process.

      start   start it now (one that runs another sshexec version is replaced)
      stop    end it; commands it is running finish by themselves
      status  its PID, uptime, commands running and served, the SSH
              connections kept (worker or bastion, idle time), memory
    """
    from ..agent import client, wire

    action = action or "status"
    if action not in ACTIONS:
        raise InputError(f"unknown agent action {action!r}: start, stop or status")
    paths = wire.Paths.current()
    if action == "start":
        now = client.status(paths)
        if now is not None and now.get("identity") != wire.identity():
            client.stop(paths)
            now = None
        if now is None:
            client.start(paths, defer=False)
            try:
                now = client.wait_until_up(paths)
            except client.AgentError as exc:
                raise AgentError(str(exc), hint="run the command with SSHEXEC_AGENT=0 meanwhile") from None
        _show(now, json, "agent running")
    elif action == "stop":
        try:
            pid = client.stop(paths)
        except client.AgentError as exc:
            raise AgentError(str(exc)) from None
        if json:
            ui.print_json({"stopped": pid})
        else:
            ui.info(f"agent (pid {pid}) stopped" if pid else "no agent was running")
    else:
        now = client.status(paths)
        if now is None:
            if json:
                ui.print_json({"running": False, "socket": paths.socket})
            else:
                ui.info(f"no agent is running (socket {paths.socket}); it starts on first use unless SSHEXEC_AGENT=0")
            return
        _show(now, json, "agent running")


def _show(now: dict, json: bool, title: str) -> None:
    from ..agent import wire

    now = dict(now, running_commands=now.pop("running"), current=now.get("identity") == wire.identity())
    if json:
        ui.print_json({"running": True, **now})
        return
    idle = now.get("idle_children", [])
    memory = f"{now['rss_kib'] / 1024:.1f} MiB (agent)"
    if idle:
        memory += f" + {now.get('idle_children_rss_kib', 0) / 1024:.1f} MiB ({len(idle)} idle)"
    memory += f" + {now['children_rss_kib'] / 1024:.1f} MiB (running)"
    lines = [
        f"{title}: pid {now['pid']}, up {_duration(now['uptime'])}" + ("" if now["current"] else " (another sshexec: the next command replaces it)"),
        f"  socket    {now['socket']}",
        f"  log       {now['log']}",
        f"  commands  {len(now['running_commands'])} running, {now['served']} served",
        f"  memory    {memory}",
        f"  connections kept: {now['connections']} (closed after {_duration(now.get('connection_idle_limit', 600))} idle)",
    ]
    for h in now.get("held", []):
        lines.append(f"    {h['kind']:<8} {h['name'][:20]:<20} {h['address'][:24]:<24} idle {_duration(h['idle'])}")
    lines.append(f"  ends after {_duration(now['idle_limit'])} without a command (SSHEXEC_AGENT_IDLE)")
    ui.info("\n".join(lines))


def _duration(seconds: float) -> str:
    """3s, 4m 05s, 2h 10m: whole seconds, as a person reads an uptime."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


TASKS = (agent,)
