"""sshexec: run deployment steps in Docker execution containers on agentless SSH workers.

The library API::

    from sshexec import Runner, load_inventory, load_runbook

    result = Runner(load_runbook("runbooks/demo.yaml"), load_inventory("inventory/lab.yaml")).run()
    print(result.status, result.exit_code, result.outputs())

Every error is an `SshexecError` carrying its exit code; the tree is drawn in
sshexec/errors.py. `import sshexec` stays cheap (the console script imports
it on every start): Runner and the loaders, which need paramiko and pydantic,
and the errors are imported on first use (PEP 562).
"""

# Not `from typing import TYPE_CHECKING`: typing (with re, collections, functools: ≈ 8 ms) is not on the
# thin client's path either. Type checkers read the block below all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .errors import (  # noqa: F401
        AgentError,
        AuthError,
        Cancelled,
        ChangedHostKey,
        ConnectError,
        ConnectionLost,
        DaemonDown,
        DatabaseError,
        DiskFull,
        DockerError,
        DockerMissing,
        DockerPermission,
        HostCertificateError,
        HostKeyError,
        ImageRefused,
        InputError,
        LockBusy,
        LoginError,
        NoFreeSlot,
        Problem,
        PullError,
        RemoteTimeout,
        RevokedHostKey,
        SshexecError,
        StepTimeout,
        UnknownHostKey,
        UnreachableError,
        WorkerError,
    )
    from .config.inventory import load_inventory
    from .config.runbook import load_runbook
    from .run.result import RunResult
    from .run.runner import Runner

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # running
    "Runner",
    "RunResult",
    "load_inventory",
    "load_runbook",
    # errors (sshexec/errors.py)
    "SshexecError",
    "InputError",
    "Problem",
    "WorkerError",
    "ConnectError",
    "UnreachableError",
    "AuthError",
    "HostKeyError",
    "UnknownHostKey",
    "ChangedHostKey",
    "RevokedHostKey",
    "HostCertificateError",
    "ConnectionLost",
    "RemoteTimeout",
    "DockerError",
    "DockerMissing",
    "DaemonDown",
    "DockerPermission",
    "LoginError",
    "PullError",
    "ImageRefused",
    "DiskFull",
    "LockBusy",
    "NoFreeSlot",
    "DatabaseError",
    "AgentError",
    "StepTimeout",
    "Cancelled",
]

# name -> the module that defines it, imported when the name is first used
_LAZY = {
    "Runner": ".run.runner",
    "RunResult": ".run.result",
    "load_inventory": ".config.inventory",
    "load_runbook": ".config.runbook",
    # The errors too: the agent's thin client imports the package (sshexec.agent) on every command, and
    # errors.py (dataclasses, inspect: ≈ 10 ms) is not on its path.
    **{
        name: ".errors"
        for name in (
            "AgentError", "AuthError", "Cancelled", "ChangedHostKey", "ConnectError", "ConnectionLost",
            "DaemonDown", "DatabaseError", "DiskFull", "DockerError", "DockerMissing", "DockerPermission",
            "HostCertificateError", "HostKeyError", "ImageRefused", "InputError", "LockBusy", "LoginError",
            "NoFreeSlot", "Problem", "PullError", "RemoteTimeout", "RevokedHostKey", "SshexecError",
            "StepTimeout", "UnknownHostKey", "UnreachableError", "WorkerError"
        )
    },
}


def __getattr__(name: str):
    # __import__, not importlib.import_module: importlib (with warnings) is not on the thin client's path.
    if name == "errors":
        return __import__(f"{__name__}.errors", fromlist=["errors"])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(__import__(__name__ + module, fromlist=[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
