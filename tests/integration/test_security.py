"""Hostile input and secrets against the real lab: the battery behind docs/security.md.

The rows of the table in docs/security.md live in tests/security_cases.py; the
tests here that take a `case` run over exactly the rows that name them, and a
row with a known gap runs as a strict xfail until the gap is fixed.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
import yaml
from labkit import REPO, docker, extra_worker, inventory_file, sshexec, step, stored_log, write_runbook
from security_cases import FIELDS, PAYLOADS, params, xfail_if_gap

pytestmark = pytest.mark.usefixtures("no_leftovers")

LAB_WORKERS = ("w1", "w2", "w3")
MASK = "********"


# -- helpers ------------------------------------------------------------------------------------


def new_marker() -> str:
    return "pwn" + uuid.uuid4().hex[:6]


def marker_hits(lab, markers, containers=()) -> list[str]:
    """Where any marker file exists: /tmp here and /tmp of every lab worker (and of `containers`)."""
    hits = [f"here:/tmp/{m}" for m in markers if os.path.lexists(f"/tmp/{m}")]
    for c in [f"{lab.name}-{w}" for w in LAB_WORKERS] + list(containers):
        names = set(docker("exec", c, "ls", "-a", "/tmp").stdout.split())
        hits += [f"{c}:/tmp/{m}" for m in markers if m in names]
    return hits


def lab_inventory(lab) -> dict:
    data = yaml.safe_load(lab.inventory_path.read_text())
    data["defaults"]["identity_file"] = str(lab.key_path)
    data["defaults"]["known_hosts"] = str(lab.known_hosts_path)
    return data


def cli(capsys, *argv) -> tuple[int, str]:
    """The sshexec program inside this process (fast, for input errors): its exit code and output."""
    from sshexec.cli import program

    code = program.run(["sshexec", *map(str, argv)], exit=False)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def run_json(rb, *args, env=None):
    res = sshexec("run", rb, "--json", *args, env=env)
    data = json.loads(res.stdout) if res.stdout.strip().startswith("{") else None
    return res, data


def live_lines(text: str, prefix: str) -> dict[str, str]:
    """`KEY=VALUE` lines a step printed, from the `WORKER/STEP | ...` stream."""
    got = {}
    for line in text.splitlines():
        if f"{prefix} | " in line:
            body = line.split(f"{prefix} | ", 1)[1]
            key, sep, value = body.partition("=")
            if sep:
                got[key] = value
    return got


def home_files() -> list[Path]:
    return [p for p in Path(os.environ["SSHEXEC_HOME"]).rglob("*") if p.is_file()]


def fingerprints(container: str) -> set[str]:
    """SHA256 fingerprints of every host key a worker container offers."""
    out = docker("exec", container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout
    fps = set()
    for line in out.splitlines():
        kind, b64 = line.split()[:2]
        fps.add(paramiko.PKey.from_type_string(kind, base64.b64decode(b64)).fingerprint)
    return fps


# -- 1. host keys ----------------------------------------------------------------------------------


def test_no_module_accepts_unknown_host_keys():
    """Every SSH handshake in sshexec/ is followed by our own host-key check; no accepting policy exists.

    paramiko's SSHClient (and fabric's Connection, which adds unknown keys) are
    not used at all: ssh/_dial.py makes every Transport, and the one function that
    starts a handshake checks the key (or hands it to `sshexec trust`) before
    anything else is sent.
    """
    import sshexec

    root = Path(sshexec.__file__).parent
    offences = []
    handshakes = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name in ("AutoAddPolicy", "WarningPolicy", "MissingHostKeyPolicy", "SSHClient", "set_missing_host_key_policy", "load_system_host_keys", "save_host_keys"):
                offences.append(f"{path.name}:{node.lineno} uses {name}")
            if isinstance(node, ast.Attribute) and node.attr == "Connection" and ast.unparse(node.value) == "fabric":
                offences.append(f"{path.name}:{node.lineno} uses fabric.Connection")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("paramiko.Transport", "Transport", "_Transport") and path.relative_to(root).as_posix() != "ssh/_dial.py":
                offences.append(f"{path.name}:{node.lineno} makes a Transport outside ssh/_dial.py")
            if isinstance(node, ast.FunctionDef):
                calls = {ast.unparse(c.func).split(".")[-1] for c in ast.walk(node) if isinstance(c, ast.Call)}
                if "start_client" in calls:
                    handshakes.append(f"{path.relative_to(root).as_posix()}:{node.name}")
                    if not {"check_host_key", "on_host_key"} <= calls:
                        offences.append(f"{path.name}:{node.name} starts a handshake without the host-key check")
    assert offences == []
    assert handshakes == ["ssh/_dial.py:_connect_once"]


def test_unknown_host_key_is_refused_by_run_and_prepull(lab_env, tmp_path):
    w1 = next(w for w in lab_inventory(lab_env)["workers"] if w["name"] == "w1")
    inv = inventory_file(tmp_path, lab_env, [w1], known_hosts="")
    kh = tmp_path / "inv.yaml.known_hosts"
    env = {**os.environ, "SSHEXEC_INVENTORY": str(inv)}
    fps = fingerprints(f"{lab_env.name}-w1")
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "hk", "steps": [step("s", lab_env.image_ref("busybox"), "echo must-not-run", syntax="sh")]})
    res, data = run_json(rb, env=env)
    assert res.returncode == 3, res.stderr
    assert "must-not-run" not in res.stdout + res.stderr
    (s,) = data["steps"]
    assert s["status"] == "error" and s["error"]["error"] == "UnknownHostKey"
    assert "is unknown" in s["message"] and "refusing to connect" in s["message"]
    assert set(re.findall(r"SHA256:[A-Za-z0-9+/=]+", s["message"])) & fps
    assert s["error"]["hint"] == "if that fingerprint is right, run: sshexec trust --worker w1"
    assert kh.read_text() == ""

    pre = sshexec("prepull", lab_env.image_ref("busybox"), "--inventory", inv, "--json")
    assert pre.returncode == 3
    (w,) = json.loads(pre.stdout)["workers"]
    assert w["error"]["error"] == "UnknownHostKey" and set(re.findall(r"SHA256:[A-Za-z0-9+/=]+", w["error"]["message"])) & fps
    assert "sshexec trust --worker w1" in w["error"]["hint"]
    assert kh.read_text() == ""


def test_changed_host_key_is_refused_by_run(lab, tmp_path):
    with extra_worker(lab, env={"SSHEXEC_REGEN_HOSTKEYS": "1"}) as xw:
        spec = {"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["solo"], "work_root": str(xw.work)}
        inv = inventory_file(tmp_path, lab, [spec], known_hosts=xw.host_keys())
        kh = tmp_path / "inv.yaml.known_hosts"
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "hk", "steps": [step("s", lab.image_ref("busybox"), "echo ran-$SSHEXEC_RUN_ID", syntax="sh", pool="solo")]})
        env = {**os.environ, "SSHEXEC_INVENTORY": str(inv)}
        first, data = run_json(rb, env=env)
        assert first.returncode == 0, first.stderr
        old_fps = fingerprints(xw.id)

        # The worker is "reinstalled": new host keys, same address (the port of a restarted container may move).
        from sshexec.lab.core import wait_for_ssh

        old_port = xw.port
        docker("restart", xw.id)
        xw.port = int(xw.container.get_exposed_port(22))
        wait_for_ssh(xw.port, xw.id)
        new_fps = fingerprints(xw.id)
        assert not old_fps & new_fps
        known = kh.read_text().replace(f"[127.0.0.1]:{old_port} ", f"[127.0.0.1]:{xw.port} ")
        inv = inventory_file(tmp_path, lab, [{**spec, "port": xw.port}], known_hosts=known)
        res, data = run_json(rb, env=env)
        assert res.returncode == 3, res.stderr
        (s,) = data["steps"]
        assert s["error"]["error"] == "ChangedHostKey"
        assert "HOST KEY CHANGED" in s["message"] and "man-in-the-middle" in s["message"]
        shown = set(re.findall(r"SHA256:[A-Za-z0-9+/=]+", s["message"]))
        assert shown & old_fps and shown & new_fps
        assert "--replace" in s["error"]["hint"]
        assert f"ran-{data['run_id']}" not in res.stdout + res.stderr
        assert kh.read_text() == known  # never replaced, never added to
        assert not (xw.work / "runs" / data["run_id"]).exists()


# -- 2. injection: names -------------------------------------------------------------------------------


def base_runbook(lab) -> dict:
    return {
        "name": "hostile",
        "variables": {"A": "1"},
        "sensitive_variables": {"SV": {"env": "SEC_TOKEN"}},
        "steps": [step("s", lab.image_ref("busybox"), "echo ran", syntax="sh", feed="lab")],
    }


def valid(field, lab) -> str:
    return lab.image_ref("busybox") if field.valid == "IMAGE" else field.valid


def hostile_command(field, value: str, lab, tmp_path) -> list:
    """The sshexec arguments that put `value` into `field`, with everything else valid."""
    inv, rb = lab_inventory(lab), base_runbook(lab)
    doc = inv if field.where == "inventory" else rb
    if field.where in ("inventory", "runbook"):
        node = doc
        for part in field.at[:-1]:
            node = node[part]
        node[field.at[-1]] = value
    elif field.where == "runbook-key":
        section, key = field.at
        rb[section][value] = rb[section].pop(key)
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(yaml.safe_dump(inv))
    rb_path = write_runbook(tmp_path / "rb.yaml", rb)
    if field.where != "argv":
        return ["run", rb_path, "--inventory", inv_path]
    verb, *rest = field.at
    rest = [word.replace("{}", value) for word in rest]
    if verb == "prepull":
        return ["prepull", *rest, "--inventory", inv_path, "--worker", "w1"]
    return ["run", rb_path, "--inventory", inv_path, *rest]


@pytest.mark.parametrize("case", params("test_hostile_names_are_input_errors"))
def test_hostile_names_are_input_errors(case, lab_env, tmp_path, capsys, monkeypatch):
    f = FIELDS[case.data["field"]]
    monkeypatch.setenv("SEC_TOKEN", "not-a-real-secret")
    markers = []
    for p in PAYLOADS:
        if p.id in f.skip:
            continue
        m = new_marker()
        markers.append(m)
        value = (valid(f, lab_env) if p.prefixed else f.base) + p.text.replace("{m}", m)
        code, out = cli(capsys, *hostile_command(f, value, lab_env, tmp_path))
        assert code == 2, f"payload {p.id}: {value!r} gave exit {code}:\n{out[-1500:]}"
        if f.where == "argv" and value.startswith("-") and "see: sshexec --help" in out:
            continue  # a positional argument that looks like an option is refused as one
        for words in f.says:
            assert words in out, f"payload {p.id}: {words!r} not in:\n{out[-1500:]}"
    # Once more through the real program, in its own process.
    m = new_marker()
    markers.append(m)
    res = sshexec(*hostile_command(f, valid(f, lab_env) + f"$(touch${{IFS}}/tmp/{m})", lab_env, tmp_path), env={**os.environ, "SEC_TOKEN": "not-a-real-secret"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert all(words in res.stderr for words in f.says), res.stderr
    assert marker_hits(lab_env, markers) == []


@pytest.mark.parametrize("case", params("test_trailing_newline_is_an_input_error"))
def test_trailing_newline_is_an_input_error(case, lab_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEC_TOKEN", "not-a-real-secret")
    for fid in case.data["fields"]:
        f = FIELDS[fid]
        code, out = cli(capsys, *hostile_command(f, valid(f, lab_env) + "\n", lab_env, tmp_path))
        assert code == 2, f"{fid}: a trailing newline gave exit {code}:\n{out[-1500:]}"
        for words in f.says:
            assert words in out, f"{fid}: {words!r} not in:\n{out[-1500:]}"


def test_feed_username_reaches_docker_login_as_one_word(lab_env, tmp_path):
    image = lab_env.image_ref("busybox")
    markers, runs = [], []
    for p in PAYLOADS:
        m = new_marker()
        markers.append(m)
        inv = lab_inventory(lab_env)
        inv["feeds"][0]["username"] = ("ci" if p.prefixed else "") + p.text.replace("{m}", m)
        path = tmp_path / f"inv-{p.id}.yaml"
        path.write_text(yaml.safe_dump(inv))
        runs.append((p.id, ["prepull", image, "--feed", "lab", "--worker", "w1", "--inventory", path, "--json"], None))
    m = new_marker()
    markers.append(m)
    hostile_pw = f"$(touch /tmp/{m})\n;touch /tmp/{m};`touch /tmp/{m}`'\""
    runs.append(("password", ["prepull", image, "--feed", "lab", "--worker", "w1", "--inventory", lab_env.inventory_path, "--json"],
                 {**os.environ, "SSHEXEC_LAB_REGISTRY_PASSWORD": hostile_pw}))  # fmt: skip
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda r: sshexec(*r[1], env=r[2]), runs))
    reached = 0
    for (pid, _, _), res in zip(runs, results):
        if res.returncode == 2:
            assert "feeds[lab].username" in res.stderr, (pid, res.stderr)
            continue
        assert res.returncode == 3, (pid, res.stdout, res.stderr)
        (w,) = json.loads(res.stdout)["workers"]
        assert w["error"]["error"] == "LoginError" and "registry login failed for feed lab" in w["error"]["message"], (pid, w)
        reached += 1
    assert reached >= 6  # most payloads really went through the worker's shell
    assert marker_hits(lab_env, markers) == []


# -- 2. injection: values and files -------------------------------------------------------------------


def test_hostile_values_arrive_byte_for_byte(lab_env, tmp_path):
    """What test_variables does not already try: raw bytes, a secret full of payloads, header forgery, reserved names."""
    m = new_marker()
    secret = os.fsdecode(("s3cr3t " + " ".join(p.text for p in PAYLOADS) + " %s%n\\0 end").replace("{m}", m).encode() + b"\xff\xfe")
    secret_bytes = os.fsencode(secret)
    raw = bytes(range(1, 256))
    # Loader names (LD_PRELOAD, BASH_ENV, ENV...) need loader_variables: and never come from outside: the case vars-loader-names.
    plain = {
        "HDR": "x\nend\nvar INJECTED 1\nnonce " + "0" * 32 + "\nsyntax python\n",
        "PATH": "/evil-path", "IFS": "x", "SSHEXEC_NONCE": "0" * 32, "SSHEXEC_VARS": "/tmp",
    }  # fmt: skip
    names = ["BYTES", "SECRET", *plain]
    script = "\n".join(
        [f"printf 'get:{n}='; get_sshexec_variable {n} | od -An -v -tx1 | tr -d ' \\n'; echo" for n in names]
        + [
            "printf 'env:BYTES='; printf '%s' \"$BYTES\" | od -An -v -tx1 | tr -d ' \\n'; echo",
            "printf 'sha:SECRET=%s\\n' \"$(printf '%s' \"$SECRET\" | sha256sum | cut -c1-64)\"",
            'echo "raw:$SECRET"',
            'echo "injected=${INJECTED-unset}"',
            'echo "path=$PATH"',
            'echo "vars=$SSHEXEC_VARS"',
            "printf 'ifs='; printf '%s' \"$IFS\" | od -An -tx1 | tr -d ' \\n'; echo",
            "printf 'exported=%s\\n' \"$(env | grep -E '^(IFS=|SSHEXEC_NONCE=0{32}$|SSHEXEC_VARS=/tmp$)' | tr '\\n' ' ')\"",
            "set_sshexec_variable Works yes",
            "ls /tmp/pwn* 2>/dev/null && echo PWNED-IN-CONTAINER || true",
        ]
    )
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "values", "variables": {**plain, "BYTES": ""}, "sensitive_variables": {"SECRET": {"env": "SEC_TOKEN"}},
        "steps": [step("s", lab_env.image_ref("tools"), script)],
    })  # fmt: skip
    argv = [sys.executable, "-m", "sshexec", "run", str(rb), "--json", "--worker", "w1", "--var", b"BYTES=" + raw]
    res = subprocess.run(argv, capture_output=True, cwd=REPO, env={**os.environ, "SEC_TOKEN": secret}, timeout=300)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]
    data = json.loads(res.stdout)
    got = live_lines(res.stderr.decode("utf-8", "surrogateescape"), "w1/s")
    want = {"BYTES": raw, "SECRET": secret_bytes, **{k: v.encode() for k, v in plain.items()}}
    for n, v in want.items():
        assert bytes.fromhex(got[f"get:{n}"]) == v, n
    assert bytes.fromhex(got["env:BYTES"]) == raw
    assert got["sha:SECRET"] == hashlib.sha256(secret_bytes).hexdigest()
    # The header could not be forged, reserved names were not exported, the helpers still talk to us.
    assert got["injected"] == "unset"
    assert got["path"] != "/evil-path" and "/usr/bin" in got["path"]
    assert got["vars"] != "/tmp" and got["ifs"] == "20090a" and got["exported"] == ""
    assert data["outputs"]["s.Works"] == "yes"
    # The secret: masked on the way out, never in clear.
    assert f"raw:{MASK}".encode() in res.stderr
    for blob in (res.stdout, res.stderr, *(p.read_bytes() for p in home_files())):
        assert secret_bytes not in blob
    assert b"PWNED" not in res.stderr
    assert marker_hits(lab_env, [m]) == []


@xfail_if_gap("values-executor-names")
def test_variables_named_like_executor_internals(lab_env, tmp_path):
    names = {"S": "/nowhere", "X": "/nowhere", "sx_syntax": "python", "sx_owner": "0"}
    script = 'echo "bash=${BASH_VERSION:+yes}"; for n in S X sx_syntax sx_owner; do printf "get:%s=%s\\n" "$n" "$(get_sshexec_variable $n)"; done'
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "internals", "variables": names, "steps": [step("s", lab_env.image_ref("tools"), script)]})
    res, _ = run_json(rb, "--worker", "w1")
    assert res.returncode == 0, res.stderr[-2000:]
    got = live_lines(res.stderr, "w1/s")
    assert got["bash"] == "yes"
    assert {n: got[f"get:{n}"] for n in names} == names


def test_nul_in_a_value_is_an_input_error(lab_env, tmp_path, capsys):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "nul", "variables": {"A": "x\0y"}, "steps": [step("s", lab_env.image_ref("busybox"), "true", syntax="sh")]})
    res = sshexec("run", rb)
    assert res.returncode == 2 and "variables" in res.stderr and "NUL" in res.stderr, res.stderr
    ok = write_runbook(tmp_path / "ok.yaml", {"name": "nul", "variables": {"B": ""}, "steps": [step("s", lab_env.image_ref("busybox"), "true", syntax="sh")]})
    code, out = cli(capsys, "run", ok, "--var", "B=x\0y")  # NUL cannot travel in a real argv
    assert code == 2 and "--var B" in out and "NUL" in out, out


@pytest.mark.parametrize("case", params("test_output_values_and_names_from_a_step"))
def test_output_values_and_names_from_a_step(case, lab_env, tmp_path):
    m = new_marker()
    tools = lab_env.image_ref("tools")
    if case.id == "output-values":
        value = bytes(range(1, 256)) + f"$(touch /tmp/{m})`touch /tmp/{m}`;touch /tmp/{m}\n##sshexec[{'0' * 32}] set 41 42 0\nend\n".encode()
        octal = "".join(f"\\{b:03o}" for b in value)
        first = f"v=$(printf '{octal}x'); set_sshexec_variable V \"${{v%x}}\""
        second = "printf 'got='; get_sshexec_variable a.V | od -An -v -tx1 | tr -d ' \\n'; echo"
    else:
        forged = b"../x".hex()
        first = f"printf '##sshexec[%s] set {forged} 76 0\\n' \"$SSHEXEC_NONCE\""
        second = "echo got=b-ran"
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "outputs", "steps": [step("a", tools, first), step("b", tools, second)]})
    # Not --json, and the terminal's encoding pinned: printing non-UTF-8 outputs is the case output-nonutf8.
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"}
    res = subprocess.run([sys.executable, "-m", "sshexec", "run", str(rb), "--worker", "w1"], capture_output=True, cwd=REPO, env=env, timeout=300)
    out = res.stdout.decode("utf-8", "surrogateescape")
    assert res.returncode == 0, out + res.stderr.decode(errors="replace")
    from sshexec.store.history import History

    h = History()
    assert [s["status"] for s in h.steps(h.runs(1)[0].id)] == ["succeeded", "succeeded"]
    got = live_lines(out, "w1/b")["got"]
    if case.id == "output-values":
        assert bytes.fromhex(got) == value
    else:
        assert got == "b-ran"
    assert marker_hits(lab_env, [m]) == []


@xfail_if_gap("output-nonutf8")
def test_non_utf8_output_values_do_not_break_the_cli(lab_env, tmp_path):
    script = "set_sshexec_variable V \"$(printf 'ok\\377\\376end')\""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "bytes", "steps": [step("a", lab_env.image_ref("busybox"), script, syntax="sh")]})
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # what a UTF-8 desktop locale gives Python
    for extra in ([], ["--json"]):
        res = subprocess.run([sys.executable, "-m", "sshexec", "run", str(rb), "--worker", "w1", *extra], capture_output=True, cwd=REPO, env=env, timeout=300)
        assert res.returncode == 0, res.stderr.decode(errors="replace")[-1500:]
        res.stdout.decode("utf-8")  # valid UTF-8
        if extra:
            assert json.loads(res.stdout)["outputs"]["a.V"].startswith("ok")


def _tree(root: bytes) -> dict[str, tuple]:
    """{hex of relative path: (kind, detail)} of a directory, as the container reports it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root).hex()
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p).hex())
            elif os.path.isdir(p):
                out[rel] = ("d", "")
            else:
                with open(p, "rb") as fh:
                    out[rel] = ("f", hashlib.sha256(fh.read()).hexdigest())
    return out


