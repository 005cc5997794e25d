"""Where sshexec keeps its state on the operator's machine.

    $SSHEXEC_HOME (default ~/.local/share/sshexec)/
        history.db, runs/       the run history (history.py)
        tokens.json             the server's API tokens, hashed (tokens.py)
        lab/, <lab name>/       the local labs (lab/core.py)
"""

from __future__ import annotations

import os
from pathlib import Path


def state_home() -> Path:
    """$SSHEXEC_HOME, else ~/.local/share/sshexec; read at each call, so tests and labs can move it."""
    return Path(os.environ.get("SSHEXEC_HOME") or Path.home() / ".local/share/sshexec").expanduser()
