"""The operator's own machine: where sshexec keeps its state, and whether a PID is still a live process.

    $SSHEXEC_HOME (default ~/.local/share/sshexec)/
        history.db              the history when it is the SQLite default: runs, logs, artifacts, tokens (store/)
        lab/, <lab name>/       the local labs (lab/core.py)

pid_alive is used by the history (a "running" run whose process is gone was
interrupted) and by the lab (the dockerd and registry it started).
"""

from __future__ import annotations

import os
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