TREE_SCRIPT = r"""
import hashlib, json, os
def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root).hex()
            if os.path.islink(p):
                out[rel] = ["l", os.readlink(p).hex()]
            elif os.path.isdir(p):
                out[rel] = ["d", ""]
            else:
                out[rel] = ["f", hashlib.sha256(open(p, "rb").read()).hexdigest()]
    return out
print("TREE=" + json.dumps(tree(b".")))
"""


def test_file_names_arrive_literally(lab_env, tmp_path):
    markers = []
    names = []
    for p in PAYLOADS:
        if p.id == "dotdot":
            continue
        m = new_marker()
        markers.append(m)
        names.append(p.text.replace("/tmp/{m}", m).replace("{m}", m).encode())  # relative: a file name has no '/'
    m = new_marker()
    markers.append(m)
    names += ["--checkpoint=1", f"--checkpoint-action=exec=touch${{IFS}}{m}", "-rf", "*", "?", "[a]", "\\", " lead", "trail ", "tab\there",
              "\x1b[2Jesc", "é ✓ 日本", "...", "x" * 255]  # fmt: skip
    names = [n if isinstance(n, bytes) else n.encode() for n in names] + [b"\xff\xfe not utf-8"]
    root = tmp_path / "payload"
    root.mkdir()
    rootb = os.fsencode(root)
    for i, n in enumerate(names):
        with open(os.path.join(rootb, n), "wb") as fh:
            fh.write(n + bytes([i]) * i)
    nested = os.path.join(rootb, b"$(touch${IFS}" + m.encode() + b")")
    os.mkdir(nested)
    with open(os.path.join(nested, b";inner"), "wb") as fh:
        fh.write(os.urandom(1000))
    os.symlink(b"-rf", os.path.join(rootb, b"link to -rf"))
    os.symlink(b"../-rf", os.path.join(nested, b"up"))
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "names", "steps": [step("s", lab_env.image_ref("tools"), TREE_SCRIPT, syntax="python", files=str(root))]})
    res, _ = run_json(rb, "--worker", "w1")
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(line for line in res.stderr.splitlines() if "| TREE=" in line)
    remote = {k: tuple(v) for k, v in json.loads(line.split("| TREE=", 1)[1]).items()}
    assert remote == _tree(rootb)
    hits = marker_hits(lab_env, markers)
    hits += [f"here:{d}/{x}" for d in ("/tmp", str(REPO), str(tmp_path)) for x in markers if os.path.lexists(os.path.join(d, x))]
    for w in LAB_WORKERS:
        found = docker("exec", f"{lab_env.name}-{w}", "sh", "-c", f"find / -xdev {' -o '.join(f'-name {x}' for x in markers)} 2>/dev/null; "
                       f"find {lab_env.work_root(w)} {' -o '.join(f'-name {x}' for x in markers)} 2>/dev/null", check=False).stdout.split()  # fmt: skip
        hits += [f"{w}:{x}" for x in found]
    assert hits == []


