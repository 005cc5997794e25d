"""`sshexec gc`: remove from workers what runs that are no longer alive left behind, and old images.

A run is alive while a heartbeat of it, anywhere in the worker's work_root
(coord/*/live/RUN: a work_root shared over NFS holds other machines' too), is
younger than its lock_stale plus SLACK (other machines' clocks may be a little
off). gc never touches an alive run. Of the dead it removes:

- containers started from this worker (label sshexec.beat=work_root/coord/<node>);
- run directories under work_root/runs/: step directories, and the
  DOCKER_CONFIG of a pull or a prepull in them. One without any heartbeat is
  left alone for GRACE minutes (a run of an sshexec without heartbeats);
- credential directories of older sshexec versions (work_root/.prepull-*);
- this machine's stale heartbeat files;
- executor versions not used for EXECUTOR_DAYS days (never the current one).

With images, it removes images that sshexec pulled (recorded by RECORD when a
pull downloaded something), least recently used first, until the disk has the
free space asked for (or those unused for DAYS): never an image a container
uses (docker refuses, and they are not offered), never one that also carries a
tag sshexec did not pull.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..config.inventory import Worker
from ..core.units import parse_size
from ..errors import InputError, WorkerError
from ..executor import executor_hash
from ..ssh import Connection
from ..worker.coord import BEAT_READ_SH, ROOT_SH
from ..worker.scriptlet import Scriptlet

log = logging.getLogger("sshexec")

SLACK = 60  # seconds on top of a heartbeat's lock_stale before gc calls its run dead
GRACE = 10  # minutes a run directory without any heartbeat is left alone
EXECUTOR_DAYS = 30

# alive RUN: a heartbeat of RUN anywhere in work_root is fresh, or unknown (empty or partial).
_ALIVE_SH = BEAT_READ_SH + r"""
alive() {
  for f in "$root"/coord/*/live/"$1"; do
    [ -f "$f" ] || continue
    co_beat "$f" || return 0
    [ $((now - co_t)) -gt $((co_s + slack)) ] || return 0
  done
  return 1
}
beats() {
  for f in "$root"/coord/*/live/"$1"; do [ -f "$f" ] && return 0; done
  return 1
}
young() { [ -n "$(find "$1" -maxdepth 0 -mmin -"$grace" 2>/dev/null)" ]; }
gc_rm() {
  if [ "$mode" != remove ]; then echo "$1|$2|$3|would remove"; return; fi
  if rm -rf "$2" 2>/dev/null; then echo "$1|$2|$3|removed"; else echo "$1|$2|$3|failed: files owned by another user"; fi
}
"""

# What dead runs left: one line per thing, KIND|WHAT|RUN OR NOTE|ACTION (mode "list": would remove).
SWEEP_DEAD = Scriptlet(
    "gc",
    r"""
root=$1 mode=$2 keep=$3 days=$4 grace=$5 slack=$6
""" + ROOT_SH + _ALIVE_SH + r"""
now=$(date +%s)
echo "node|$node"
if out=$({docker} ps -a --filter "label=sshexec.beat=$C" --format '{{.ID}} {{.Label "sshexec.run"}} {{.Names}}' 2>&1); then
  printf '%s\n' "$out" | while read -r id run name; do
    [ -n "$id" ] || continue
    alive "$run" && continue
    if [ "$mode" != remove ]; then echo "container|$name|$run|would remove"
    elif {docker} rm -f "$id" >/dev/null 2>&1; then echo "container|$name|$run|removed"
    else echo "container|$name|$run|failed: docker rm -f $id"; fi
  done
else
  echo "error|docker ps|-|$(printf '%s' "$out" | tr '\n|' '  ')"
fi
for R in "$root"/runs/*; do
  [ -d "$R" ] || continue
  run=${R##*/}
  # Only what is named like a run (YYYYmmdd-HHMMSS-hex, prepull-hex): anything else there is not gc's.
  case $run in [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9][0-9][0-9]-* | prepull-*) ;; *) continue ;; esac
  alive "$run" && continue
  beats "$run" || ! young "$R" || continue
  note=$run
  [ -z "$(find "$R" -name 'docker-config*' 2>/dev/null | head -n 1)" ] || note="$run (registry credentials inside)"
  gc_rm run-dir "$R" "$note"
done
for P in "$root"/.prepull-*; do
  [ -d "$P" ] && ! young "$P" && gc_rm credentials "$P" "an older sshexec's prepull"
