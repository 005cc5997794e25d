"""Docker verbs on a worker, as constant scriptlets: stage, pull, run, clean up, sweep.

Every scriptlet is a fixed sh program; values reach it as positional
parameters, the docker command of the inventory is substituted as quoted words,
and the registry password comes on stdin. See command.Scriptlet.

What sshexec keeps in a worker's work_root. Several workers may share one
work_root (home directories on NFS), so everything of a run is under the
worker's own directory, named by its inventory name; only the executor cache
is shared:

    executor/<hash>/                  the executor, content-addressed; shared by every
                                      worker with this work_root; run.sh lands last
    executor/.tmp.<worker>.<pid>.<hash>/   an upload in progress (renamed into place)
    runs/<run id>/                    a run; a shared parent, removed only when empty
    runs/<run id>/<worker>/           this worker's part of the run: its cleanup and
                                      sweep remove this directory and nothing beside it
    runs/<run id>/<worker>/<step>/    a step: script, files/ (the working directory), ctl/
    runs/<run id>/<worker>/docker-config-<n>/   registry credentials while a pull runs
    runs/prepull-<hex>/<worker>/docker-config/  the same for `sshexec prepull`

Containers are labelled `sshexec.run=<run id>` and `sshexec.worker=<worker>`;
a sweep removes only its own worker's, even where workers share a daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..config.inventory import Worker
from ..errors import ImageRefused
from .coord import GO_SH
from .scriptlet import Scriptlet

# RepoDigests (name@sha256:..., as the registry knows the image) is what a run records as "the image that ran":
# a later run pulls exactly that. .Id stays last: GO's sh takes it as the last field.
IMAGE_FORMAT = "{{json .Config.Entrypoint}}\t{{json .Config.Cmd}}\t{{json .Config.User}}\t{{.Os}}\t{{.Architecture}}\t{{json .RepoDigests}}\t{{.Id}}"

# The exit codes of these scriptlets (101-103 staging, 90 login, 91 pull) are
# read by docker_errors.py, which says what each failure means.

_EXPAND_ROOT = r"""
case $root in "~") root=$HOME ;; "~/"*) root=$HOME/${root#"~/"} ;; esac
"""

# The worker's directory of the run. Another worker sharing work_root may rmdir the run's
# directory between the two steps of `mkdir -p`: a second try then creates both.
_MAKE_W = r"""
mkdir -p "$W" 2>/dev/null || mkdir -p "$W" 2>&1 || exit 101
"""

# The worker's facts without a program started: the effective uid and gid from
# /proc/self/status, the machine from /proc/sys/kernel/arch (`id` and `uname -m`
# where those are missing: another kernel, no /proc).
_FACTS_SH = r"""
uid= gid= mach=
[ -r /proc/self/status ] && while read -r f_k f_r f_e _; do
  case $f_k in Uid:) uid=$f_e ;; Gid:) gid=$f_e; break ;; esac
done </proc/self/status
{ read -r mach </proc/sys/kernel/arch; } 2>/dev/null
: "${uid:=$(id -u)}" "${gid:=$(id -g)}" "${mach:=$(uname -m)}"
"""


def _bare(script: str) -> str:
    """`script` without comment lines, blank lines and indentation: GO travels with every step, and
    each newline costs four bytes on its line (scriptlet.through_sh). Only for sh with no here-document,
    no line continuation and no quoted string across lines, which is what GO is (tests/unit/test_go_sh.py)."""
    lines = [line.strip() for line in script.splitlines()]
    if any(line.endswith("\\") or "<<" in line for line in lines):
        raise ValueError("a script with a here-document or a continued line cannot be stripped")
    return "\n".join(line for line in lines if line and not line.startswith("#")) + "\n"


# Upload a big bundle (streamed tar) into a fresh step directory; GO runs it after.
STAGE = Scriptlet(
    "stage",
    r"""
root=$1 run=$2 worker=$3 step=$4
""" + _EXPAND_ROOT + r"""
R=$root/runs/$run W=$root/runs/$run/$worker S=$root/runs/$run/$worker/$step
umask 077
""" + _MAKE_W + r"""
mkdir "$S" 2>&1 || exit 102
umask 000
if ! out=$(tar -x -o -C "$S" -f - 2>&1); then printf '%s\n' "$out" >&2; rm -rf "$S"; rmdir "$W" "$R" 2>/dev/null; exit 103; fi
chmod 755 "$S"
""",
)

UPLOAD_EXECUTOR = Scriptlet(
    "executor",
    r"""