# -- 3. secrets ----------------------------------------------------------------------------------------


class WorkRootScan(threading.Thread):
    """Reads every regular file under a worker's work_root (the same path on this host) in a loop."""

    def __init__(self, root: Path, needles: dict[str, bytes], limit: float = 240.0):
        super().__init__(daemon=True)
        self.root, self.needles, self.limit = str(root), needles, limit
        self.found: list[tuple[str, str]] = []  # (needle, path) of files holding a secret
        self.creds: set[tuple[str, int, int]] = set()  # (path, mode, uid of its directory): docker's credential entry
        self.seen: set[str] = set()
        self.passes = 0
        self._halt = threading.Event()

    def scan_once(self) -> None:
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    if not stat.S_ISREG(os.lstat(p).st_mode):
                        continue  # never block on a FIFO
                    with open(p, "rb") as fh:
                        data = fh.read()
                    st = os.stat(dirpath)
                except OSError:
                    continue  # removed meanwhile
                self.seen.add(p)
                for key, needle in self.needles.items():
                    if needle in data:
                        if key == "credential":
                            self.creds.add((p, stat.S_IMODE(st.st_mode), st.st_uid))
                        else:
                            self.found.append((key, p))
        self.passes += 1

    def run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._halt.is_set() and time.monotonic() < end:
            self.scan_once()
            self._halt.wait(0.002)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


