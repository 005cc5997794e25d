"""GO (worker/docker.py), the warm step's one round trip, run by real shells on a temporary work_root.

A fake docker records its calls; every other program GO may start is a wrapper
that records its name, then runs the real one. What a warm step costs on the
worker is mostly the programs it starts (BENCHMARKS.md, "Where the warm step's
time goes on the worker"), so their list is held here, with what GO must still
do: the bundle in place before `docker run`, the state lines, nothing left.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from labkit import SCRIPT_SHELLS, fake_docker_bin, require_programs

from sshexec.worker.bundle import write_bundle
from sshexec.worker.coord import Owner, beat_arg
from sshexec.worker.docker import ARCH, GO, GO_WAITING, E_NOEXECUTOR, E_NOIMAGE, E_REFUSED
from sshexec.worker.scriptlet import quote

SHELLS = SCRIPT_SHELLS

# Programs GO may start besides docker; each is wrapped to count it.
WRAPPED = ("date", "mv", "mkdir", "head", "tar", "chmod", "rm", "rmdir", "id", "uname", "tr", "cat", "sleep", "flock")


@pytest.fixture(autouse=True, scope="module")
def _shells_installed():
    require_programs("dash", "bash", "busybox")


# `image inspect` prints IMAGE_FORMAT's fields for $FAKE_ENTRYPOINT; `run` checks that the bundle is
# in place (the directory of -w is STEP/files), reads its stdin to the end, and says hi.
FAKE_DOCKER = """#!/bin/sh
{ printf '%s ' "$@"; echo; } >> "$LOG"
case $1 in
  image)
    [ -n "$FAKE_NOIMAGE" ] && { echo "Error: No such image: $5" >&2; exit 1; }
    printf '%s\\t["sh"]\\t""\\tlinux\\t%s\\t["reg/img@sha256:abc"]\\tsha256:1234\\n' "${FAKE_ENTRYPOINT:-null}" "$FAKE_ARCH"
    ;;
  run)
    while [ $# -gt 0 ]; do
      [ "$1" = -w ] && wd=$2
      case $1 in sshexec.beat=*) for o in "${1#sshexec.beat=}"/slots/*/owner; do [ -f "$o" ] && echo "slot $(cat "$o")" >> "$LOG"; done ;; esac
      shift
    done
    [ -f "$wd/../script" ] && [ -d "$wd" ] && [ -d "$wd/../ctl" ] || { echo "run: no bundle in ${wd%/files}" >&2; exit 125; }
    echo "bundle in place" >> "$LOG"
    s=${wd%/files}; m=modes; for d in "${s%/*/*}" "${s%/*}" "$s" "$wd" "$s/ctl"; do m="$m $(stat -c %a "$d")"; done; echo "$m" >> "$LOG"
    cat >/dev/null
    echo hi
    ;;
esac
exit 0
"""


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path)


def make_env(tmp_path: Path) -> dict:
    bindir = fake_docker_bin(tmp_path, FAKE_DOCKER)
    calls = tmp_path / "programs.log"
    for name in WRAPPED:
        real = shutil.which(name)
        if real is None:
            continue
        (bindir / name).write_text(f'#!/bin/sh\necho {name} >> "{calls}"\nexec {real} "$@"\n')
        (bindir / name).chmod(0o755)
    root = tmp_path / "work"
    exe = root / "executor" / "e1"
    exe.mkdir(parents=True)
    (exe / "run.sh").write_text("# the executor\n")
    return {
        "PATH": f"{bindir}:/usr/bin:/bin", "LOG": str(tmp_path / "docker.log"), "HOME": str(tmp_path),
        "FAKE_ARCH": ARCH.get(platform.machine(), platform.machine()), "root": root, "calls": calls,
    }  # fmt: skip


def bundle(step: str = "s1") -> bytes:
    """What run_step sends GO for step `step` of run r1 on w1: the bundle under runs/r1/w1/STEP (execute.small_bundle)."""
    buf = bytearray()
    write_bundle(buf.extend, script=b"echo hi\n", files=None, under=f"r1/w1/{step}")
    return bytes(buf)


WAYS = {"fresh": False, "waiting": True}
_way = {"waiting": False}


@pytest.fixture(autouse=True, params=list(WAYS))
def way(request):
    """Every GO here runs both ways: started with its arguments (a fresh session), and started ahead
    (GO_WAITING, a kept connection's), its arguments the first line of its stdin."""
    _way["waiting"] = WAYS[request.param]
    yield request.param
    _way["waiting"] = False


def go(env: dict, shell: list[str], *, step: str = "s1", data: bytes | None = None, slots: int = 0, known: str = "", **extra: str) -> subprocess.CompletedProcess:
    data = bundle(step) if data is None else data
    args = [str(env["root"]), "r1", "w1", step, f"sshexec-r1-{step}-w1", "reg/img:1", "e1", str(len(data)), "image", beat_arg(60, slots, Owner("op@host", 42, 100)), "", known]
    args += ["--rm", "-i", "--name", f"sshexec-r1-{step}-w1"]
    if _way["waiting"]:
        argv = GO_WAITING.argv(["docker"])
        data = (quote(args) + "\n").encode() + data
    else:
        argv = GO.argv(["docker"], *args)
    run_env = {k: v for k, v in env.items() if k not in ("root", "calls")} | extra
    return subprocess.run([*shell, *argv[1:]], input=data, capture_output=True, timeout=60, env=run_env)


def programs(env: dict) -> list[str]:
    return env["calls"].read_text().split() if env["calls"].exists() else []


def docker_calls(env: dict, *, modes: bool = False) -> list[str]:
    """The fake docker's log; with `modes`, the lines that say the step directory's, files/ and ctl/ modes at `run` too."""
    log = Path(env["LOG"])
    lines = log.read_text().splitlines() if log.exists() else []
    return lines if modes else [line for line in lines if not line.startswith("modes ")]


def left(env: dict) -> list[str]:
    """What GO left under work_root, besides the executor and the coordination directory."""
    return sorted(str(p.relative_to(env["root"])) for p in (env["root"] / "runs").rglob("*")) if (env["root"] / "runs").exists() else []


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_warm_step_calls_docker_twice_and_starts_few_programs(env, shell):
    go(env, shell, step="s0")  # the first GO on a worker makes the coordination directory
    env["calls"].unlink(missing_ok=True)
    Path(env["LOG"]).unlink()
    p = go(env, shell)
    err = p.stderr.decode()
    assert p.returncode == 0, (p.returncode, p.stdout, err)
    assert p.stdout == b"hi\n"
    states = [line.split()[1] for line in err.splitlines() if line.startswith("##sshexec-state ")]
    assert states == (["go"] if _way["waiting"] else []) + ["root", "image", "staged"], err
    root_line = next(line for line in err.splitlines() if line.startswith("##sshexec-state root "))
    assert root_line.split()[3:] == [str(os.geteuid()), str(os.getegid()), platform.machine()]
    calls = docker_calls(env)
    assert [c.split()[0] for c in calls if c != "bundle in place"] == ["image", "run"], calls
    assert "bundle in place" in calls  # the background unpacking was awaited before `docker run`
    assert left(env) == []  # the step's directory, the worker's and the run's are gone
    assert not list((env["root"] / "coord").glob("*/live/r1"))  # and the run's heartbeat
    if shell[0] != "busybox":  # busybox sh may run its own applets in place of the wrappers
        started = programs(env)
        # The worker's facts come from /proc: no id, no uname. What is left: the heartbeat (date, mv),
        # the bundle (mkdir, head, tar: no chmod, the archive's modes are kept) and the clean-up (rm, rmdir, rm).
        assert not {"id", "uname", "chmod"} & set(started), started
        assert len(started) <= 9, started
        assert started.count("rm") == 1, started  # the step directory and the heartbeat in one rm (co_last)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_heartbeat_stays_while_something_of_the_run_stays_on_the_worker(env, shell):
    """The step's directory and the run's heartbeat go in one rm only when nothing else of the run is here:
    not another entry of this worker's part of the run (a hidden one too), not a lock the run holds."""
    assert go(env, shell, step="s0").returncode == 0
    (c,) = [d.parent for d in (env["root"] / "coord").glob("*/live")]
    beat = c / "live" / "r1"
    w = env["root"] / "runs" / "r1" / "w1"
    for other in (w / "s9", w / ".pull-config"):  # (sshexec makes no hidden entry there; a person might)
        other.mkdir(parents=True)
        p = go(env, shell, step="s1")
        assert p.returncode == 0, p.stderr
        assert beat.exists() and not (w / "s1").exists(), f"{other.name} stays: so does the heartbeat"
        other.rmdir()
        beat.unlink()
    (c / "locks" / "deploy").mkdir(parents=True)
    (c / "locks" / "deploy" / "owner").write_text("r1 1 2 3 op@host\n")
    assert go(env, shell, step="s1").returncode == 0
    assert beat.exists() and not w.exists(), "the run holds a lock here: its heartbeat stays"
    (c / "locks" / "deploy" / "owner").write_text("r2 1 2 3 op@host\n")
    assert go(env, shell, step="s1").returncode == 0
    assert not beat.exists() and not w.exists()


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_login_that_is_not_root_stages_files_and_ctl_open_to_the_containers_user(tmp_path, shell):
    """files/ and ctl/ are 0777 in the bundle (bundle.py), the step's directory 0755: the container's user,
    whoever it is, writes there; the run's and the worker's directories 0700, the SSH user's alone. Unpacked
    by a login that is not root, whose tar takes its umask off an archive's modes unless GO unpacks under
    umask 000 (with no mkdir or chmod after)."""
    require_programs("setpriv", "stat")
    base = tmp_path / "open"
    base.mkdir()
    for p in (tmp_path, *tmp_path.parents):  # nobody must reach it (pytest's base directory is root's, 0700)
        if p != Path("/") and not p.stat().st_mode & 0o001:
            p.chmod(p.stat().st_mode | 0o001)
    e = make_env(base)
    for p in [base, *base.rglob("*")]:
        os.chown(p, 65534, 65534)
    p = go(e, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *shell])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "modes 700 700 755 777 777" in docker_calls(e, modes=True), docker_calls(e, modes=True)  # run, worker, step, files/, ctl/


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_bundle_that_cannot_be_unpacked_ends_go_with_the_stagings_code(env, shell):
    p = go(env, shell, data=b"not a tar archive at all" * 40)
    assert p.returncode == 103, (p.returncode, p.stdout, p.stderr)
    assert not any(c.startswith("run ") for c in docker_calls(env))
    assert left(env) == []


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_an_existing_step_directory_is_refused(env, shell):
    (env["root"] / "runs" / "r1" / "w1" / "s1").mkdir(parents=True)
    p = go(env, shell)
    assert p.returncode == 102, (p.returncode, p.stdout, p.stderr)
    assert b"exists already" in p.stderr
    assert not any(c.startswith("run ") for c in docker_calls(env))


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_missing_image_or_executor_keeps_the_bundle_for_the_next_try(env, shell):
    p = go(env, shell, FAKE_NOIMAGE="1")
    assert p.returncode == E_NOIMAGE, (p.returncode, p.stdout, p.stderr)
    assert b"##sshexec-state noimage Error: No such image" in p.stderr
    assert "runs/r1/w1/s1/script" in left(env)  # unpacked whole before GO said so
    shutil.rmtree(env["root"] / "executor")
    p = go(env, shell, step="s2")
    assert p.returncode == E_NOEXECUTOR, (p.returncode, p.stdout, p.stderr)
    assert "runs/r1/w1/s2/script" in left(env)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_an_image_with_an_entrypoint_is_refused_before_run_and_nothing_is_left(env, shell):
    p = go(env, shell, FAKE_ENTRYPOINT='["/bin/app"]')
    assert p.returncode == E_REFUSED, (p.returncode, p.stdout, p.stderr)
    assert [c.split()[0] for c in docker_calls(env)] == ["image"]
    assert left(env) == []


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_max_steps_slot_is_held_with_a_whole_record_while_the_container_runs(env, shell):
    """GO writes the heartbeat in its background job: the slot's record still carries the worker's time (SINCE)."""
    require_programs("flock")
    before = int(time.time())
    p = go(env, shell, slots=2)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    held = [c.split()[1:] for c in docker_calls(env) if c.startswith("slot ")]
    assert len(held) == 1, docker_calls(env)
    run, gopid, since, start, pid, operator = held[0]  # RUN GOPID SINCE START PID OPERATOR (coord.py)
    assert (run, start, pid, operator) == ("r1", "100", "42", "op@host") and gopid.isdigit()
    assert before - 1 <= int(since) <= time.time() + 1
    assert not list((env["root"] / "coord").glob("*/slots/*/owner"))  # given back when the container ended


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_workers_facts_come_from_id_and_uname_where_proc_has_not_them(shell, tmp_path):
    """Another kernel, no /proc: GO's facts fall back to the programs, with the same answers."""
    from sshexec.worker.docker import _FACTS_SH

    want = [str(os.geteuid()), str(os.getegid()), platform.machine()]
    for text, label in ((_FACTS_SH, "/proc"), (_FACTS_SH.replace("/proc/", f"{tmp_path}/none/"), "fallback")):
        p = subprocess.run([*shell, "-c", text + 'echo "$uid $gid $mach"'], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and p.stdout.split() == want, (label, p.stdout, p.stderr)
        assert p.stderr == "", (label, p.stderr)


def known_line(env: dict, entrypoint: str = "null") -> str:
    """What the fake docker's inspect prints: the line a kept connection hands to a later GO as `known` (worker/facts.py)."""
    return "\t".join([entrypoint, '["sh"]', '""', "linux", env["FAKE_ARCH"], '["reg/img@sha256:abc"]', "sha256:1234"])


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_known_image_is_not_inspected_and_runs_by_its_id(env, shell):
    """`known`: the inspect line this connection got before. No `docker image inspect`; the image that was checked runs, by its ID."""
    go(env, shell, step="s0")
    Path(env["LOG"]).unlink()
    p = go(env, shell, known=known_line(env))
    err = p.stderr.decode()
    assert p.returncode == 0 and p.stdout == b"hi\n", (p.returncode, p.stdout, err)
    assert f"##sshexec-state image {known_line(env)}\n" in err
    runs = [c for c in docker_calls(env) if c != "bundle in place"]
    assert [c.split()[0] for c in runs] == ["run"], runs
    assert " sha256:1234 /bin/sh " in runs[0] and "reg/img:1" not in runs[0], runs
    assert left(env) == []


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_known_image_still_passes_every_check(env, shell):
    """The checks run on `known` as on a fresh inspect: an ENTRYPOINT, another platform, another digest than the run's."""
    p = go(env, shell, known=known_line(env, '["/bin/app"]'))
    assert p.returncode == E_REFUSED, (p.returncode, p.stdout, p.stderr)
    other = known_line(env).replace(f"\tlinux\t{env['FAKE_ARCH']}\t", "\tlinux\tmips64le\t")
    assert go(env, shell, step="s2", known=other).returncode == E_REFUSED
    assert go(env, shell, step="s3", known="null\tnull\t\"\"\twindows\t" + env["FAKE_ARCH"] + "\t[]\tsha256:1234").returncode == E_REFUSED
    assert docker_calls(env) == []  # neither inspected nor run
    assert left(env) == []


@pytest.mark.parametrize("way", ["waiting"], indirect=True)
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_go_started_ahead_whose_channel_ends_before_its_line_does_nothing(env, shell, way):
    """GO_WAITING's stdin ends (the kept connection closed) before any line: it ends at once, quietly, having
    started no program and written nothing."""
    p = subprocess.run([*shell, *GO_WAITING.argv(["docker"])[1:]], input=b"", capture_output=True, timeout=30, env={k: v for k, v in env.items() if k not in ("root", "calls")})
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
    assert programs(env) == [] and docker_calls(env) == [] and not (env["root"] / "coord").exists() and left(env) == []
