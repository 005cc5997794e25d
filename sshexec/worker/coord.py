"""What runs of different operators share on a worker: where it lives, the records, when they are stale.

sshexec has no server: runs meet on the workers, through SSH alone, under

    work_root/coord/<node>/
        .mutex                   flock'd around every check-then-act change
        live/<run id>            a run's heartbeat, while it has anything here    BEAT STALE START PID OPERATOR
        locks/<NAME>/owner       a held `lock:` (mkdir takes it atomically)       RUN SINCE STALE START PID OPERATOR
        slots/<i>/owner          a running step container (`max_steps`)          RUN GOPID SINCE START PID OPERATOR
        images/<id>              an image sshexec pulled here: its references; <id>.used: its last use
        used/executor-<hash>     the last use of an executor version

<node> is the worker's own host name (the kernel's, as `uname -n` prints it).
It is the same whichever operator's inventory names the worker, and two
machines that share one work_root over NFS keep their state apart. The
machine id would not do: cloned images and containers share it (the lab's
workers have none at all).

Every time is the worker's clock (`date +%s`), written and compared there, so
no judgement mixes two clocks. STALE is the holder's own `lock_stale`: the
promise it made to refresh within that many seconds. A heartbeat older than
that, or gone, means its run is dead; a lock whose run is dead is taken over.
A heartbeat is always written to a temporary name and renamed into place, so
a reader finds the old record or the new one. One without its five fields
(empty, or cut short: an older sshexec wrote in place) is *unknown*: every
reader (TAKE, GO's sweep, gc, LIST) takes its run for alive, never for dead.
A slot belongs to the GO process that runs the container (GOPID, on the worker
itself): it is free once that process is gone, whoever started it.

Nothing here is secret: OPERATOR is `user@host` of the operator's machine.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import socket
import time
from dataclasses import dataclass

COORD = "coord"

# Sets $node and $C (this worker's coordination directory); $root is already expanded.
# The host name is read without a fork on Linux; anything odd in it is replaced.
NODE_SH = r"""
node=
{ read -r node </proc/sys/kernel/hostname; } 2>/dev/null
case $node in "" | .* | *[!A-Za-z0-9._-]*) node=$(uname -n 2>/dev/null | tr -c 'A-Za-z0-9._\n-' '_') ;; esac
case $node in "" | .*) node=_$node ;; esac
C=$root/coord/$node
"""

# co_beat FILE: read a heartbeat record into co_t (its beat) and co_s (its lock_stale), and
# co_st co_p co_op (START PID OPERATOR). Returns 0: read; 1: gone (no such file); 2: unknown,
# an empty or partial record (fewer than its five fields). Unknown is never dead.
BEAT_READ_SH = r"""
co_beat() {
  co_t= co_s= co_st= co_p= co_op=
  [ -e "$1" ] || return 1
  { read -r co_t co_s co_st co_p co_op _ <"$1"; } 2>/dev/null
  case $co_t:$co_s in *[!0-9:]* | :* | *:) return 2 ;; esac
  [ -n "$co_op" ] || return 2
  return 0
}
"""

# Shell functions GO (docker.py) calls around a step container. $beat is
# "STALE SLOTS START PID OPERATOR" (beat_arg()); $root, $run, $exe and $W (this
# worker's part of the run) are set.
#   co_enter     write the run's heartbeat, mark the executor used, and sweep, in the
#                background, the containers of runs whose heartbeat went stale here (a
#                minute past their lock_stale, as gc.SLACK: a slow refresh is not death)
#   co_take_slot take one of SLOTS slots: 0 taken ($co_slot), 1 all busy ($co_busy), 2 cannot ($co_err)
#   co_last      whether the step directory $S is all that is left of this worker's part of the run (no
#                other entry in $W, no slot, no lock of the run here): its heartbeat can go with it, in one rm
#   co_leave     free the slot; drop the heartbeat unless something of this worker's part of the run stays
#                (or it went with the step directory: $co_gone)
# Only builtins run on the warm path, except `date` and `mv` (and, with max_steps, mkdir and flock).
# co_alive DIR: whether the GO process that holds slot DIR is still running on this worker
# (/proc sees other users' processes too; kill -0 where there is no /proc).
SLOT_ALIVE_SH = r"""
co_alive() {
  o_run= o_pid=
  { read -r o_run o_pid _ <"$1/owner"; } 2>/dev/null
  [ -n "$o_pid" ] && { [ -d "/proc/$o_pid" ] || kill -0 "$o_pid" 2>/dev/null; }
}
"""

# The same, for a scriptlet of its own: work_root comes as given in the inventory ("~/..." too).
# What it creates is the SSH user's alone, like the run directories.
ROOT_SH = (
    r"""