class InspectPoll(threading.Thread):
    """`docker inspect` of the step's container while it runs; once, what another worker user can see."""

    def __init__(self, step_name: str, container: str, work_root: Path, daemon: str, limit: float = 240.0):
        super().__init__(daemon=True)
        self.step_name, self.container, self.work_root, self.limit = step_name, container, work_root, limit
        self.daemon = daemon  # the worker's own Docker daemon
        self.inspected: list[str] = []
        self.other_user: str | None = None
        self.run_dir_mode: int | None = None  # of work_root/runs/<run id>, seen here (same path)
        self._halt = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._halt.is_set() and time.monotonic() < end:
            for cid in docker("ps", "-q", "--filter", f"label=sshexec.step={self.step_name}", check=False, host=self.daemon).stdout.split():
                r = docker("inspect", cid, check=False, host=self.daemon)
                if r.returncode != 0 or not json.loads(r.stdout or "[]"):
                    continue  # gone meanwhile
                self.inspected.append(r.stdout)
                if self.other_user is None:
                    run_id = json.loads(r.stdout)[0]["Config"]["Labels"]["sshexec.run"]
                    self.run_dir_mode = stat.S_IMODE(os.stat(self.work_root / "runs" / run_id).st_mode)
                    self.other_user = docker(
                        "exec", "-u", "nodocker", self.container, "sh", "-c",
                        "id; for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do cat $f 2>/dev/null; echo; done; "
                        f"ls -la {self.work_root}/runs/{run_id} 2>&1; cat {self.work_root}/runs/{run_id}/*/*/script 2>&1",
                        check=False,
                    ).stdout  # fmt: skip
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