done
for f in "$C"/live/*; do
  [ -f "$f" ] || continue
  alive "${f##*/}" || gc_rm heartbeat "$f" "${f##*/}"
done
for f in "$C"/live/.?*; do
  [ -f "$f" ] && ! young "$f" && gc_rm heartbeat "$f" "an interrupted write"
done
for X in "$root"/executor/*; do
  [ -d "$X" ] || continue
  h=${X##*/}
  [ "$h" = "$keep" ] && continue
  [ -z "$(find "$X/run.sh" "$root"/coord/*/used/executor-"$h" -mtime -"$days" 2>/dev/null | head -n 1)" ] || continue
  gc_rm executor "$X" "unused for $days days" && [ "$mode" = remove ] && rm -f "$root"/coord/*/used/executor-"$h"
done
for X in "$root"/executor/.tmp.*; do
  [ -d "$X" ] && ! young "$X" && gc_rm executor "$X" "an interrupted upload"
done
exit 0
""",
)

# The images sshexec pulled here: "image ID|LAST USED|SIZE|TAGS|RECORDED REFS", "inuse IMAGE ID", "free KB|PATH".
IMAGES = Scriptlet(
    "images",
    r"""
root=$1
""" + ROOT_SH + r"""
d=$({docker} info --format '{{.DockerRootDir}}' 2>/dev/null)
[ -n "$d" ] && [ -d "$d" ] || d=$root
[ -d "$d" ] || d=$HOME
df -Pk "$d" 2>/dev/null | { read -r _; read -r _ _ _ avail _; echo "free|$avail|$d"; }
ids=$({docker} ps -aq 2>/dev/null)
[ -z "$ids" ] || {docker} inspect --format '{{.Image}}' $ids 2>/dev/null | sed 's/^/inuse|/'
for f in "$C"/images/*; do
  [ -f "$f" ] || continue
  case $f in *.used) continue ;; esac
  id=${f##*/}
  info=$({docker} image inspect --format '{{.Size}}|{{join .RepoTags ","}}' "sha256:$id" 2>/dev/null) || { echo "gone|$id"; continue; }
  used=$(date -r "$f.used" +%s 2>/dev/null || date -r "$f" +%s)
  echo "image|$id|$used|$info|$(tr '\n' ',' <"$f")"
done
exit 0
""",
)

# Remove images ID... (each: untag its tags, all recorded as sshexec's; docker refuses one a container uses).
REMOVE_IMAGES = Scriptlet(
    "rmi",
    r"""
root=$1; shift
""" + ROOT_SH + r"""
for id; do
  case $id in "" | *[!0-9a-f]*) continue ;; esac
  f=$C/images/$id
  tags=$({docker} image inspect --format '{{join .RepoTags " "}}' "sha256:$id" 2>/dev/null) || { rm -f "$f" "$f.used"; echo "gone|$id"; continue; }
  for t in $tags; do grep -qxF -- "$t" "$f" 2>/dev/null || { echo "kept|$id|also tagged $t"; continue 2; }; done
  [ -n "$tags" ] || tags=sha256:$id
  if out=$({docker} rmi $tags 2>&1); then rm -f "$f" "$f.used"; echo "removed|$id"
  else echo "failed|$id|$(printf '%s' "$out" | tr '\n|' '  ')"; fi
