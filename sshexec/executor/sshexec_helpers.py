"""sshexec helpers for Python scripts: `import sshexec_helpers as sx` (SPEC §3)."""

import os
import re
import sys

__all__ = ["set_variable", "get_variable", "new_artifact", "fail_step"]

_SET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_GET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\[\]-]*$")


def _hex(value):
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    return data.hex() or "-"


def _emit(*words, fds=(1,)):
    sys.stdout.flush()
    sys.stderr.flush()
    line = "##sshexec[%s] %s\n" % (os.environ["SSHEXEC_NONCE"], " ".join(words))
    for fd in fds:
        os.write(fd, line.encode())


def _check(name, pattern):
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise ValueError("bad variable name %r" % (name,))


def set_variable(name, value, sensitive=False):
    """Set an output variable of this step."""
    _check(name, _SET_NAME)
    if not isinstance(value, (str, bytes)):
        value = str(value)
    # A sensitive value is announced on stderr too, before anything else can print it there.
    _emit("set", _hex(name), _hex(value), "1" if sensitive else "0", fds=(1, 2) if sensitive else (1,))
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    with open(os.path.join(os.environ["SSHEXEC_VARS"], name), "wb") as fh:
        fh.write(data)


def get_variable(name):
    """The value of a variable (runbook, --var, or an earlier step's output `step.Name`)."""
    _check(name, _GET_NAME)
    try:
        with open(os.path.join(os.environ["SSHEXEC_VARS"], name), "rb") as fh:
            return fh.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise KeyError("no variable named %r" % (name,)) from None


def new_artifact(path, name=None):
    """Collect this file after the step."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise FileNotFoundError("new_artifact: %s is not a file" % (path,))
    try:
        open(os.path.join(os.environ["SSHEXEC_CONTROL"], "keep"), "w").close()
    except OSError:
        pass
    _emit("artifact", _hex(full), _hex(name or os.path.basename(full)))


def fail_step(message="failed by the script"):
    """End the step as failed with this message."""
    _emit("fail", _hex(message))
    sys.stdout.flush()
    os._exit(1)