LEAK_SCRIPT = r"""
set_sshexec_variable "$TOKEN" x || true
get_sshexec_variable "$TOKEN" || true
cd "/nonexistent/$TOKEN" || true
PYTHONPATH="${SSHEXEC_HELPERS%/*}" python3 -c 'import os, sshexec_helpers as sx; sx.set_variable(os.environ["TOKEN"], "x")' || true
touch "/tmp/$TOKEN"; new_sshexec_artifact "/tmp/$TOKEN" || true
echo ready
# Held until the watchers below have seen the moments that matter (Release touches go; bounded), not for a fixed time.
end=$(($(date +%s) + 60)); while [ ! -e go ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.1; done
echo done
"""


class Release(threading.Thread):
    """Lets the leak step end (a file `go` in its working directory) once every watcher has seen it running: docker
    inspect of its container, what another user sees, its bundle and the lock and heartbeat records under work_root,
    and the `docker run` in the worker's process list."""

    def __init__(self, scan: WorkRootScan, poll: InspectPoll, container: str, step_name: str, pslog: str, limit: float = 120.0):
        super().__init__(daemon=True)
        self.scan, self.poll, self.container, self.step_name, self.pslog, self.limit = scan, poll, container, step_name, pslog, limit
        self.released = False
        self._halt = threading.Event()

    def _script(self) -> str | None:
        return next((p for p in list(self.scan.seen) if p.endswith(f"/{self.step_name}/script")), None)

    def _ready(self) -> bool:
        seen = list(self.scan.seen)
        coord = [p for p in seen if "/coord/" in p]
        if not (self.poll.inspected and self.poll.other_user and self._script()):
            return False
        if not (any("/live/" in p for p in coord) and any("/locks/" in p for p in coord)):
            return False
        return docker("exec", self.container, "grep", "-q", self.step_name, self.pslog, check=False).returncode == 0

    def run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._halt.is_set() and time.monotonic() < end:
            if self._ready():
                go = Path(self._script()).parent / "files" / "go"
                try:
                    go.touch()
                    self.released = True
                    return
                except OSError:
                    pass  # not there yet
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def test_secrets_stay_off_the_worker_and_out_of_errors(lab_env, tmp_path):
    token = "tok!" + uuid.uuid4().hex  # '!' makes it a bad variable and artifact name: errors quote it
    password = lab_env.registry_password()
    credential = base64.b64encode(f"sshexec:{password}".encode())  # what `docker login` stores
    needles = {"token": token.encode(), "password": password.encode(), "credential": credential}
    step_name = "leak" + uuid.uuid4().hex[:8]
    container, root = f"{lab_env.name}-w1", lab_env.work_root("w1")
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "leaks", "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}}, "lock": "leaks",  # its owner records too
        "steps": [step(step_name, lab_env.image_ref("tools"), LEAK_SCRIPT, feed="lab", pull="always")],
    })  # fmt: skip

    tag = uuid.uuid4().hex[:8]
    pslog, stop, done = f"/tmp/ps-{tag}", f"/tmp/stop-{tag}", f"/tmp/done-{tag}"
    # `ps` in a tight loop inside the worker, bounded in time, for the whole run (registry login included).
    docker("exec", "-d", container, "sh", "-c",
           f"end=$(($(date +%s) + 180)); while [ ! -e {stop} ] && [ $(date +%s) -lt $end ]; do ps -eo args; echo ---; done >{pslog} 2>&1; touch {done}")  # fmt: skip
    scan = WorkRootScan(root, needles)
    poll = InspectPoll(step_name, container, root, lab_env.daemon("w1").host)
    release = Release(scan, poll, container, step_name, pslog)
    scan.start()
    poll.start()
    release.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "sshexec", "run", str(rb), "--worker", "w1"], capture_output=True, cwd=REPO,
                              env={**os.environ, "SEC_TOKEN": token}, timeout=240)  # fmt: skip
    finally:
        release.stop()
        scan.stop()
        poll.stop()
        docker("exec", container, "touch", stop)
        end = time.monotonic() + 20
        while docker("exec", container, "test", "-e", done, check=False).returncode != 0 and time.monotonic() < end:
            time.sleep(0.2)
        ps_text = docker("exec", container, "cat", pslog).stdout
        docker("exec", container, "rm", "-f", pslog, stop, done)
    run_id = json.loads(sshexec("runs", "--json").stdout)[0]["id"]
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 1, shown.decode(errors="replace")[-3000:]  # the artifact named after the token is refused

    # The errors really happened, and said the value only masked.
    assert f"bad variable name {MASK}".encode() in shown
    assert f"/nonexistent/{MASK}".encode() in shown
    assert f"ValueError: bad variable name '{MASK}'".encode() in shown
    logs = json.loads(sshexec("logs", run_id, "--json").stdout)
    assert f"artifact name '{MASK}'" in logs["steps"][0]["message"]

    # While it ran: the worker's process list, docker inspect, another user, every file under work_root.
    for name, needle in needles.items():
        for where, text in [("ps", ps_text), ("other user", poll.other_user or ""), *(("inspect", t) for t in poll.inspected)]:
            assert needle.decode() not in text, f"{name} in {where}"
    assert scan.found == []
    for path, mode, uid in scan.creds:
        assert "/docker-config-" in path and mode == 0o700 and uid == 1000, (path, oct(mode), uid)
    assert poll.other_user and "Permission denied" in poll.other_user, poll.other_user
    assert poll.run_dir_mode == 0o700, oct(poll.run_dir_mode or 0)  # even where work_root itself is open
    # ... and they really watched the moments that matter.
    assert release.released, "the step was never released: a watcher never saw it running"
    assert "login --username sshexec" in ps_text and step_name in ps_text, "the ps loop missed the login or the run"
    assert poll.inspected, "the step's container was never seen running"
    assert any(p.endswith("/script") and run_id in p for p in scan.seen), "the scan never saw the step's bundle"
    assert scan.creds, "the scan never saw the registry login's DOCKER_CONFIG"
    coord = [p for p in scan.seen if "/coord/" in p]
    assert any("/live/" in p for p in coord) and any("/locks/" in p for p in coord), "the scan never saw the heartbeat and lock records"

    # After it: the worker, the history, what the commands show.
    after = WorkRootScan(root, needles)
    after.scan_once()
    assert after.found == [] and not [p for p, _, _ in after.creds if run_id in p]
    assert not (root / "runs" / run_id).exists()
    shown += sshexec("logs", run_id).stdout.encode() + sshexec("logs", run_id, "--json").stdout.encode() + sshexec("runs", "--json").stdout.encode()
    files = home_files()
    assert any(p.name == "history.db" for p in files)  # the history, its logs and artifacts included: one database
    for name, needle in needles.items():
        assert needle not in shown, name
        for p in files:
            assert needle not in p.read_bytes(), (name, p)