umask 077
case $root in "~") root=$HOME ;; "~/"*) root=$HOME/${root#"~/"} ;; esac
"""
    + NODE_SH
)

GO_SH = (
    NODE_SH
    + SLOT_ALIVE_SH
    + BEAT_READ_SH
    + r"""
co_stale=${beat%% *} co_rest=${beat#* }
co_slots=${co_rest%% *} co_owner=${co_rest#* }
co_slot= co_gone=
co_enter() {
  now=$(date +%s)
  if [ ! -d "$C/live" ] || [ ! -d "$C/used" ]; then
    umask 077
    mkdir -p "$C/live" "$C/used" 2>/dev/null
    co_made=$?
    umask 022
    [ "$co_made" = 0 ] || return 0
  fi
  # A new name, then rename: a lock's TAKE reading it meanwhile finds the old record or the new one.
  co_h=$C/live/.$run.$$
  if printf '%s %s %s\n' "$now" "$co_stale" "$co_owner" 2>/dev/null >"$co_h"; then
    mv -f "$co_h" "$C/live/$run" 2>/dev/null || rm -f "$co_h"
  else
    rm -f "$co_h"
  fi
  printf '' 2>/dev/null >"$C/used/executor-$exe"
  co_dead=
  for co_f in "$C"/live/*; do
    co_r=${co_f##*/}
    [ "$co_r" != "$run" ] && [ -f "$co_f" ] || continue
    co_beat "$co_f" || continue
    [ $((now - co_t)) -gt $((co_s + 60)) ] && co_dead="$co_dead $co_r"
  done
  if [ -n "$co_dead" ]; then
    (co_reap $co_dead) </dev/null >/dev/null 2>&1 &
  fi
}
co_reap() {
  for co_r; do
    co_beat "$C/live/$co_r" || continue
    [ $((now - co_t)) -gt $((co_s + 60)) ] || continue
    rm -f "$C/live/$co_r"
    co_ids=$({docker} ps -aq --filter "label=sshexec.run=$co_r" --filter "label=sshexec.beat=$C" 2>/dev/null)
    [ -z "$co_ids" ] || {docker} rm -f $co_ids >/dev/null 2>&1
  done
}
co_take_slot() {
  command -v flock >/dev/null 2>&1 || { co_err="flock is not installed (util-linux or busybox): max_steps needs it"; return 2; }
  [ -d "$C/slots" ] || mkdir -p "$C/slots" 2>/dev/null
  command exec 9>>"$C/.mutex" || { co_err="cannot open $C/.mutex"; return 2; }
  if ! flock 9; then exec 9>&-; co_err="cannot lock $C/.mutex"; return 2; fi
  co_busy= co_i=0
  while [ "$co_i" -lt "$co_slots" ]; do
    co_d=$C/slots/$co_i
    if [ -d "$co_d" ]; then
      if co_alive "$co_d"; then
        co_busy="$co_busy $co_i:$o_run"
        co_i=$((co_i + 1))
        continue
      fi
      rm -rf "$co_d"
    fi
    if mkdir "$co_d" 2>/dev/null && printf '%s %s %s %s\n' "$run" "$$" "$now" "$co_owner" >"$co_d/owner"; then
      co_slot=$co_i
      break
    fi
    co_i=$((co_i + 1))
  done
  exec 9>&-
  [ -n "$co_slot" ] && return 0
  return 1
}
co_holds() {
  for co_l in "$C"/locks/*/owner; do
    co_o=
    { read -r co_o _ <"$co_l"; } 2>/dev/null
    [ "$co_o" = "$run" ] && return 0
  done
  return 1
}
co_last() {
  [ -z "$co_slot" ] || return 1
  for co_f in "$W"/* "$W"/.[!.]*; do
    [ "$co_f" = "$S" ] || [ ! -e "$co_f" ] || return 1
  done
  ! co_holds
}
co_leave() {
  [ -z "$co_slot" ] || rm -rf "$C/slots/$co_slot"
  [ -z "$co_gone" ] && [ ! -e "$W" ] && ! co_holds && rm -f "$C/live/$run"
}
"""
)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(text: str, limit: int = 64) -> str:
    return _SAFE.sub("_", text)[:limit] or "_"


@dataclass(frozen=True)
class Owner:
    """Who holds a lock, a slot or a heartbeat: the operator's user@host, its pid, when the run started."""

    operator: str
    pid: int
    start: int

    @classmethod
    def here(cls) -> "Owner":
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name in this environment: say so
            user = "unknown"
        return cls(f"{_safe(user, 32)}@{_safe(socket.gethostname())}", os.getpid(), int(time.time()))

    @property
    def fields(self) -> str:
        """START PID OPERATOR, as the records on the worker hold them."""
        return f"{self.start} {self.pid} {self.operator}"


def stale_seconds(lock_stale: float) -> int:
    """lock_stale as the whole seconds the worker's sh compares with."""
    return max(1, math.ceil(lock_stale))


def beat_arg(stale: float, slots: int | None, owner: Owner) -> str:
    """GO's $beat argument: STALE SLOTS START PID OPERATOR (SLOTS 0: no max_steps)."""
    return f"{stale_seconds(stale)} {slots or 0} {owner.fields}"


def is_stale(beat: int | None, stale: int | None, now: int) -> bool:
    """Whether a heartbeat written at `beat` (worker clock), promising `stale`, is dead at `now`.

    A missing heartbeat is dead. The worker's sh (GO_SH, locks.TAKE) makes the same judgement.
    """
    if beat is None or stale is None:
        return True
    return now - beat > stale


@dataclass(frozen=True)
class Record:
    """One owner record read back from a worker (a heartbeat, a lock's or a slot's owner)."""

    run: str
    operator: str = "?"
    pid: int | None = None
    start: int | None = None
    since: int | None = None  # locks and slots: when taken; heartbeats: the last beat
    stale: int | None = None
    gopid: int | None = None  # slots: the GO process on the worker

    def describe(self, now: int | None = None) -> str:
        """"run R (alice@laptop, pid 42) since 12:00:03 (2m ago)", in the operator's local time."""
        who = f"run {self.run}" + (f" ({self.operator}, pid {self.pid})" if self.pid is not None else "")
        return who + (f" since {when(self.since, now)}" if self.since is not None and now is not None else "")


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_beat(run: str, line: str) -> Record | None:
    """A heartbeat file: BEAT STALE START PID OPERATOR. None if it is not whole (empty, cut short: unknown)."""
    f = line.split()
    if len(f) < 5 or _int(f[0]) is None or _int(f[1]) is None:
        return None
    return Record(run, f[4], _int(f[3]), _int(f[2]), int(f[0]), int(f[1]))


def parse_lock_owner(line: str) -> Record | None:
    """locks/NAME/owner: RUN SINCE STALE START PID OPERATOR."""
    f = line.split()
    if not f:
        return None
    f += [""] * (6 - len(f))
    return Record(f[0], f[5] or "?", _int(f[4]), _int(f[3]), _int(f[1]), _int(f[2]))


def parse_slot_owner(line: str) -> Record | None:
    """slots/I/owner: RUN GOPID SINCE START PID OPERATOR."""
    f = line.split()
    if not f:
        return None
    f += [""] * (6 - len(f))
    return Record(f[0], f[5] or "?", _int(f[4]), _int(f[3]), _int(f[2]), None, _int(f[1]))


def read_reply(text: str) -> tuple[str, int, list[tuple[str, str]]]:
    """A coordination scriptlet's answer: its "node" and "now" lines, and the other lines as (kind, rest)."""
    node, now, lines = "", 0, []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "node":
            node = rest
        elif kind == "now" and rest.isdigit():
            now = int(rest)
        else:
            lines.append((kind, rest))
    return node, now, lines


def age(seconds: float) -> str:
    """A short age: 42s, 3m, 2h05m, 4d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def when(t: int | None, now: int | None) -> str:
    """A worker time as the operator's local time, with its age: '12:00:03 (2m ago)'."""
    if t is None or now is None:
        return "?"
    ago = now - t
    local = time.localtime(time.time() - ago)
    fmt = "%H:%M:%S" if ago < 20 * 3600 else "%Y-%m-%d %H:%M"
    return f"{time.strftime(fmt, local)} ({age(ago)} ago)"
