"""The executor and its helpers, run by the real dash and bash of this machine (no container)."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from labkit import require_programs

from sshexec.executor import executor_files, executor_hash
from sshexec.step.protocol import header, marker, parse_message

NONCE = "ab" * 16
SHELLS = ["dash", "bash"]
# Every kind of /bin/sh an image may have: dash (Debian), bash run as sh (POSIX mode), busybox ash.
# A missing one fails the module (scripts/bootstrap installs them), never drops its cases.
POSIX_SHELLS = ["dash", "bash", "bash-as-sh", "busybox"]


@pytest.fixture(autouse=True, scope="module")
def _shells_installed():
    require_programs("dash", "bash", "busybox")


def shell_argv(name: str, tmp_path) -> list[str]:
    """How to start `name` as a POSIX shell; bash is started through a link named sh, like /bin/sh."""
    if name == "busybox":
        return [shutil.which("busybox"), "sh"]
    if name == "bash-as-sh":
        link = tmp_path / "sh-bin" / "sh"
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            os.symlink(shutil.which("bash"), link)
        return [str(link)]
    return [shutil.which(name)]


@pytest.fixture
def exe(tmp_path):
    d = tmp_path / "executor"
    d.mkdir()
    for name, data in executor_files().items():
        (d / name).write_bytes(data)
    return d


def run(exe, tmp_path, script, *, syntax="sh", variables=None, shell="dash", env=None, keep_open=0.0, timeout=20, allow=(), tmpfs=None, owner=None):
    s = tmp_path / "step"
    (s / "files").mkdir(parents=True, exist_ok=True)
    (s / "ctl").mkdir(exist_ok=True)
    (s / "script").write_text(script)
    data = header(nonce=NONCE, syntax=syntax, variables=variables or {}, context={"run": "r1", "step": "st", "worker": "w9"}, allow=allow)
    environ = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), **(env or {})}
    argv = shell_argv(shell, tmp_path) if shell in POSIX_SHELLS else [shutil.which(shell)]
    tail = [str(tmpfs)] if tmpfs is not None else []
    proc = subprocess.Popen([*argv, str(exe / "run.sh"), str(s), str(os.getuid() if owner is None else owner), *tail], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ, cwd=tmp_path)
    outs = {}

    def drain(name, pipe):
        outs[name] = pipe.read()

    readers = [threading.Thread(target=drain, args=(n, p)) for n, p in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    proc.stdin.write(data)
    proc.stdin.flush()
    # Like sshexec, keep stdin open while the step runs (its end means "operator gone").
    if keep_open:
        time.sleep(keep_open)
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=5)
    for t in readers:
        t.join()
    return proc.returncode, outs["out"], outs["err"]


def messages(out: bytes):
    mk = marker(NONCE)
    found = []
    for line in out.split(b"\n"):
        if mk in line:
            found.append(parse_message(line.split(mk, 1)[1]))
    return found


def test_executor_hash_is_stable_and_content_addressed():
    assert executor_hash() == executor_hash() and len(executor_hash()) == 20


@pytest.mark.parametrize("shell", SHELLS)
def test_variables_are_exported_and_readable(exe, tmp_path, shell):
    variables = {"PLAIN": "a b", "WEIRD": "$(x) `y` 'q' \"d\" \\ %s -v\n\n", "EMPTY": "", "dotted.name": "d", "PATH": "evil", "UNI": "ünï ✓"}
    script = 'printf "[%s]" "$PLAIN" "$WEIRD" "$EMPTY" "$UNI"; echo; get_sshexec_variable dotted.name; echo; echo "$SSHEXEC_WORKER $SSHEXEC_STEP $SSHEXEC_RUN_ID"; command -v od >/dev/null && echo path-ok'
    code, out, err = run(exe, tmp_path, script, variables=variables, shell=shell)
    assert code == 0, err
    text = out.decode()
    assert "[a b][$(x) `y` 'q' \"d\" \\ %s -v\n\n][][ünï ✓]" in text
    assert "\nd\n" in text and "w9 st r1" in text and "path-ok" in text  # PATH was not overridden


@pytest.mark.parametrize("shell", SHELLS)
def test_set_variable_fail_step_and_artifact(exe, tmp_path, shell):
    script = """
        set -eu
        set_sshexec_variable Answer "4 2
