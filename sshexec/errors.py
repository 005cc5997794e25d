"""Every error sshexec raises, and the exit code each one means.

    SshexecError                      exit 3 unless a subclass says otherwise
    ├── InputError                    2   bad inventory, runbook or argument (file, line, field; every Problem found)
    ├── WorkerError                   3   something about one worker (carries the worker name)
    │   ├── ConnectError
    │   │   ├── UnreachableError          TCP/SSH handshake failed, or timed out
    │   │   ├── AuthError                 the worker refused our credentials
    │   │   ├── HostKeyError              host key unknown (UnknownHostKey) or changed (ChangedHostKey), of the worker or a jump host,
    │   │   │                             revoked in known_hosts (RevokedHostKey), a host certificate no trusted CA vouches for (HostCertificateError)
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
    ├── DatabaseError                 3   the history's database: unreachable, refused the login, not upgraded
    ├── AgentError                    3   the resident agent could not be started or stopped
    ├── StepTimeout                   124 a step ran past its timeout
    └── Cancelled                     130 Ctrl-C / SIGTERM

A step whose script fails is not an exception: it is a StepResult with status
"failed", and the run exits 1.

Messages never contain secret values: callers build them from names, never
from variable values, and anything quoted from a script passes the masker first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


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


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is (file, line, field), what it is, and what to do."""

    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None
    hint: str | None = None

    def __post_init__(self) -> None:
        if self.file is not None and not isinstance(self.file, str):
            object.__setattr__(self, "file", str(self.file))

    @property
    def where(self) -> str:
        """`file:line field`, as much of it as is known."""
        where = self.file + (f":{self.line}" if self.line else "") if self.file else ""
        if self.field:
            where = f"{where} {self.field}" if where else self.field
        return where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message, "hint": self.hint}


class InputError(SshexecError):
    """Bad inventory, runbook or command-line argument.

    Raised with one problem (`message` and where it is) or with `problems`, every
    one found in a file at once. `file`, `line` and `field` are the first
    problem's; the message lists up to MAX_SHOWN of them, one per line.
    """

    exit_code = 2
    MAX_SHOWN = 20

    def __init__(
        self,
        message: str | None = None,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        problems: Sequence[Problem] = (),
    ):
        if message is not None:
            problems = (Problem(message, file, line, field, hint), *problems)
        if not problems:
            raise ValueError("an InputError needs a message or problems")
        self.problems: tuple[Problem, ...] = tuple(problems)
        first = self.problems[0]
        self.file, self.line, self.field = first.file, first.line, first.field
        if len(self.problems) == 1:
            super().__init__(str(first), hint=first.hint)
            return
        shown = self.problems[: self.MAX_SHOWN]
        files = {p.file for p in self.problems}
        head = f"{len(self.problems)} problems" + (f" in {first.file}" if len(files) == 1 and first.file else "") + ":"
        lines = [head]
        for p in shown:
            lines.append(f"  {p}")
            if p.hint:
                lines.append(f"    → {p.hint}")
        if len(self.problems) > len(shown):
            rest = len(self.problems) - len(shown)
            lines.append(f"  and {rest} more problem{'s' if rest > 1 else ''}")
        super().__init__("\n".join(lines))

    def to_dict(self) -> dict:
        return super().to_dict() | {
            "file": self.file, "line": self.line, "field": self.field,
            "problems": [p.to_dict() for p in self.problems],
        }  # fmt: skip


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


class RevokedHostKey(HostKeyError):
    """The key (or the CA that signed its certificate) is on an `@revoked` line of known_hosts."""


class HostCertificateError(HostKeyError):
    """A host certificate that no CA trusted for the host vouches for: another CA, expired, wrong principal, a user certificate."""


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


class DatabaseError(SshexecError):
    """The history's database cannot be used: unreachable, refused us, or at another schema revision.

    `url` is the database's URL as shown to people: never with a password.
    """

    def __init__(self, url: str, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.url = url

    def to_dict(self) -> dict:
        return {**super().to_dict(), "url": self.url}


class AgentError(SshexecError):
    """The resident agent (`sshexec agent`) could not be started or stopped."""


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


def reason(exc: BaseException) -> str:
    """One short line for a low-level exception (socket, paramiko) inside an sshexec message."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict):  # paramiko's NoValidConnectionsError: one error per address tried
        found = {str(e).split("] ", 1)[-1] for e in errors.values()}
        return "; ".join(sorted(found)) or "connection refused"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