@xfail_if_gap("secret-as-name")
def test_secret_used_as_a_name_is_masked(lab_env, tmp_path, monkeypatch):
    token = "tok" + uuid.uuid4().hex  # a valid variable and artifact name
    monkeypatch.setenv("SEC_TOKEN", token)
    script = 'set_sshexec_variable "$TOKEN" x\necho hi > out.txt\nnew_sshexec_artifact out.txt "$TOKEN"\n'
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "names", "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}},
                                               "steps": [step("s", lab_env.image_ref("busybox"), script, syntax="sh")]})  # fmt: skip
    table = sshexec("run", rb, "--worker", "w1")
    res, data = run_json(rb, "--worker", "w1")
    shown = table.stdout + table.stderr + res.stdout + res.stderr + sshexec("runs", "--json").stdout
    shown += sshexec("logs", data["run_id"], "--json").stdout + sshexec("logs", data["run_id"]).stdout
    # The output name is masked; an artifact named after a secret is refused (its file name would leak it).
    assert table.returncode == 1 and res.returncode == 1
    assert "contains a sensitive value; refused" in data["steps"][0]["message"]
    assert data["outputs"] == {"s.********": "x", "s[w1].********": "x"}
    assert token not in shown
    for p in Path(os.environ["SSHEXEC_HOME"]).rglob("*"):
        assert token not in str(p)
        if p.is_file():
            assert token.encode() not in p.read_bytes(), p


@xfail_if_gap("secret-in-plain-var")
def test_plain_variable_holding_a_secret_is_masked_in_history(lab_env, tmp_path, monkeypatch):
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("SEC_TOKEN", token)
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "plain", "variables": {"URL": ""}, "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}},
                                               "steps": [step("s", lab_env.image_ref("busybox"), "true", syntax="sh")]})  # fmt: skip
    res = sshexec("run", rb, "--worker", "w1", "--var", f"URL=https://u:{token}@example.invalid/")
    assert res.returncode == 0, res.stderr
    assert token not in sshexec("runs", "--json").stdout
    for p in home_files():
        assert token.encode() not in p.read_bytes(), p


@xfail_if_gap("secret-race")
def test_new_sensitive_output_is_masked_on_stderr_at_once(lab_env, tmp_path):
    script = r"""
for i in $(seq 1 600); do
  v="sv-$i-$RANDOM$RANDOM-x"
  set_sshexec_variable "V$i" "$v" --sensitive
  echo "err $v" >&2
done
"""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "race", "steps": [step("s", lab_env.image_ref("tools"), script)]})
    res = sshexec("run", rb, "--worker", "w1")
    assert res.returncode == 0, res.stderr
    leaked = re.findall(r"sv-\d+-\d+-x", res.stdout + res.stderr)
    assert leaked == [], f"{len(leaked)} of 600 new sensitive values printed in clear"


def sshd_log_lengths(lab) -> dict[str, int]:
    """How many lines each lab worker's sshd logged: any connection, even one never logged in, adds some."""
    out = {}
    for w in LAB_WORKERS:
        logs = docker("logs", f"{lab.name}-{w}")
        out[w] = len((logs.stdout + logs.stderr).splitlines())
    return out


@xfail_if_gap("secret-short-refused")
def test_short_secrets_are_refused_before_anything_is_contacted(lab_env, tmp_path):
    short = "Zq9~"  # shorter than stream.MIN_SECRET, and unlike anything else in the output
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "short", "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}, "EMPTY": {"env": "SEC_EMPTY"}},
        "steps": [step("s", lab_env.image_ref("busybox"), "echo should never run", syntax="sh", feed="lab")],
    })  # fmt: skip
    before = sshd_log_lengths(lab_env)
    res = sshexec("run", rb, env={**os.environ, "SEC_TOKEN": short, "SEC_EMPTY": ""})
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{rb} sensitive_variables.TOKEN: sensitive variable TOKEN: $SEC_TOKEN is shorter than 8 characters" in res.stderr
    assert f"{rb} sensitive_variables.EMPTY: sensitive variable EMPTY: $SEC_EMPTY is empty" in res.stderr
    assert "at least 8 characters" in res.stderr
    # A registry password as short: refused by run and by prepull, naming the feed and the variable.
    weak = {**os.environ, "SEC_TOKEN": "long-enough-" + uuid.uuid4().hex, "SEC_EMPTY": "x" * 8, "SSHEXEC_LAB_REGISTRY_PASSWORD": short}
    runs = [sshexec("run", rb, env=weak), sshexec("prepull", lab_env.image_ref("busybox"), "--feed", "lab", env=weak)]
    for r in runs:
        assert r.returncode == 2, r.stdout + r.stderr
        assert "feeds[lab].password_env: feed 'lab': the password in $SSHEXEC_LAB_REGISTRY_PASSWORD is shorter than 8 characters" in r.stderr
    # Nothing was contacted, nothing was recorded, and the value was never said.
    assert sshd_log_lengths(lab_env) == before
    assert json.loads(sshexec("runs", "--json").stdout) == []
    for r in [res, *runs]:
        assert short not in r.stdout + r.stderr and "should never run" not in r.stdout


