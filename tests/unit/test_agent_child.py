"""A child of the agent (agent/child.py) as its client sees it: the descriptors it was lent go back before the exit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One process plays both sides: the client sends its request with the write end of a pipe as stdout and stderr, then
# closes its own copy (as a client that got its exit code ends); the child adopts the request, writes, and finishes.
SCRIPT = textwrap.dedent(
    """
    import os, socket, sys
    sys.path.insert(0, {repo!r})
    from sshexec.agent import child, wire

    child.remember_forked()
    mine, theirs = socket.socketpair()
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    spec = ["utf-8", "strict", False, False, False]
    wire.send(theirs, wire.REQUEST, {{"argv": ["sshexec", "runs"], "cwd": "/", "env": dict(os.environ), "umask": 0o22,
              "streams": [None, spec, spec]}}, fds=[null, w, w])
    os.close(w), os.close(null)
    child.adopt(mine)
    print("said by the command")
    child.exited(0)
    child.finish()
    kind = None
    while kind != wire.EXIT:
        kind, payload, _fds = wire.recv(theirs)
    os.set_blocking(r, False)
    got = b""
    try:
        while chunk := os.read(r, 4096):
            got += chunk
        state = "ended"
    except BlockingIOError:
        state = "still open"
    os.write(child._forked["stdio"][1], f"{{state}} {{got!r}} {{payload['code']}}".encode())
    """
)


def test_the_clients_pipes_end_with_the_exit_code_not_when_the_child_is_done_forgetting():
    """`$(sshexec run ...)` reads the pipe to its end: every copy of it must be closed by the time the client exits.
    The child gives descriptors 0-2 back before it sends the exit code, not at its reset after the command's
    clean-up (which starts the next step's shell ahead: a few ms the caller would wait)."""
    p = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=str(REPO))], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode() == "ended b'said by the command\\n' 0", p.stdout
