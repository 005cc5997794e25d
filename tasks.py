"""`inv --list` shows the same tasks as `sshexec --list`: this re-exports sshexec's collection."""

from sshexec.cli import ns  # noqa: F401