@xfail_if_gap("secret-short-output")
def test_short_sensitive_output_is_masked_with_a_warning(lab_env, tmp_path, monkeypatch):
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("SEC_TOKEN", token)
    script = """
set_sshexec_variable Pin 4711 --sensitive
echo "pin=4711 room=B4711C"
echo "glued: x${TOKEN}y Bearer$TOKEN" >&2
set_sshexec_variable Pin 4711 --sensitive
set_sshexec_variable Ok long-enough-value --sensitive
"""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "short-out", "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}},
                                               "steps": [step("s", lab_env.image_ref("busybox"), script, syntax="sh")]})  # fmt: skip
    res, data = run_json(rb, "--worker", "w1")
    assert res.returncode == 0, res.stderr
    # A short secret set by a script: masked wherever it appears, inside words too ...
    assert "w1/s | pin=******** room=B********C" in res.stderr
    assert data["outputs"]["s.Pin"] == MASK and data["outputs"]["s.Ok"] == MASK
    # ... with one warning naming the step and the output, never the value.
    warnings = [line for line in res.stderr.splitlines() if "sensitive output" in line]
    assert len(warnings) == 1 and "w1/s: the sensitive output Pin is shorter than 8 characters" in warnings[0], res.stderr
    # A normal secret glued into longer words is masked too.
    assert f"w1/s ! glued: x{MASK}y Bearer{MASK}" in res.stderr
    shown = res.stdout + res.stderr + sshexec("logs", "--json").stdout + sshexec("logs").stdout + sshexec("runs", "--json").stdout
    assert "4711" not in shown and token not in shown and "long-enough-value" not in shown
    for p in home_files():
        blob = p.read_bytes()
        assert b"4711" not in blob and token.encode() not in blob, p


# -- 4. files from the operator -----------------------------------------------------------------------


def _files_with_bad_entry(tmp_path, data: dict) -> tuple[Path, set[str], bytes]:
    """A files: directory holding one entry that must not be shipped; (dir, names it may be reported as, outside bytes)."""
    root = tmp_path / "payload"
    root.mkdir()
    (root / "ok.txt").write_text("ok")
    outside = f"OUTSIDE-{uuid.uuid4().hex}".encode()
    (tmp_path / "outside.txt").write_bytes(outside)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "f").write_bytes(outside)
    if data.get("fifo"):
        os.mkfifo(root / "pipe")
        return root, {"pipe"}, outside
    at = root / data.get("at", "link")
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(data["link"])
    names = {str(at.relative_to(root))}
    if "chain" in data:
        (root / data["link"]).symlink_to(data["chain"])
        names.add(data["link"])
    return root, names, outside


@pytest.mark.parametrize("case", params("test_symlink_out_of_files_is_never_followed"))
def test_symlink_out_of_files_is_never_followed(case, lab_env, tmp_path):
    root, names, outside = _files_with_bad_entry(tmp_path, case.data)
    script = "echo script-ran; cat * */* 2>/dev/null"  # were a FIFO shipped, this would block: hence the timeout
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "links", "steps": [step("s", lab_env.image_ref("busybox"), script, syntax="sh", files=str(root), timeout=30)]})
    res = sshexec("run", rb, "--worker", "w1", "--json")
    shown = res.stdout + res.stderr
    assert res.returncode in (2, 3), shown  # 3 today, 2 once it is checked before connecting (see symlink-exit-2)
    assert any(f"files: {n} " in shown for n in names), shown
    assert re.search(r"refusing to ship it|only links inside the directory can be shipped", shown), shown
    assert "script-ran" not in shown
    assert outside.decode() not in shown
    for p in home_files():
        assert outside not in p.read_bytes()


@xfail_if_gap("symlink-exit-2")
def test_symlink_out_of_files_is_an_input_error(lab_env, tmp_path):
    root, _, _ = _files_with_bad_entry(tmp_path, {"link": "/etc/passwd"})
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "links", "steps": [step("s", lab_env.image_ref("busybox"), "echo script-ran", syntax="sh", files=str(root))]})
    res = sshexec("run", rb, "--worker", "w1")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "files: link" in res.stderr


SMALL = "/srv/small"


@pytest.fixture(scope="module")
def small_worker(lab):
    """A worker whose work_root is a 1 MiB tmpfs (the stage fails before any container runs)."""
    with extra_worker(lab, tmpfs={SMALL: "size=1m,mode=1777"}) as xw:
        yield xw


def _fill_up(lab, xw, tmp_path):
    inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["solo"], "work_root": SMALL}], known_hosts=xw.host_keys())
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "big.bin").write_bytes(os.urandom(3 << 20))
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "full", "steps": [step("s", lab.image_ref("busybox"), "echo script-ran", syntax="sh", pool="solo", files=str(payload))]})
    res, data = run_json(rb, env={**os.environ, "SSHEXEC_INVENTORY": str(inv)})
    assert res.returncode == 3, res.stdout + res.stderr
    (s,) = data["steps"]
    assert s["status"] == "error" and "script-ran" not in res.stderr
    return s


def test_bundle_larger_than_free_space(lab, small_worker, tmp_path):
    _fill_up(lab, small_worker, tmp_path)
    left = docker("exec", small_worker.id, "find", SMALL, "-mindepth", "1").stdout.split()
    used = docker("exec", small_worker.id, "df", "-k", SMALL).stdout.splitlines()[-1].split()[2]
    # The worker's own coordination directories may stay (coord.py); no file of the run.
    skeleton = re.compile(rf"{SMALL}/(runs|coord|coord/[^/]+|coord/[^/]+/(live|used|locks|slots|\.mutex))")
    assert [p for p in left if not skeleton.fullmatch(p)] == [], left
    assert int(used) < 64, f"{used} KiB still used in {SMALL}"


@xfail_if_gap("disk-full-message")
def test_full_work_root_says_no_space_left(lab, small_worker, tmp_path):
    s = _fill_up(lab, small_worker, tmp_path)
    assert s["error"]["error"] == "DiskFull", s["message"]
    assert f"no space left on {small_worker.name}" in s["message"]


# -- 5. output from scripts ---------------------------------------------------------------------------

