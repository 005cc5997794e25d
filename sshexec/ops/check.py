"""`sshexec check`: the health of one worker, gathered in one SSH round trip.

A worker in no pool runs no step: it is a jump host, and only SSH and its host
key are checked (docker is "not required"). For the others, besides the docker
CLI, daemon and permission: which daemon answered (the endpoint the docker CLI
used, and the daemon's ID, name and data directory from `docker info`), and the
free disk both in work_root and where that daemon keeps its images and containers.
"""

from __future__ import annotations

from ..config.inventory import Worker
from ..errors import (
    DaemonDown,
    DiskFull,
    DockerMissing,
    DockerPermission,
    SshexecError,
    WorkerError,
)
from ..ssh import Connection
from ..views import ErrorView, WorkerHealth, WorkerSlots
from ..worker.coord import ROOT_SH, SLOT_ALIVE_SH
from ..worker.docker_errors import classify_docker_failure
from ..worker.scriptlet import Scriptlet

LOW_FREE_BYTES = 1 << 30  # a warning below this
MIN_FREE_BYTES = 100 << 20  # unhealthy below this

CHECK = Scriptlet(
    "check",
    r"""
root=$1 endpoint=$2
""" + ROOT_SH + SLOT_ALIVE_SH + r"""
printf 'work_root=%s\n' "$root"
p=$root
while [ ! -d "$p" ]; do p=${p%/*}; [ -n "$p" ] || p=/; done
if [ -w "$p" ]; then echo writable=1; else echo writable=0; fi
df -Pk "$p" 2>/dev/null | { read -r _; read -r _ _ _ avail _; echo "free_kb=$avail"; }
printf 'machine=%s\n' "$(uname -m)"
printf 'node=%s\n' "$node"
n=0
for d in "$C"/slots/*; do [ -d "$d" ] && co_alive "$d" && n=$((n + 1)); done
echo "slots_used=$n"
set -- {docker}
if command -v "$1" >/dev/null 2>&1; then echo cli=1; else echo cli=0; exit 0; fi
out=$({docker} version --format '{{.Server.Version}} {{.Server.Os}} {{.Server.Arch}}' 2>&1)
rc=$?
echo "docker_rc=$rc"
if [ "$rc" = 0 ]; then
  # The endpoint the docker CLI used: docker_host's when set, else its context's (or DOCKER_HOST's).
  [ -n "$endpoint" ] || endpoint=$({docker} context inspect --format '{{.Endpoints.docker.Host}}' 2>/dev/null)
  printf 'endpoint=%s\n' "$endpoint"
  info=$({docker} info --format '{{.ID}}	{{.Name}}	{{.DockerRootDir}}' 2>/dev/null)
  printf 'daemon=%s\n' "$info"
  d=${info##*	}
  case $d in /*) df -Pk "$d" 2>/dev/null | { read -r _; read -r _ _ _ avail _; echo "docker_free_kb=$avail"; } ;; esac
fi
echo "--docker--"
printf '%s\n' "$out"
""",
)


def parse_check(worker: Worker, output: str) -> dict:
    """The scriptlet's key=value lines, and the docker output after `--docker--`."""
    head, _, docker_out = output.partition("--docker--\n")
    facts = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    facts["docker_out"] = docker_out.strip()
    return facts


def check_worker(worker: Worker, *, retries: int = 1) -> WorkerHealth:
    """Connect to `worker` and report its health; never raises for worker problems."""
    jump_host = not worker.pools
    base = WorkerHealth(worker=worker.name, address=worker.address, docker_required=not jump_host, slots=WorkerSlots(max=worker.max_steps))
    try:
        with Connection(worker, retries=retries) as conn:
            if jump_host:
                return _replace(base, ssh=True, host_key=True)  # connected: host key verified, logged in
            result = conn.run(CHECK.command(worker.docker, worker.work_root, worker.docker_host or ""), timeout=30)
    except WorkerError as exc:
        from ..errors import HostKeyError

        return _replace(base, ssh=isinstance(exc, HostKeyError), host_key=False if isinstance(exc, HostKeyError) else None, error=exc)
    facts = parse_check(worker, result.text())
    h = _replace(
        base,
        ssh=True,
        host_key=True,
        work_root=facts.get("work_root"),
        writable=facts.get("writable") == "1",
        free_bytes=int(facts["free_kb"]) * 1024 if facts.get("free_kb", "").isdigit() else None,
        node=facts.get("node") or None,
        slots=WorkerSlots(used=int(facts["slots_used"]) if facts.get("slots_used", "").isdigit() else None, max=worker.max_steps),
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
    h = _replace(h, **_daemon_facts(worker, facts))
    warnings = []
    if not h.writable:
        return _replace(h, error=WorkerError(worker.name, f"work_root {h.work_root} is not writable by the SSH user", hint="fix its owner, or set work_root in the inventory"))
    if h.free_bytes is not None and h.free_bytes < MIN_FREE_BYTES:
        return _replace(h, error=DiskFull(worker.name, f"disk full: only {h.free_bytes // (1 << 20)} MiB free in {h.work_root}", hint="free space on the worker (docker system prune), or point work_root at a bigger disk"))
    if h.docker_free_bytes is not None and h.docker_free_bytes < MIN_FREE_BYTES:
        return _replace(h, error=DiskFull(worker.name, f"disk full: only {h.docker_free_bytes // (1 << 20)} MiB free where its Docker daemon keeps images ({h.docker_root})",
                                          hint="free space on the worker: docker system prune, docker image prune -a"))  # fmt: skip
    if h.free_bytes is not None and h.free_bytes < LOW_FREE_BYTES:
        warnings.append(f"{worker.name}: only {h.free_bytes // (1 << 20)} MiB free in {h.work_root}")
    if h.docker_free_bytes is not None and h.docker_free_bytes < LOW_FREE_BYTES:
        warnings.append(f"{worker.name}: only {h.docker_free_bytes // (1 << 20)} MiB free in {h.docker_root} (its Docker daemon's images)")
    return _replace(h, warnings=tuple(warnings))


def _daemon_facts(worker: Worker, facts: dict) -> dict:
    """Which daemon answered, and the free disk where it keeps its data."""
    daemon_id, name, root = (facts.get("daemon", "").split("\t") + ["", "", ""])[:3]
    free = facts.get("docker_free_kb", "")
    return {
        # An old docker CLI has no `context`: then the CLI's default.
        "endpoint": facts.get("endpoint") or "unix:///var/run/docker.sock",
        "daemon_id": daemon_id or None,
        "daemon_name": name or None,
        "docker_root": root or None,
        "docker_free_bytes": int(free) * 1024 if free.isdigit() else None,
    }


def _replace(h: WorkerHealth, *, error: SshexecError | None = None, **changes) -> WorkerHealth:
    if error is not None:
        changes["error"] = ErrorView(**error.to_dict())
    if "warnings" in changes:
        changes["warnings"] = list(changes["warnings"])
    return h.model_copy(update=changes)