done
exit 0
""",
)


@dataclass(frozen=True)
class Item:
    """One thing gc found on a worker, and what became of it."""

    kind: str  # container | run-dir | credentials | heartbeat | executor | image | error
    what: str
    note: str
    action: str  # removed | would remove | failed: ... | kept: ...

    def to_dict(self) -> dict:
        return {"kind": self.kind, "what": self.what, "note": self.note, "action": self.action}


@dataclass
class Report:
    worker: str
    node: str = ""
    items: list[Item] = field(default_factory=list)
    free_bytes: int | None = None  # with images: free space where Docker keeps them (or in work_root)
    free_path: str | None = None
    error: WorkerError | None = None

    def to_dict(self) -> dict:
        return {"worker": self.worker, "node": self.node, "free_bytes": self.free_bytes, "free_path": self.free_path,
                "items": [i.to_dict() for i in self.items], "error": self.error.to_dict() if self.error else None}  # fmt: skip


@dataclass(frozen=True)
class Image:
    id: str
    last_used: int
    size: int
    tags: tuple[str, ...]
    refs: tuple[str, ...]  # recorded as pulled by sshexec

    @property
    def ours(self) -> bool:
        """Every tag it carries is one sshexec pulled (someone else's tag makes it theirs too)."""
        return set(self.tags) <= set(self.refs)


@dataclass(frozen=True)
class ImagePolicy:
    keep_free: int | None = None  # bytes
    older_than: float | None = None  # days

    def __post_init__(self):
        if (self.keep_free is None) == (self.older_than is None):
            raise ValueError("give exactly one of keep_free and older_than")


def select_images(images: list[Image], in_use: set[str], free: int | None, policy: ImagePolicy, now: float) -> list[Image]:
    """The images to remove, least recently used first: only sshexec's, never one a container uses.

    keep_free: until free space plus what the removed ones take reaches it (their
    sizes are an upper bound: layers shared with other images stay). older_than:
    every one not used for that many days.
    """
    candidates = sorted((i for i in images if i.ours and f"sha256:{i.id}" not in in_use), key=lambda i: (i.last_used, i.id))
    if policy.older_than is not None:
        return [i for i in candidates if now - i.last_used > policy.older_than * 86400]
    chosen, gained = [], 0
    for i in candidates:
        if free is not None and free + gained >= policy.keep_free:
            break
        chosen.append(i)
        gained += i.size
    return chosen


def parse_sweep(worker: str, text: str) -> Report:
    r = Report(worker)
    for line in text.splitlines():
        kind, _, rest = line.partition("|")
        if kind == "node":
            r.node = rest
            continue
        what, note, action = (rest.rsplit("|", 2) + ["", ""])[:3]
        if kind == "error":
            r.error = WorkerError(worker, f"{what} failed: {action}")
        elif kind:
            r.items.append(Item(kind, what, note, action))
    return r


def parse_images(text: str) -> tuple[list[Image], set[str], tuple[int | None, str | None], list[str]]:
    """(images recorded, image ids in use, (free bytes, where), recorded ids whose image is gone)."""
    images, in_use, free, where, gone = [], set(), None, None, []
    for line in text.splitlines():
        kind, _, rest = line.partition("|")
        f = rest.split("|")
        if kind == "free" and f[0].isdigit():
            free, where = int(f[0]) * 1024, rest.partition("|")[2]
        elif kind == "inuse":
            in_use.add(rest.strip())
        elif kind == "gone":
            gone.append(rest)
        elif kind == "image" and len(f) >= 5 and f[1].isdigit() and f[2].isdigit():
            tags = tuple(t for t in f[3].split(",") if t)
            refs = tuple(t for t in f[4].split(",") if t)
            images.append(Image(f[0], int(f[1]), int(f[2]), tags, refs))
    return images, in_use, (free, where), gone


def gc_worker(worker: Worker, *, dry_run: bool = False, images: ImagePolicy | None = None, now: float | None = None) -> Report:
    """Sweep what dead runs left on one worker (and, with `images`, old images sshexec pulled)."""
    import time

    mode = "list" if dry_run else "remove"
    try:
        with Connection(worker, retries=1) as conn:
            res = conn.run(SWEEP_DEAD.command(worker.docker, worker.work_root, mode, executor_hash(), str(EXECUTOR_DAYS), str(GRACE), str(SLACK)), timeout=600)
            if not res.ok:
                raise WorkerError(worker.name, f"gc failed: {res.tail(3)}")
            report = parse_sweep(worker.name, res.text())
            if images is not None:
                _gc_images(conn, worker, report, images, dry_run, now if now is not None else time.time())
    except WorkerError as exc:
        return Report(worker.name, error=exc)
    return report


def _gc_images(conn: Connection, worker: Worker, report: Report, policy: ImagePolicy, dry_run: bool, now: float) -> None:
    res = conn.run(IMAGES.command(worker.docker, worker.work_root), timeout=300)
    if not res.ok:
        raise WorkerError(worker.name, f"could not list images: {res.tail(3)}")
    found, in_use, (free, report.free_path), _ = parse_images(res.text())
    report.free_bytes = free
    chosen = select_images(found, in_use, free, policy, now)
    sizes = {i.id: i for i in chosen}
    if dry_run or not chosen:
        report.items += [Item("image", _name(i), f"{_mb(i.size)}, last used {_days(now - i.last_used)}", "would remove") for i in chosen]
        return
    out = conn.run(REMOVE_IMAGES.command(worker.docker, worker.work_root, *[i.id for i in chosen]), timeout=1800)
    for line in out.text().splitlines():
        kind, _, rest = line.partition("|")
        id_, _, why = rest.partition("|")
        i = sizes.get(id_)
        if i is None:
            continue
        note = f"{_mb(i.size)}, last used {_days(now - i.last_used)}"
        action = {"removed": "removed", "gone": "removed", "kept": f"kept: {why}"}.get(kind, f"failed: {why}")
        report.items.append(Item("image", _name(i), note, action))


def check_policy(images: bool, keep_free: str | None, older_than: str | None) -> ImagePolicy | None:
    """--images with --keep-free SIZE or --older-than DAYS; InputError (exit 2) if not exactly one."""
    if not images:
        if keep_free or older_than:
            raise InputError("--keep-free and --older-than go with --images", hint="sshexec gc --images --keep-free 20G")
        return None
    if bool(keep_free) == bool(older_than):
        raise InputError("--images needs exactly one of --keep-free SIZE or --older-than DAYS", hint="e.g. sshexec gc --images --keep-free 20G")
    if keep_free:
        try:
            return ImagePolicy(keep_free=parse_size(keep_free))
        except ValueError as exc:
            raise InputError(f"--keep-free: {exc}") from None
    try:
        days = float(older_than)
    except ValueError:
        raise InputError(f"--older-than must be a number of days, not {older_than!r}") from None
    if not days > 0:
        raise InputError(f"--older-than must be more than 0 days, not {older_than}")
    return ImagePolicy(older_than=days)


def _name(i: Image) -> str:
    return ", ".join(i.tags) or f"sha256:{i.id[:12]}"


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _days(seconds: float) -> str:
    d = seconds / 86400
    return f"{d:.0f} days ago" if d >= 1 else "today"
