"""`sshexec check`: the health of one worker, gathered in one SSH round trip."""

from __future__ import annotations

from dataclasses import dataclass, field

from .command import Scriptlet
from .connection import Connection
from .docker_errors import classify_docker_failure
from .errors import (
    DaemonDown,
    DiskFull,
    DockerMissing,
    DockerPermission,
    SshexecError,
    WorkerError,
)
from .inventory import Worker

LOW_FREE_BYTES = 1 << 30  # a warning below this
MIN_FREE_BYTES = 100 << 20  # unhealthy below this

CHECK = Scriptlet(
    "check",
    r"""
root=$1
case $root in "~") root=$HOME ;; "~/"*) root=$HOME/${root#"~/"} ;; esac
printf 'work_root=%s\n' "$root"
p=$root
while [ ! -d "$p" ]; do p=${p%/*}; [ -n "$p" ] || p=/; done
if [ -w "$p" ]; then echo writable=1; else echo writable=0; fi
df -Pk "$p" 2>/dev/null | { read -r _; read -r _ _ _ avail _; echo "free_kb=$avail"; }
printf 'machine=%s\n' "$(uname -m)"
set -- {docker}
if command -v "$1" >/dev/null 2>&1; then echo cli=1; else echo cli=0; exit 0; fi
out=$({docker} version --format '{{.Server.Version}} {{.Server.Os}} {{.Server.Arch}}' 2>&1)
echo "docker_rc=$?"
echo "--docker--"
printf '%s\n' "$out"
""",
)


@dataclass(frozen=True)
class Health:
    """One worker's health. `error` is the first problem found, with what to do."""

    worker: str
    address: str
    ssh: bool = False
    host_key: bool | None = None
    docker_cli: bool | None = None
    daemon: bool | None = None
    permission: bool | None = None
    version: str | None = None
    platform: str | None = None
    free_bytes: int | None = None
    work_root: str | None = None
    writable: bool | None = None
    error: SshexecError | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {
            "worker": self.worker,
            "address": self.address,
            "healthy": self.healthy,
            "ssh": self.ssh,
            "host_key": self.host_key,
            "docker_cli": self.docker_cli,
            "daemon": self.daemon,
            "permission": self.permission,
            "version": self.version,
            "platform": self.platform,
            "free_bytes": self.free_bytes,
            "work_root": self.work_root,
            "writable": self.writable,
            "error": self.error.to_dict() if self.error else None,
            "warnings": list(self.warnings),
        }


def parse_check(worker: Worker, output: str) -> dict:
    """The scriptlet's key=value lines, and the docker output after `--docker--`."""
    head, _, docker_out = output.partition("--docker--\n")
    facts = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    facts["docker_out"] = docker_out.strip()
    return facts


def check_worker(worker: Worker, *, retries: int = 1) -> Health:
    """Connect to `worker` and report its health; never raises for worker problems."""
    base = Health(worker=worker.name, address=worker.address)
    try:
        with Connection(worker, retries=retries) as conn:
            result = conn.run(CHECK.command(worker.docker, worker.work_root), timeout=30)
    except WorkerError as exc:
        from .errors import HostKeyError

        return _replace(base, ssh=isinstance(exc, HostKeyError), host_key=False if isinstance(exc, HostKeyError) else None, error=exc)
    facts = parse_check(worker, result.text())
    h = _replace(
        base,
        ssh=True,
        host_key=True,
        work_root=facts.get("work_root"),
        writable=facts.get("writable") == "1",
        free_bytes=int(facts["free_kb"]) * 1024 if facts.get("free_kb", "").isdigit() else None,
    )
    if facts.get("cli") != "1":
        return _replace(h, docker_cli=False, error=classify_docker_failure(worker, f"{worker.docker[0]}: command not found"))
    h = _replace(h, docker_cli=True)
    if facts.get("docker_rc") != "0":
        err = classify_docker_failure(worker, facts["docker_out"])
        if isinstance(err, DockerMissing):
            return _replace(h, docker_cli=False, error=err)
        if isinstance(err, DockerPermission):
            return _replace(h, daemon=None, permission=False, error=err)
        if isinstance(err, DaemonDown):
            return _replace(h, daemon=False, error=err)
        return _replace(h, error=err)
    version, _, platform = facts["docker_out"].partition(" ")
    h = _replace(h, daemon=True, permission=True, version=version, platform=platform.replace(" ", "/"))
    warnings = []
    if not h.writable:
        return _replace(h, error=WorkerError(worker.name, f"work_root {h.work_root} is not writable by the SSH user", hint="fix its owner, or set work_root in the inventory"))
    if h.free_bytes is not None and h.free_bytes < MIN_FREE_BYTES:
        return _replace(h, error=DiskFull(worker.name, f"disk full: only {h.free_bytes // (1 << 20)} MiB free in {h.work_root}", hint="free space on the worker (docker system prune), or point work_root at a bigger disk"))
    if h.free_bytes is not None and h.free_bytes < LOW_FREE_BYTES:
        warnings.append(f"{worker.name}: only {h.free_bytes // (1 << 20)} MiB free in {h.work_root}")
    return _replace(h, warnings=tuple(warnings))


def _replace(h: Health, **changes) -> Health:
    from dataclasses import replace

    return replace(h, **changes)