x" --sensitive
        set_sshexec_variable Plain ""
        echo "local: $(get_sshexec_variable Answer)"
        echo data > out.txt
        new_sshexec_artifact out.txt renamed.txt
        set_sshexec_variable 9bad x || echo refused-name
        fail_step "because"
        echo unreachable
    """
    code, out, err = run(exe, tmp_path, script, shell=shell)
    assert code == 1
    msgs = messages(out)
    assert [m.kind for m in msgs] == ["set", "set", "artifact", "fail"]
    assert msgs[0].args == ("Answer", "4 2\nx", "1")
    assert msgs[1].args == ("Plain", "", "0")
    assert msgs[2].args[1] == "renamed.txt" and msgs[2].args[0].endswith("/step/files/out.txt")
    assert msgs[3].args == ("because",)
    assert b"local: 4 2\nx" in out and b"refused-name" in out and b"unreachable" not in out
    assert (tmp_path / "step/ctl/keep").exists()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("syntax", ["sh", "bash", "python"])
def test_the_executor_announces_itself_before_the_script(exe, tmp_path, shell, syntax):
    """The "started" message on stderr tells a script's own exit 127 from `docker run` failing (outcome.py)."""
    script = "import sys; print('hi', file=sys.stderr); sys.exit(127)" if syntax == "python" else "echo hi >&2; docker-nowhere; exit 127"
    code, out, err = run(exe, tmp_path, script, syntax=syntax, shell=shell)
    assert code == 127
    assert [m.kind for m in messages(err)] == ["started"]
    assert err.index(marker(NONCE) + b"started") < err.index(b"hi")


def test_no_announcement_when_the_script_cannot_start(exe, tmp_path):
    # stdin stays open, as sshexec keeps it: its end would mean "operator gone" (exit 129), a race with the refusal.
    code, out, err = run(exe, tmp_path, "echo hi", syntax="cobol")
    assert code == 125 and b"unknown script syntax" in err and b"started" not in err
    code, out, err = run(exe, tmp_path, "echo hi", syntax="bash", env={"PATH": tools_without_interpreters(tmp_path)})
    assert code == 127 and messages(err) == [] and [m.kind for m in messages(out)] == ["missing"]


def tools_without_interpreters(tmp_path) -> str:
    """A PATH with what the executor needs, and no bash or python."""
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for tool in ("od", "tr", "cat", "chmod", "id", "mkdir"):
        if not (tools / tool).exists():
            os.symlink(shutil.which(tool), tools / tool)
    return str(tools)


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_helpers_work_under_a_scripts_own_ifs(exe, tmp_path, shell):
    """Strict-mode scripts set IFS to newline and tab; the helpers' messages must not be cut by it."""
    vars_dir, ctl = tmp_path / "vars", tmp_path / "ctl"
    vars_dir.mkdir()
    ctl.mkdir()
    (tmp_path / "out.txt").write_text("data")
    script = """
        . "$1"
        IFS=$(printf '\\n\\t')
        set_sshexec_variable Answer "4 2"
        new_sshexec_artifact out.txt "renamed file.txt"
        get_sshexec_variable Answer; echo
        fail_step "no more"
    """
    env = {"PATH": os.environ["PATH"], "SSHEXEC_NONCE": NONCE, "SSHEXEC_VARS": str(vars_dir), "SSHEXEC_CONTROL": str(ctl)}
    p = subprocess.run([*shell_argv(shell, tmp_path), "-c", script, "sh", str(exe / "helpers.sh")], capture_output=True, env=env, cwd=tmp_path, timeout=20)
    assert p.returncode == 1, p.stderr
    msgs = messages(p.stdout)
    assert [m.kind for m in msgs] == ["set", "artifact", "fail"], p.stdout
    assert msgs[0].args == ("Answer", "4 2", "0")
    assert msgs[1].args == (str(tmp_path / "out.txt"), "renamed file.txt")
    assert msgs[2].args == ("no more",)
    assert b"\n4 2\n" in b"\n" + p.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_a_bash_strict_mode_script_can_use_the_helpers(exe, tmp_path, shell):
    script = "set -euo pipefail\nIFS=$'\\n\\t'\necho x > f.txt\nnew_sshexec_artifact f.txt\nfail_step 'strict and failed'\n"
    code, out, err = run(exe, tmp_path, script, syntax="bash", shell=shell)
    assert code == 1, err
    assert [(m.kind, m.args[-1]) for m in messages(out)] == [("artifact", "f.txt"), ("fail", "strict and failed")]