root=$1 exe=$2 worker=$3
""" + _EXPAND_ROOT + r"""
umask 022
X=$root/executor/$exe
mkdir -p "$root/executor" || exit 101
[ -f "$X/run.sh" ] && exit 0
# The worker's name too: workers sharing work_root may run uploads with the same PID.
tmp=$root/executor/.tmp.$worker.$$.$exe
rm -rf "$tmp"; mkdir "$tmp" || exit 101
if ! tar -x -o -C "$tmp" -f -; then rm -rf "$tmp"; exit 103; fi
# Never `mv` the directory: if a concurrent upload created $X meanwhile, ours would
# land inside it. Each file is renamed into place instead (an atomic replace by the
# same content), run.sh last: whoever finds run.sh finds the whole executor.
mkdir -p "$X" || { rm -rf "$tmp"; exit 101; }
for f in "$tmp"/*; do
  [ "${f##*/}" = run.sh ] || mv -f "$f" "$X/${f##*/}" || { rm -rf "$tmp"; exit 101; }
done
mv -f "$tmp/run.sh" "$X/run.sh" || { rm -rf "$tmp"; exit 101; }
rmdir "$tmp"
[ -f "$X/run.sh" ]
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

# One round trip for a warm step: stage a small bundle from stdin (or use the one
# STAGE uploaded), check the executor and the image, refuse what must not run,
# run the container, then remove the step directory unless artifacts wait in it.
#
# Until "##sshexec-state staged", stderr carries only these state lines; the
# server sends the executor's header on stdin only after that line, so nothing
# beyond the bundle's `size` bytes is ever in the pipe while head reads.
# Exit codes before "staged" are ours: 94 another digest than the run's, 95 refused, 96 no image, 97 no executor,
# 98 no free slot, 99 slots unusable. 94: the run ran this tag as another digest elsewhere (want:
# sha256:...); 95: the rule of docker.preflight() (no ENTRYPOINT, linux, the worker's architecture).
# Around the container, coord.GO_SH keeps the
# run's heartbeat, takes a `max_steps` slot, and sweeps dead runs' containers.
#
# Every program started here is time on the warm path (BENCHMARKS.md, "Where the warm
# step's time goes on the worker"): two docker CLI calls (inspect, run), the worker's
# facts read by builtins from /proc, and the bundle unpacked in the background while
# the heartbeat is written and `docker image inspect` runs (a background job's stdin is
# /dev/null: it reads the channel's through fd 7); `bundle_in` waits for it, and GO ends with the staging's own
# exit code if it failed. Comments stay out of the sh: every byte of it travels with each step.
# After the container: the step directory and, when it was all that is left here of the run (co_last), the
# run's heartbeat go in one rm; then the worker's and the run's directories, if empty.
# The bundle is unpacked under umask 000 into work_root's runs/: it holds the run's and the worker's
# directories (0700) and the step's (0755, files/ and ctl/ 0777: bundle.py) with their modes, for a login
# that is not root too: no mkdir, no chmod.
# `known`: the "image" line a GO over this kept connection printed before (facts.py): no inspect then,
# every check on that line, and `docker run` by the image's ID, exactly what was checked.
# The tmpfs every step container gets (step/execute.py mounts it): the executor keeps the variables there,
# secrets among them, and leaves them to the mount, which goes with the container (run.sh's TMPFS).
VARS_TMPFS = "/run/sshexec"

GO = Scriptlet(
    "go",
    _bare(r"""
root=$1 run=$2 worker=$3 step=$4 name=$5 img=$6 exe=$7 size=$8 user=$9 beat=${10} want=${11} known=${12}; shift 12
""" + _EXPAND_ROOT + GO_SH + _FACTS_SH + r"""
R=$root/runs/$run W=$root/runs/$run/$worker S=$root/runs/$run/$worker/$step X=$root/executor/$exe
st() { printf '##sshexec-state %s\n' "$*" >&2; }
drop() { rm -rf "$S"; rmdir "$W" "$R" 2>/dev/null; }
co_stage=
if [ "$size" != staged ]; then
  exec 7<&0
  (
    [ ! -e "$S" ] || { echo "$S exists already" >&2; exit 102; }
    umask 077
    [ -d "$root/runs" ] || mkdir -p "$root/runs" 2>/dev/null || mkdir -p "$root/runs" >&2 || exit 101
    umask 000
    if ! out=$(head -c "$size" <&7 | tar -x -o -C "$root/runs" -f - 2>&1); then printf '%s\n' "$out" >&2; drop; exit 103; fi
  ) &
  co_stage=$!
  exec 7<&-
fi
co_enter
bundle_in() {
  [ -z "$co_stage" ] || { wait "$co_stage" || exit; co_stage=; }
}
st root "$root" "$uid" "$gid" "$mach"
[ -f "$X/run.sh" ] || { bundle_in; st executor-missing; exit 97; }
info=$known inspected=0
[ -n "$known" ] || { info=$({docker} image inspect --format '""" + IMAGE_FORMAT + r"""' "$img" 2>&1 </dev/null); inspected=$?; }
bundle_in
if [ "$inspected" != 0 ]; then
  st noimage "$(printf '%s' "$info" | tr '\t\n' '  ')"; exit 96
fi
st image "$info"
[ -z "$want" ] || case $info in *"@$want\""*) ;; *) drop; exit 94 ;; esac
co_id=${info##*"	"} && co_id=${co_id#sha256:}
ref=$img && [ -n "$known" ] && ref=sha256:$co_id
[ ! -f "$C/images/$co_id" ] || printf '' 2>/dev/null >"$C/images/$co_id.used"
ep=${info%%"	"*}
case $ep in null | "[]") ;; *) drop; exit 95 ;; esac
case $mach in x86_64) m=amd64 ;; aarch64) m=arm64 ;; armv*) m=arm ;; i?86) m=386 ;; *) m=$mach ;; esac
case $info in *"	linux	$m	"*) ;; *) drop; exit 95 ;; esac
[ "$user" = worker ] && set -- "$@" --user "$uid:$gid"
if [ "$co_slots" -gt 0 ]; then
  co_take_slot
  case $? in 1) st noslot "$co_slots$co_busy"; exit 98 ;; 2) st coord "$co_err"; exit 99 ;; esac
fi
st staged
{docker} run "$@" --label "sshexec.beat=$C" -v "$X:$X:ro" -v "$S:$S" -w "$S/files" "$ref" /bin/sh "$X/run.sh" "$S" "$uid" """ + VARS_TMPFS + r"""
rc=$?
[ "$rc" -ge 125 ] && {docker} wait "$name" >/dev/null 2>&1
if [ ! -e "$S/ctl/keep" ]; then
  set -- "$S"
  co_last && co_gone=1 && set -- "$S" "$C/live/$run"
  if ! rm -rf "$@" 2>/dev/null; then
    {docker} run --rm -u 0:0 --label "sshexec.run=$run" --label "sshexec.worker=$worker" --log-driver none -v "$S:$S" "$img" /bin/sh -c 'rm -rf "$0"/files "$0"/ctl "$0"/script' "$S" >/dev/null 2>&1
    rm -rf "$S" 2>/dev/null
  fi
  rmdir "$W" "$R" 2>/dev/null
fi
co_leave
[ -e "$S" ] && [ ! -e "$S/ctl/keep" ] && echo "##sshexec-left $S" >&2
exit $rc
"""),
)

# GO started ahead (issue 22): on a kept connection, between commands, a shell is started that holds GO
# as a function and waits for its arguments: one line on stdin, `quote(args)` (ssh/_companion.py's
# Ahead; WorkerSession.go). A step then skips the session's start (sshd's fork, the login shell, sh,
# GO's decoding: ~4 ms) and sends the line before the bundle. Its stdin from there on is GO's, as ever.
# Its state line "go" says it read the line: without it, it ended before (killed meanwhile), did nothing,
# and a fresh GO runs the step. The channel's end before a line (the link closed) ends the shell: nothing is left.
GO_WAITING = Scriptlet(
    "go",
    "sx_go() {\n" + GO.text + "}\n" + r"""IFS= read -r sx_args || exit 0
printf '##sshexec-state go\n' >&2
eval "set -- $sx_args"
sx_go "$@"
""",
)

E_REFUSED, E_NOIMAGE, E_NOEXECUTOR = 95, 96, 97
E_DIGEST = 94  # the image's tag resolves here to another digest than the run ran elsewhere (issue 21)
E_NOSLOT, E_COORD = 98, 99  # every max_steps slot busy; slots unusable (coord.py)
STATE_MARKER = b"##sshexec-state "

CLEAN_STEP = Scriptlet(
    "clean",
    r"""
root=$1 run=$2 worker=$3 step=$4 img=$5
""" + _EXPAND_ROOT + r"""
R=$root/runs/$run W=$root/runs/$run/$worker S=$root/runs/$run/$worker/$step
if [ -e "$S" ] && ! rm -rf "$S" 2>/dev/null; then
  {docker} run --rm -u 0:0 --label "sshexec.run=$run" --label "sshexec.worker=$worker" --log-driver none -v "$S:$S" "$img" /bin/sh -c 'rm -rf "$0"/files "$0"/ctl "$0"/script' "$S" >/dev/null 2>&1
  rm -rf "$S" 2>/dev/null
fi
rmdir "$W" "$R" 2>/dev/null
[ ! -e "$S" ]
""",
)

LEFT_MARKER = "##sshexec-left "

# SIGTERM lets the executor stop the script and open up its files for cleanup; KILL after 2 s.
STOP = Scriptlet("stop", r"""{docker} stop -t 2 "$1" >/dev/null 2>&1; {docker} rm -f "$1" >/dev/null 2>&1; exit 0""")

# After a run that did not end cleanly: no container, step directory or credential of it
# stays on this worker. Only this worker's: others may share its daemon or its work_root.
SWEEP = Scriptlet(
    "sweep",
    r"""
root=$1 run=$2 worker=$3 img=$4
""" + _EXPAND_ROOT + r"""
ids=$({docker} ps -aq --filter "label=sshexec.run=$run" --filter "label=sshexec.worker=$worker" 2>/dev/null)
[ -n "$ids" ] && {docker} rm -f $ids >/dev/null 2>&1
R=$root/runs/$run W=$root/runs/$run/$worker
if [ -e "$W" ] && ! rm -rf "$W" 2>/dev/null && [ -n "$img" ]; then
  {docker} run --rm -u 0:0 --label "sshexec.run=$run" --label "sshexec.worker=$worker" --log-driver none -v "$W:$W" "$img" /bin/sh -c 'rm -rf "$0"/*' "$W" >/dev/null 2>&1
  rm -rf "$W" 2>/dev/null
fi
rmdir "$R" 2>/dev/null
[ ! -e "$W" ]
""",
)


def run_part(run_id: str, worker: str) -> str:
    """This worker's directory of a run, relative to work_root (see the layout above)."""
    return f"runs/{run_id}/{worker}"


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
    repo_digests: tuple[str, ...] = ()  # name@sha256:... for each registry repository the image came from

    @classmethod
    def parse(cls, ref: str, fields: list[str]) -> "ImageInfo":
        entry, cmd, user, os_, arch = fields[:5]
        repo, id_ = (json.loads(fields[5]) or [], fields[6]) if len(fields) >= 7 else ([], fields[5])
        ep = json.loads(entry)
        c = json.loads(cmd)
        return cls(ref, tuple(ep) if ep else None, tuple(c) if c else None, json.loads(user) or "", os_, arch, id_, tuple(repo))

    def digest_ref(self) -> str | None:
        """The image as `repository@sha256:...` for the repository `ref` names (its registry's digest); None if it has none
        (an image built on the worker, never pushed or pulled)."""
        repo = repository_of(self.ref)
        for d in self.repo_digests:
            if d.rpartition("@")[0] == repo:
                return d
        return None


def repository_of(ref: str) -> str:
    """`127.0.0.1:5000/app/web:7` -> `127.0.0.1:5000/app/web` (no tag, no digest); Docker Hub short names as docker shows them."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name


@dataclass(frozen=True)
class WorkerFacts:
    """What GO says about the worker before running anything."""

    root: str
    uid: str
    gid: str
    machine: str


def parse_state(line: str) -> tuple[str, list[str]]:
    """One "##sshexec-state KIND FIELDS..." line (marker already removed)."""
    kind, _, rest = line.partition(" ")
    if kind == "root":
        return kind, rest.rsplit(" ", 3)
    if kind == "image":
        return kind, rest.split("\t")
    return kind, [rest]


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