ESCAPES = (
    b"clear\x1b[2J title\x1b]0;pwned-title\x07 cursor\x1b[10;10H\x1b[A\x1b[2K cr\rw2/fake | spoofed back\x08\x08"
    b" csi8\x9b31m c1utf8\xc2\x9b31m nul\x00 del\x7f bad\xff\xfe\xc3 secret:SECRET all:"
)
ESCAPE_SCRIPT = r"""
import os, sys, time
line = ESCAPES.replace(b"SECRET", os.environ["TOKEN"].encode()) + bytes(b for b in range(256) if b != 10) + b"\n"
sys.stdout.buffer.write(line); sys.stdout.flush()
time.sleep(1)
sys.stderr.buffer.write(line); sys.stderr.flush()
"""
# What a terminal may receive: printable text, tab and newline. No C0 (ESC, BEL, CR, BS, NUL), DEL or C1.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_escapes_and_binary_are_neutralised_on_screen_and_kept_in_the_log(lab_env, tmp_path, monkeypatch):
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("SEC_TOKEN", token)
    script = f"ESCAPES = {ESCAPES!r}\n" + ESCAPE_SCRIPT
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "esc", "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}},
                                               "steps": [step("esc", lab_env.image_ref("tools"), script, syntax="python")]})  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "sshexec", "run", str(rb), "--worker", "w1"], capture_output=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    for blob in (res.stdout, res.stderr):
        text = blob.decode("utf-8")  # valid UTF-8, whatever the script printed
        assert not UNSAFE.search(text), repr(UNSAFE.search(text))
        assert token not in text
    screen = res.stdout.decode()
    for visible in ("clear^[[2J", "title^[]0;pwned-title^G", "cursor^[[10;10H^[[A^[[2K", "cr^Mw2/fake | spoofed back^H^H", "nul^@", "del^?", "\\x9b31m", f"secret:{MASK}"):
        assert visible in screen, visible
    assert "w1/esc | clear" in screen and "w1/esc ! clear" in screen
    assert not [line for line in screen.splitlines() if line.startswith("w2/fake")]
    # The stored log: every byte, the secret masked.
    run_id = json.loads(sshexec("runs", "--json").stdout)[0]["id"]
    log = stored_log(run_id)
    body = ESCAPES.replace(b"SECRET", MASK.encode()) + bytes(b for b in range(256) if b != 10) + b"\n"
    assert b"w1/esc | " + body in log and b"w1/esc ! " + body in log
    assert token.encode() not in log


@xfail_if_gap("escapes-summary")
def test_escapes_in_messages_and_outputs_are_neutralised(lab_env, tmp_path):
    script = r"""
set_sshexec_variable Esc "$(printf 'A\033[2JB\033]0;title\007C\233D')"
fail_step "$(printf 'msg\033[2J\033]0;t\007end')"
"""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "esc", "steps": [step("s", lab_env.image_ref("tools"), script)]})
    res = subprocess.run([sys.executable, "-m", "sshexec", "run", str(rb), "--worker", "w1"], capture_output=True, cwd=REPO, timeout=300)
    assert res.returncode == 1
    run_id = json.loads(sshexec("runs", "--json").stdout)[0]["id"]
    logs = subprocess.run([sys.executable, "-m", "sshexec", "logs", run_id], capture_output=True, cwd=REPO, timeout=60)
    for blob in (res.stdout, res.stderr, logs.stdout, logs.stderr):
        text = blob.decode("utf-8", "replace")
        assert not UNSAFE.search(text), repr(text)
    # Shown, as visible text: the message in the summary table and in `logs`, the output in both (\233, not UTF-8, as U+FFFD).
    table, shown = res.stdout.decode("utf-8", "replace"), logs.stdout.decode("utf-8", "replace")
    assert "msg^[[2J^[]0;t^Gend" in table, table
    assert "s on w1: failed (exit 1) msg^[[2J^[]0;t^Gend" in shown, shown
    for text in (table, shown):
        assert "s.Esc = A^[[2JB^[]0;title^GC\ufffdD" in text, text


WRAPPER = r"""
import json, resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    p = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.PIPE)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"code": p.returncode, "peak_kib": peak, "stderr": p.stderr[-2000:].decode("utf-8", "replace")}))
"""
BIG_SCRIPT = r"""
import os, sys
w = sys.stdout.buffer.write
block = b"a" * (1 << 20)
for i in range(200):
    if i == 100:
        w(b"\x1b[2J" + os.environ["TOKEN"].encode() + b"\x1b]0;x\x07")
    w(block)
sys.stdout.flush()
"""


def _scan(path: Path, needles: list[bytes]) -> tuple[int, dict[bytes, int]]:
    """Size and needle counts of a big file, read in chunks (needles are short; overlaps are kept)."""
    counts = dict.fromkeys(needles, 0)
    keep = max(map(len, needles)) - 1
    size, tail = 0, b""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            size += len(chunk)
            buf = tail + chunk
            for n in needles:
                counts[n] += buf.count(n) - tail.count(n)
            tail = buf[-keep:]
    return size, counts


def test_200_mb_line_streams_in_bounded_memory(lab_env, tmp_path, monkeypatch):
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("SEC_TOKEN", token)
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "big", "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}},
                                               "steps": [step("big", lab_env.image_ref("tools"), BIG_SCRIPT, syntax="python")]})  # fmt: skip
    screen = tmp_path / "screen.out"
    wrapped = subprocess.run([sys.executable, "-c", WRAPPER, str(screen), sys.executable, "-m", "sshexec", "run", str(rb), "--worker", "w1"],
                             capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    report = json.loads(wrapped.stdout)
    run_id = json.loads(sshexec("runs", "--json").stdout)[0]["id"]
    from sshexec.store.history import History

    log = tmp_path / "stored.log"  # the stored log, copied out of the database a piece at a time
    with open(log, "wb") as fh:
        h, pos = History(), 0
        while data := h.read_log(run_id, pos):
            fh.write(data)
            pos += len(data)
    try:
        assert report["code"] == 0, report["stderr"]
        print(f"peak RSS of sshexec run with a 200 MiB line: {report['peak_kib'] / 1024:.0f} MiB")
        assert report["peak_kib"] < 400 * 1024
        line = 200 << 20
        escaped = f"^[[2J{MASK}^[]0;x^G".encode()
        size, counts = _scan(screen, [b"\x1b", b"\x07", token.encode(), escaped])
        assert counts[b"\x1b"] == counts[b"\x07"] == counts[token.encode()] == 0
        assert counts[escaped] == 1
        assert size >= line
        stored = b"\x1b[2J" + MASK.encode() + b"\x1b]0;x\x07"
        size, counts = _scan(log, [token.encode(), stored, b"\n"])
        assert counts[token.encode()] == 0 and counts[stored] == 1 and counts[b"\n"] == 1
        assert size == len(b"w1/big | ") + line + len(stored) + 1
    finally:
        screen.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