# What bash makes read-only (`readonly -p` of bash 5.2, POSIX mode or not); exporting one
# kills a POSIX-mode shell on the spot.
READ_ONLY = {"UID": "1", "EUID": "2", "PPID": "3", "BASH_VERSINFO": "4", "BASHOPTS": "5", "SHELLOPTS": "6"}


@pytest.mark.parametrize("syntax", ["sh", "bash"])
@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_variables_named_like_read_only_shell_variables(exe, tmp_path, shell, syntax):
    """The executor runs under any /bin/sh: names it cannot export are skipped, and still readable."""
    variables = {**READ_ONLY, "AFTER": "still exported"}
    script = 'for n in UID EUID PPID BASH_VERSINFO BASHOPTS SHELLOPTS; do printf "%s=%s\\n" "$n" "$(get_sshexec_variable $n)"; done; echo "AFTER=$AFTER"'
    code, out, err = run(exe, tmp_path, script, syntax=syntax, variables=variables, shell=shell)
    assert code == 0, err
    text = out.decode()
    for name, value in variables.items():
        assert f"{name}={value}\n" in text, (name, text, err)


def test_python_helpers(exe, tmp_path):
    script = "import sshexec_helpers as sx\nprint(sx.get_variable('A'))\nsx.set_variable('Out', 'v', sensitive=True)\nopen('f.txt','w').write('x')\nsx.new_artifact('f.txt')\nsx.fail_step('py says no')\n"
    code, out, err = run(exe, tmp_path, script, syntax="python", variables={"A": "from-header"})
    assert code == 1, err
    assert b"from-header" in out
    assert [m.kind for m in messages(out)] == ["set", "artifact", "fail"]
    assert messages(out)[2].args == ("py says no",)


def test_missing_interpreter(exe, tmp_path):
    code, out, err = run(exe, tmp_path, "echo hi", syntax="bash", env={"PATH": tools_without_interpreters(tmp_path)})
    assert code == 127
    assert [m.args for m in messages(out)] == [("bash",)]
    assert b"this step needs bash" in err


def test_end_of_stdin_stops_the_script(exe, tmp_path):
    """Outside a container the orphaned sleep survives; inside one, PID 1 exiting ends it too."""
    s = tmp_path / "step"
    (s / "files").mkdir(parents=True)
    (s / "script").write_text("echo started; sleep 120 & echo $! > ../sleep.pid; wait")
    log = open(tmp_path / "out", "wb")
    proc = subprocess.Popen(["dash", str(exe / "run.sh"), str(s), str(os.getuid())], stdin=subprocess.PIPE, stdout=log, stderr=log, env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)})
    proc.stdin.write(header(nonce=NONCE, syntax="sh", variables={}))
    proc.stdin.flush()
    pid_file = s / "sleep.pid"
    deadline = time.monotonic() + 30  # the script's start, on a loaded machine
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, f"the script never started: {_tree(proc.pid, tmp_path)}"
        time.sleep(0.05)
    proc.stdin.close()
    try:
        # Not the 120 s of the sleep; the margin is for a loaded machine, not a measure.
        rc = proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the executor outlived the end of its stdin: {_tree(proc.pid, tmp_path)}")
    finally:
        os.kill(int(pid_file.read_text()), 9)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 129
    assert b"started" in (tmp_path / "out").read_bytes()


