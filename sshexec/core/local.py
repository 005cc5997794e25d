"""The operator's own machine: where sshexec keeps its state, and whether a PID is still a live process.

    $SSHEXEC_HOME (default ~/.local/share/sshexec)/
        history.db              the history when it is the SQLite default: runs, logs, artifacts, tokens (store/)
        lab/, <lab name>/       the local labs (lab/core.py)

pid_alive is used by the history (a "running" run whose process is gone was
interrupted) and by the lab (the dockerd and registry it started). A PID is
reused once its process is gone: process_identity (boot and start time) tells
the process that had it from a later one, and signal_process signals a PID
only while it is still that process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def state_home() -> Path:
    """$SSHEXEC_HOME, else ~/.local/share/sshexec; read at each call, so tests and labs can move it."""
    return Path(os.environ.get("SSHEXEC_HOME") or Path.home() / ".local/share/sshexec").expanduser()


def pid_alive(pid: int | None) -> bool:
    """True if `pid` is a process that has not exited (a zombie has)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists": check its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def process_identity(pid: int | None) -> str | None:
    """`BOOT_ID/START`: which process `pid` is (its start, in clock ticks since this boot); None if there is none."""
    if not pid:
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name, which may itself hold spaces and parentheses.
    return f"{boot}/{stat.rsplit(')', 1)[1].split()[19]}"


def signal_process(pid: int, identity: str, sig: int = signal.SIGTERM) -> bool:
    """Send `sig` to `pid` only if it is still the process `identity` names; False (nothing sent) otherwise.

    A pidfd holds the process while its identity is checked, so it cannot be
    replaced between the check and the signal.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if process_identity(pid) != identity:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
