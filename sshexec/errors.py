"""Every error sshexec raises, and the exit code each one means.

    SshexecError                      exit 3 unless a subclass says otherwise
    ├── InputError                    2   bad inventory, runbook or argument (file, line, field)
    ├── WorkerError                   3   something about one worker (carries the worker name)
    │   ├── ConnectError
    │   │   ├── UnreachableError          TCP/SSH handshake failed, or timed out
    │   │   ├── AuthError                 the worker refused our credentials
    │   │   ├── HostKeyError              host key unknown (UnknownHostKey) or changed (ChangedHostKey), of the worker or a jump host
    │   │   └── ConnectionLost            the connection died mid-command
    │   ├── RemoteTimeout                 a remote command or transfer passed its deadline
    │   ├── DockerError
    │   │   ├── DockerMissing             no docker CLI on the worker
    │   │   ├── DaemonDown                the CLI cannot reach a daemon
    │   │   ├── DockerPermission          the SSH user may not use the Docker socket
    │   │   ├── LoginError                registry login failed
    │   │   ├── PullError                 image not found / pull failed
    │   │   └── ImageRefused              ENTRYPOINT, wrong architecture, missing interpreter
    │   ├── DiskFull                      no space left on the worker
    │   ├── LockBusy                      a `lock:` is held on the worker by another live run
    │   └── NoFreeSlot                    every `max_steps` slot of the worker is in use
    ├── StepTimeout                   124 a step ran past its timeout
    └── Cancelled                     130 Ctrl-C / SIGTERM

A step whose script fails is not an exception: it is a StepResult with status
"failed", and the run exits 1.

Messages never contain secret values: callers build them from names, never
from variable values, and anything quoted from a script passes the masker first.
"""

from __future__ import annotations

from pathlib import Path


class SshexecError(Exception):
    """Root of the tree. `hint` says what to do about it."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  → {self.hint}"

    def to_dict(self) -> dict:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint}


class InputError(SshexecError):
    """Bad inventory, runbook or command-line argument."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        where = ""
        if self.file:
            where = self.file + (f":{line}" if line else "")
        if field:
            where = f"{where} {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint=hint)

    def to_dict(self) -> dict:
        return super().to_dict() | {"file": self.file, "line": self.line, "field": self.field}


class WorkerError(SshexecError):
    """Something went wrong with one worker; the message starts with its name."""

    def __init__(self, worker: str, message: str, *, hint: str | None = None):
        self.worker = worker
        super().__init__(f"{worker}: {message}", hint=hint)

    def to_dict(self) -> dict:
        return super().to_dict() | {"worker": self.worker}


class ConnectError(WorkerError):
    pass


class UnreachableError(ConnectError):
    def __init__(self, worker: str, message: str, *, attempts: int = 1, hint: str | None = None):
        self.attempts = attempts
        super().__init__(worker, message, hint=hint)


class AuthError(ConnectError):
    pass


class HostKeyError(ConnectError):
    """`hop` names the jump host whose key it is (None: the worker's own key)."""

    def __init__(self, worker: str, message: str, *, fingerprint: str, hop: str | None = None, hint: str | None = None):
        self.fingerprint = fingerprint
        self.hop = hop
        super().__init__(worker, message, hint=hint)

    def to_dict(self) -> dict:
        return super().to_dict() | {"fingerprint": self.fingerprint, "hop": self.hop}


class UnknownHostKey(HostKeyError):
    pass


class ChangedHostKey(HostKeyError):
    pass


class ConnectionLost(ConnectError):
    pass


class RemoteTimeout(WorkerError):
    """A remote command or transfer passed its deadline."""


class DockerError(WorkerError):
    pass


class DockerMissing(DockerError):
    pass


class DaemonDown(DockerError):
    pass


class DockerPermission(DockerError):
    pass


class LoginError(DockerError):
    pass


class PullError(DockerError):
    pass


class ImageRefused(DockerError):
    pass


class DiskFull(WorkerError):
    pass


class LockBusy(WorkerError):
    """`lock` is held on the worker by another run whose heartbeat is fresh; `holder` describes it."""

    def __init__(self, worker: str, message: str, *, lock: str, holder: str, hint: str | None = None):
        self.lock = lock
        self.holder = holder
        super().__init__(worker, message, hint=hint)

    def to_dict(self) -> dict:
        return super().to_dict() | {"lock": self.lock, "holder": self.holder}


class NoFreeSlot(WorkerError):
    """Every one of the worker's `max_steps` slots runs a step container (`holders`: their runs)."""

    def __init__(self, worker: str, message: str, *, holders: tuple[str, ...] = (), hint: str | None = None):
        self.holders = holders
        super().__init__(worker, message, hint=hint)


class StepTimeout(SshexecError):
    exit_code = 124


class Cancelled(SshexecError):
    exit_code = 130


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an exception (3 for anything unexpected)."""
    if isinstance(exc, SshexecError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return Cancelled.exit_code
    return 3