def _tree(pid: int, tmp_path) -> str:
    """What a hung executor was doing: its processes (state, wait channel), who holds its stdin's pipe, its output."""
    ps = subprocess.run(["ps", "-e", "-o", "pid,ppid,stat,wchan:24,args"], capture_output=True, text=True).stdout.splitlines()
    ids = {str(pid)}
    for _ in range(4):
        ids |= {line.split()[0] for line in ps[1:] if line.split()[1] in ids}
    mine = [line for line in ps[1:] if line.split()[0] in ids]
    try:
        pipe = os.readlink(f"/proc/{pid}/fd/0")
        holders = [p for p in os.listdir("/proc") if p.isdigit() and any(_fd_is(p, fd, pipe) for fd in _fds(p))]
    except OSError as e:
        pipe, holders = f"? ({e})", []
    return f"processes {mine}; stdin {pipe} held by pids {holders}; output {(tmp_path / 'out').read_bytes()!r}"


def _fds(pid: str) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


def _fd_is(pid: str, fd: str, target: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == target
    except OSError:
        return False


def test_bad_input_is_refused(exe, tmp_path):
    s = tmp_path / "step"
    (s / "files").mkdir(parents=True)
    p = subprocess.run(["sh", str(exe / "run.sh"), str(s)], input=b"hello\n", capture_output=True, timeout=10)
    assert p.returncode == 125 and b"unexpected input" in p.stderr


def test_python_helpers_validate_names(exe, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(exe))
    monkeypatch.setenv("SSHEXEC_NONCE", NONCE)
    monkeypatch.setenv("SSHEXEC_VARS", str(tmp_path))
    import importlib

    sx = importlib.import_module("sshexec_helpers")
    with pytest.raises(ValueError):
        sx.set_variable("../x", "v")
    with pytest.raises(KeyError):
        sx.get_variable("nope")
    sys.modules.pop("sshexec_helpers", None)


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_the_variables_directory_goes_with_the_executor(exe, tmp_path, shell):
    """Secrets sit in files while the step runs; none stays once the executor ends."""
    code, out, err = run(exe, tmp_path, 'echo "$SSHEXEC_VARS"; cat "$SSHEXEC_VARS/TOKEN"', variables={"TOKEN": "s3cret-value"}, shell=shell)
    assert code == 0, err
    vars_dir, value = out.decode().splitlines()[:2]
    assert value == "s3cret-value" and "/vars." in vars_dir
    assert not os.path.exists(vars_dir)


def shimmed_path(tmp_path, names=("mkdir", "id", "rm", "chmod")) -> tuple[str, Path]:
    """A PATH whose `names` note each start in a log, then run the real program."""
    shims, log = tmp_path / "shims", tmp_path / "programs.log"
    shims.mkdir()
    for name in names:
        real = shutil.which(name)
        (shims / name).write_text(f'#!/bin/sh\necho {name} >>"{log}"\nexec {real} "$@"\n')
        (shims / name).chmod(0o755)
    return f"{shims}:{os.environ['PATH']}", log


def programs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_with_the_containers_tmpfs_the_variables_stay_in_it_and_no_program_runs_on_the_way_out(exe, tmp_path, shell):
    """GO passes the container's own tmpfs (worker/docker.py VARS_TMPFS): the variables go in it and are left
    to the mount, and the uid comes from /proc: mkdir is the executor's only program besides the script's shell
    (an `id` and an `rm` were 2 ms of every step)."""
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir(mode=0o1777)
    path, log = shimmed_path(tmp_path)
    code, out, err = run(exe, tmp_path, 'echo "$SSHEXEC_VARS"; cat "$SSHEXEC_VARS/TOKEN"', variables={"TOKEN": "s3cret-value"}, shell=shell, env={"PATH": path}, tmpfs=tmpfs)
    assert code == 0, err
    vars_dir, value = out.decode().splitlines()[:2]
    assert value == "s3cret-value" and vars_dir.startswith(f"{tmpfs}/vars.")
    assert oct(os.stat(vars_dir).st_mode & 0o777) == "0o700"
    # busybox's sh runs its own applets (mkdir among them) without a new program
    assert programs(log) == ([] if shell == "busybox" else ["mkdir"])


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_a_container_user_who_is_not_the_owner_opens_the_files_to_the_owner(exe, tmp_path, shell):
    """The uid read from /proc/self/status is compared with the SSH user's: another owner gets the files opened (chmod)."""
    path, log = shimmed_path(tmp_path)
    code, _out, err = run(exe, tmp_path, 'umask 077; echo x > made', shell=shell, env={"PATH": path}, owner=os.getuid() + 4242)
    assert code == 0, err
    assert "id" not in programs(log)
    made = tmp_path / "step" / "files" / "made"
    assert oct(made.stat().st_mode & 0o777) == "0o666"
    made.chmod(0o600)
    code, _out, err = run(exe, tmp_path, "true", shell=shell, env={"PATH": path})
    assert code == 0, err
    assert oct(made.stat().st_mode & 0o777) == "0o600"  # the owner itself: nothing to open


# -- loader names (sshexec/config/variables.py): exported only when sshexec's header allows them ----------------

LOADERS = {
    "PYTHONPATH": "/from/outside", "PYTHONSTARTUP": "/x.py", "NODE_OPTIONS": "--require /x", "PERL5OPT": "-Mx", "RUBYOPT": "-rx",
    "BASH_ENV": "/x", "ENV": "/x", "LD_PRELOAD": "/x.so", "GIT_SSH_COMMAND": "touch /x", "JAVA_TOOL_OPTIONS": "-javaagent:/x.jar",
}  # fmt: skip


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_loader_names_are_exported_only_when_allowed(exe, tmp_path, shell):
    variables = {**LOADERS, "PYTHONIOENCODING": "utf-8", "GREETING": "hi"}
    script = "env | grep -E '^(%s)=' | sort; for n in %s; do printf 'get:%%s=%%s\\n' $n \"$(get_sshexec_variable $n)\"; done" % (
        "|".join(variables), " ".join(variables))  # fmt: skip
    code, out, err = run(exe, tmp_path, script, variables=variables, shell=shell)
    assert code == 0, err
    lines = out.decode().splitlines()
    exported = {line.split("=", 1)[0] for line in lines if not line.startswith("get:")}
    assert exported == {"PYTHONIOENCODING", "GREETING"}
    assert {f"get:{k}={v}" for k, v in variables.items()} <= set(lines)  # every value still readable
    # The runbook's own values of the names it lists under loader_variables: exported, and only those.
    code, out, err = run(exe, tmp_path, script, variables=variables, shell=shell, allow={"PYTHONPATH", "GIT_SSH_COMMAND"})
    assert code == 0, err
    exported = {line.split("=", 1)[0] for line in out.decode().splitlines() if not line.startswith("get:")}
    assert exported == {"PYTHONIOENCODING", "GREETING", "PYTHONPATH", "GIT_SSH_COMMAND"}


def test_a_python_step_never_searches_a_pythonpath_it_was_not_allowed(exe, tmp_path):
    """Issue 19's exploit, here: PYTHONPATH naming a directory that holds a sitecustomize.py."""
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "sitecustomize.py").write_text("print('INJECTED CODE RAN')\n")
    script = "import sys; print('paths', [p for p in sys.path if p.endswith(('/evil', '/image-lib'))])"
    code, out, err = run(exe, tmp_path, script, syntax="python", variables={"PYTHONPATH": str(evil)}, env={"PYTHONPATH": "/image-lib"})
    assert code == 0, err
    assert b"INJECTED" not in out + err
    assert "paths ['/image-lib']" in out.decode()  # the image's own PYTHONPATH still counts
    # The same value, allowed (a runbook's own, under loader_variables:): searched, so the check above can fail.
    code, out, err = run(exe, tmp_path, script, syntax="python", variables={"PYTHONPATH": str(evil)}, allow={"PYTHONPATH"})
    assert code == 0 and b"INJECTED CODE RAN" in out, err


def test_the_executors_loader_list_is_sshexecs():
    from sshexec.config.variables import HARMLESS, LOADER_NAMES

    text = executor_files()["run.sh"].decode().replace("\\\n", " ")
    items = {}
    for line in text.splitlines():
        head = line.strip().split(")", 1)[0]
        if "|" in head and not head.startswith(("#", "*", '"', "case")):
            items[head.split("|", 1)[0].strip()] = [w.strip() for w in head.split("|")]
    assert set(items["BASH_ENV"]) == set(LOADER_NAMES)
    assert set(items["PYTHONDONTWRITEBYTECODE"]) == set(HARMLESS)
