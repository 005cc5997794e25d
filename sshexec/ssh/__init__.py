"""SSH to workers: the only package that imports paramiko.

Its face is `Connection`: open it (through every jump host, each hop's host
key verified against known_hosts, then log in), run commands, stream them,
use SFTP. `Result` is what a command did; `Aborted` says that `stream` stopped
one. `hostkeys` and `trust` serve `sshexec trust`. Everything else
(`_dial`, `_route`, `_login`, `_gate`) is private to this package.
"""

from .connection import Connection
from .result import Aborted, CancelledRemote, Result

__all__ = ["Aborted", "CancelledRemote", "Connection", "Result"]
