"""Docker verbs on a worker, as constant scriptlets: stage, pull, run, clean up, sweep.

Every scriptlet is a fixed sh program; values reach it as positional
parameters, the docker command of the inventory is substituted as quoted words,
and the registry password comes on stdin. See command.Scriptlet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .command import Scriptlet
from .errors import DiskFull, DockerError, ImageRefused, LoginError, PullError, WorkerError
from .health import classify_docker_failure
from .inventory import Worker

IMAGE_FORMAT = "{{json .Config.Entrypoint}}\t{{json .Config.Cmd}}\t{{json .Config.User}}\t{{.Os}}\t{{.Architecture}}\t{{.Id}}"

# Exit codes of our scriptlets (not of any script).
E_MKDIR, E_STEPDIR, E_TAR, E_LOGIN, E_PULL = 101, 102, 103, 90, 91

_EXPAND_ROOT = r"""
case $root in "~") root=$HOME ;; "~/"*) root=$HOME/${root#"~/"} ;; esac
"""

STAGE = Scriptlet(
    "stage",
    r"""
root=$1 run=$2 step=$3 exe=$4; shift 4
""" + _EXPAND_ROOT + r"""
umask 077
mkdir -p "$root/runs/$run" 2>&1 || exit 101
S=$root/runs/$run/$step
mkdir "$S" 2>&1 || exit 102
umask 022
if ! out=$(tar -x -o -C "$S" -f - 2>&1); then printf '%s\n' "$out" >&2; rm -rf "$S"; exit 103; fi
chmod 755 "$S" && chmod 777 "$S/files" "$S/ctl"
printf 'root\t%s\nuid\t%s\ngid\t%s\nmachine\t%s\n' "$root" "$(id -u)" "$(id -g)" "$(uname -m)"
if [ -f "$root/executor/$exe/run.sh" ]; then echo "executor	ok"; else echo "executor	missing"; fi
for img; do
  if info=$({docker} image inspect --format '""" + IMAGE_FORMAT + r"""' "$img" 2>&1); then
    printf 'image\t%s\t%s\n' "$img" "$info"
  else
    printf 'noimage\t%s\t%s\n' "$img" "$(printf '%s' "$info" | tr '\t\n' '  ')"
  fi
done
""",
)

UPLOAD_EXECUTOR = Scriptlet(
    "executor",
    r"""
root=$1 exe=$2
""" + _EXPAND_ROOT + r"""
umask 022
mkdir -p "$root/executor" || exit 101
[ -f "$root/executor/$exe/run.sh" ] && exit 0
tmp=$root/executor/.tmp.$$.$exe
rm -rf "$tmp"; mkdir "$tmp" || exit 101
if ! tar -x -o -C "$tmp" -f -; then rm -rf "$tmp"; exit 103; fi
# Atomic: a concurrent upload of the same version either wins or finds ours.
mv "$tmp" "$root/executor/$exe" 2>/dev/null || rm -rf "$tmp"
[ -f "$root/executor/$exe/run.sh" ]
""",
)

PULL = Scriptlet(
    "pull",
    r"""
img=$1 registry=$2 user=$3 root=$4 cfg=$5
""" + _EXPAND_ROOT + r"""
cfg=$root/$cfg
if [ -n "$user" ]; then
  umask 077
  trap 'rm -rf "$cfg"' EXIT
  trap 'rm -rf "$cfg"; exit 129' HUP INT TERM PIPE
  mkdir -p "$cfg" || exit 101
  if ! out=$({docker} --config "$cfg" login --username "$user" --password-stdin "$registry" 2>&1); then
    printf '%s\n' "$out" >&2; exit 90
  fi
  {docker} --config "$cfg" pull "$img" </dev/null || exit 91
else
  {docker} pull "$img" </dev/null || exit 91
fi
printf 'image\t%s\t' "$img"
{docker} image inspect --format '""" + IMAGE_FORMAT + r"""' "$img"
""",
)

# Run the container, then remove the step directory unless artifacts wait in it.
RUN = Scriptlet(
    "run",
    r"""
S=$1 R=$2 run=$3 name=$4 img=$5; shift 5
{docker} run "$@"
rc=$?
[ "$rc" -ge 125 ] && {docker} wait "$name" >/dev/null 2>&1
if [ ! -e "$S/ctl/keep" ]; then
  if ! rm -rf "$S" 2>/dev/null; then
    {docker} run --rm -u 0:0 --label "sshexec.run=$run" --log-driver none -v "$S:$S" "$img" /bin/sh -c 'rm -rf "$0"/files "$0"/ctl "$0"/script' "$S" >/dev/null 2>&1
    rm -rf "$S" 2>/dev/null
  fi
  rmdir "$R" 2>/dev/null
fi
[ -e "$S" ] && [ ! -e "$S/ctl/keep" ] && echo "##sshexec-left $S" >&2
exit $rc
""",
)

CLEAN_STEP = Scriptlet(
    "clean",
    r"""
S=$1 R=$2 run=$3 img=$4
if [ -e "$S" ] && ! rm -rf "$S" 2>/dev/null; then
  {docker} run --rm -u 0:0 --label "sshexec.run=$run" --log-driver none -v "$S:$S" "$img" /bin/sh -c 'rm -rf "$0"/files "$0"/ctl "$0"/script' "$S" >/dev/null 2>&1
  rm -rf "$S" 2>/dev/null
fi
rmdir "$R" 2>/dev/null
[ ! -e "$S" ]
""",
)

LEFT_MARKER = "##sshexec-left "

# SIGTERM lets the executor stop the script and open up its files for cleanup; KILL after 2 s.
STOP = Scriptlet("stop", r"""{docker} stop -t 2 "$1" >/dev/null 2>&1; {docker} rm -f "$1" >/dev/null 2>&1; exit 0""")

# After a run that did not end cleanly: no container, step directory or credential of it stays.
SWEEP = Scriptlet(
    "sweep",
    r"""
root=$1 run=$2 img=$3
""" + _EXPAND_ROOT + r"""
ids=$({docker} ps -aq --filter "label=sshexec.run=$run" 2>/dev/null)
[ -n "$ids" ] && {docker} rm -f $ids >/dev/null 2>&1
R=$root/runs/$run
if [ -e "$R" ] && ! rm -rf "$R" 2>/dev/null && [ -n "$img" ]; then
  {docker} run --rm -u 0:0 --label "sshexec.run=$run" --log-driver none -v "$R:$R" "$img" /bin/sh -c 'rm -rf "$0"/*' "$R" >/dev/null 2>&1
  rm -rf "$R" 2>/dev/null
fi
[ ! -e "$R" ]
""",
)


ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm",
        "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip


@dataclass(frozen=True)
class ImageInfo:
    ref: str
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    user: str
    os: str
    arch: str
    id: str

    @classmethod
    def parse(cls, ref: str, fields: list[str]) -> "ImageInfo":
        entry, cmd, user, os_, arch, id_ = fields[:6]
        ep = json.loads(entry)
        c = json.loads(cmd)
        return cls(ref, tuple(ep) if ep else None, tuple(c) if c else None, json.loads(user) or "", os_, arch, id_)


@dataclass(frozen=True)
class Staged:
    root: str
    uid: str
    gid: str
    machine: str
    executor_ok: bool
    images: dict[str, ImageInfo | str]  # ref -> info, or the reason it is absent


def parse_stage(text: str) -> Staged:
    facts: dict[str, str] = {}
    images: dict[str, ImageInfo | str] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[0] == "image" and len(fields) >= 8:
            images[fields[1]] = ImageInfo.parse(fields[1], fields[2:])
        elif fields[0] == "noimage" and len(fields) >= 2:
            images[fields[1]] = fields[2] if len(fields) > 2 else ""
        elif len(fields) == 2:
            facts[fields[0]] = fields[1]
    return Staged(
        root=facts.get("root", ""),
        uid=facts.get("uid", ""),
        gid=facts.get("gid", ""),
        machine=facts.get("machine", ""),
        executor_ok=facts.get("executor") == "ok",
        images=images,
    )


def absent_is_docker_failure(reason: str) -> bool:
    """True if `docker image inspect` failed because of docker, not because the image is absent."""
    low = reason.lower()
    return "no such image" not in low and "no such object" not in low


def preflight(worker: Worker, info: ImageInfo, machine: str) -> None:
    """Refuse images sshexec must not run (SPEC §4). A CMD is fine: the executor replaces it."""
    if info.entrypoint:
        raise ImageRefused(
            worker.name,
            f"image {info.ref} has ENTRYPOINT {json.dumps(list(info.entrypoint))}; sshexec runs its executor as the "
            "container's command and never overrides an ENTRYPOINT",
            hint=f"use an image without ENTRYPOINT, or build one: FROM {info.ref} + ENTRYPOINT []",
        )
    if info.os and info.os != "linux":
        raise ImageRefused(worker.name, f"image {info.ref} is for {info.os}, not linux", hint="use a linux image")
    want = ARCH.get(machine, machine)
    if info.arch and want and info.arch != want:
        raise ImageRefused(
            worker.name,
            f"image {info.ref} is for {info.os}/{info.arch} but {worker.name} is {info.os or 'linux'}/{want}",
            hint=f"use an image built for {want} (a multi-arch tag, or --platform when building)",
        )


def stage_error(worker: Worker, code: int, stderr: str) -> WorkerError:
    low = stderr.lower()
    if "no space left" in low or "disk quota" in low:
        return DiskFull(worker.name, f"no space left on {worker.name} in its work_root", hint="free space on the worker or point work_root at a bigger disk")
    if code in (E_MKDIR, E_STEPDIR):
        return WorkerError(worker.name, f"cannot create the run directory under work_root {worker.work_root}: {stderr.strip()[:300]}", hint="check work_root in the inventory and its permissions")
    if code == E_TAR:
        return WorkerError(worker.name, f"unpacking the bundle failed: {stderr.strip()[:300]}", hint="check free space and that tar works on the worker")
    return WorkerError(worker.name, f"preparing the step failed (exit {code}): {stderr.strip()[:300]}")


def pull_error(worker: Worker, image: str, code: int, output: str, feed: str | None) -> DockerError:
    err = _pull_error(worker, image, code, output, feed)
    low = output.lower()
    err.transient = code != E_LOGIN and any(t in low for t in TRANSIENT)
    return err


def _pull_error(worker: Worker, image: str, code: int, output: str, feed: str | None) -> DockerError:
    low = output.lower()
    if code == E_LOGIN:
        return _login_error(worker, feed, output)
    if "manifest unknown" in low or "not found" in low or "does not exist" in low:
        return PullError(worker.name, f"image {image} not found in its registry", hint="check the image name and tag, and that it was pushed")
    if "unauthorized" in low or "no basic auth" in low or "authentication required" in low or "denied" in low:
        hint = "set container.feed in the runbook to a feed with credentials for that registry" if not feed else f"check the credentials of feed {feed}"
        return PullError(worker.name, f"the registry refused to serve {image} (authentication required)", hint=hint)
    if "connection refused" in low or "no such host" in low or "timeout" in low or "i/o timeout" in low:
        return PullError(worker.name, f"cannot reach the registry of {image} from {worker.name}: {_last(output)}", hint="check the registry address and the worker's network")
    if "no space left" in low:
        return PullError(worker.name, f"no space left on {worker.name} to pull {image}", hint="free disk space on the worker (docker image prune)")
    err = classify_docker_failure(worker, output)
    if type(err) is not DockerError:
        return err
    return PullError(worker.name, f"pulling {image} failed: {_last(output)}")


def _login_error(worker: Worker, feed: str | None, output: str) -> DockerError:
    return LoginError(
        worker.name,
        f"registry login failed for feed {feed} on {worker.name}: {_last(output)}",
        hint=f"check the username and password of feed {feed} (password_env in the inventory)",
    )


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


TRANSIENT = ("service unavailable", "bad gateway", "internal server error", "gateway timeout", "connection reset",
             "unexpected eof", "tls handshake timeout", "i/o timeout", "connection refused", "no route to host",
             "temporary failure", "too many requests")  # fmt: skip


def is_transient(err: DockerError) -> bool:
    """Worth another pull attempt: the registry or the network hiccupped."""
    return bool(getattr(err, "transient", False))
