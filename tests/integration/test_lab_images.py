"""The lab images, built (or found) in the real daemon and checked by running them."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from io import StringIO

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sshexec.core.local import state_home
from sshexec.lab.building import ensure_images
from sshexec.lab.recipes import IMAGES

pytestmark = pytest.mark.integration

# The lab's own build directory, so tests and `sshexec lab up` share one .deb cache.
BUILD_DIR = state_home() / "lab" / "build"
LABEL = "sshexec.test=1"
READY_TIMEOUT = 30.0


def docker(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], input=input, capture_output=True, text=True, timeout=120)
    if check and proc.returncode:
        pytest.fail(f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def run(image: str, *cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    flags = ["-i"] if input is not None else []
    return docker("run", "--rm", "--label", LABEL, *flags, image, *cmd, input=input, check=check)


def config(image: str) -> dict:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)


@pytest.fixture(scope="module")
def lab_images():
    return ensure_images(build_dir=BUILD_DIR)


@pytest.fixture(scope="module")
def tags(lab_images) -> dict[str, str]:
    return {name: image.tag for name, image in lab_images.items()}


def test_a_second_call_finds_every_image_cached(lab_images):
    again = ensure_images(build_dir=BUILD_DIR)
    assert list(again) == list(IMAGES)
    assert {name: image.tag for name, image in again.items()} == {n: i.tag for n, i in lab_images.items()}
    # Nothing was rebuilt: every image came from the cache (no timing here: the machine is shared).
    assert not any(image.built for image in again.values())


def test_tools_has_bash_and_python3(tags):
    out = run(tags["tools"], "bash", "-c", 'echo "$BASH_VERSION"; python3 -c "print(6 * 7)"').stdout.split()
    assert out[0].startswith("5.") and out[1] == "42"
    cfg = config(tags["tools"])
    assert cfg["Cmd"] == ["/bin/bash"] and not cfg.get("Entrypoint") and not cfg.get("User")


def test_busybox_runs_a_script_from_stdin_without_bash_or_python(tags):
    script = """
for applet in od tr head cat mktemp tar; do command -v "$applet" >/dev/null || echo "missing $applet"; done
for program in bash python3 python; do command -v "$program" && echo "found $program"; done
test -e /lib/x86_64-linux-gnu/libc.so.6 && echo "found glibc"
printf 'sh=%s ' "$(readlink /bin/sh)"
printf 'ab' | od -An -tx1 | tr -d ' \\n'
"""
    result = run(tags["busybox"], "sh", input=script)
    assert result.stdout == "sh=busybox 6162", result.stdout + result.stderr
    cfg = config(tags["busybox"])
    assert cfg["Cmd"] == ["/bin/sh"] and not cfg.get("Entrypoint")


def test_entrypoint_image_has_its_entrypoint(tags):
    cfg = config(tags["entrypoint"])
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"]
    assert cfg["Cmd"] == ["echo hi"]
    assert run(tags["entrypoint"]).stdout == "hi\n"


def test_nonroot_image_runs_as_app(tags):
    assert config(tags["nonroot"])["User"] == "app"
    assert run(tags["nonroot"], "id", "-u").stdout.strip() == "1500"


# --- the SSH worker ----------------------------------------------------------


@pytest.fixture(scope="module")
def client_key() -> tuple[paramiko.PKey, str]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return paramiko.Ed25519Key.from_private_key(StringIO(pem)), public.decode() + " sshexec-test"


@contextlib.contextmanager
def worker(tag: str, public_key: str, *options: str) -> Iterator[str]:
    """A started worker container (its id); removed on the way out, whatever happens."""
    cid = ""
    try:
        cid = docker(
            "run", "-d", "--label", LABEL, "-p", "127.0.0.1::22",
            "-e", f"SSHEXEC_AUTHORIZED_KEY={public_key}", *options, tag,
        ).stdout.strip()
        wait_for_ssh(cid)
        yield cid
    finally:
        if cid:
            docker("rm", "-f", "-v", cid, check=False)


def ssh_port(cid: str) -> int:
    # A restart may publish 22 on another port, so ask each time.
    host, _, port = docker("port", cid, "22/tcp").stdout.splitlines()[0].rpartition(":")
    assert host == "127.0.0.1"
    return int(port)


def wait_for_ssh(cid: str) -> None:
    """Retry an SSH handshake until sshd answers; the published port accepts before it does."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", ssh_port(cid)), timeout=2) as sock:
                transport = paramiko.Transport(sock)
                try:
                    transport.start_client(timeout=5)
                    return
                finally:
                    transport.close()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if time.monotonic() > deadline:
                logs = docker("logs", cid, check=False)
                output = logs.stdout + logs.stderr
                pytest.fail(f"no SSH on {cid[:12]} after {READY_TIMEOUT:.0f}s ({exc}); logs:\n{output}")
            time.sleep(0.2)


def host_key(cid: str) -> paramiko.PKey:
    keytype, b64 = docker("exec", cid, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    assert keytype == "ssh-ed25519"
    return paramiko.Ed25519Key(data=base64.b64decode(b64))


@contextlib.contextmanager
def login(cid: str, user: str, key: paramiko.PKey) -> Iterator[paramiko.SSHClient]:
    port = ssh_port(cid)
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", "ssh-ed25519", host_key(cid))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            "127.0.0.1", port=port, username=user, pkey=key,
            look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10,
        )
        yield client
    finally:
        client.close()


def execute(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=60)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


SERVER_VERSION = "docker version --format '{{.Server.Version}}'"


def test_worker_gives_docker_to_deploy_only(tags, client_key):
    key, public = client_key
    host_version = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    with worker(tags["worker"], public, "-v", "/var/run/docker.sock:/var/run/docker.sock") as cid:
        with login(cid, "deploy", key) as deploy:
            assert execute(deploy, SERVER_VERSION) == (0, host_version + "\n", "")
            assert execute(deploy, "id -un; echo $SHELL")[1] == "deploy\n/bin/bash\n"
        with login(cid, "nodocker", key) as nodocker:
            status, _, err = execute(nodocker, SERVER_VERSION)
            assert status != 0 and "permission denied" in err.lower()
            assert execute(nodocker, f"sudo -n /usr/bin/{SERVER_VERSION}")[:2] == (0, host_version + "\n")


def test_worker_refuses_passwords_and_allows_many_startups(tags, client_key):
    _, public = client_key
    with worker(tags["worker"], public) as cid:
        effective = docker("exec", cid, "/usr/sbin/sshd", "-T").stdout.lower().splitlines()
    assert "passwordauthentication no" in effective
    assert "kbdinteractiveauthentication no" in effective
    assert "pubkeyauthentication yes" in effective
    assert "maxstartups 100:30:200" in effective
    assert "usedns no" in effective


def test_worker_keeps_its_host_key_across_restarts(tags, client_key):
    key, public = client_key
    with worker(tags["worker"], public) as cid:
        first = host_key(cid)
        docker("restart", "-t", "1", cid)
        wait_for_ssh(cid)
        assert host_key(cid) == first
        with login(cid, "deploy", key) as deploy:  # still trusted with the same key
            assert execute(deploy, "true")[0] == 0


def test_worker_options_change_host_key_and_remove_docker(tags, client_key):
    key, public = client_key
    options = ("-e", "SSHEXEC_REGEN_HOSTKEYS=1", "-e", "SSHEXEC_WORKER_NO_DOCKER=1")
    with worker(tags["worker"], public, *options) as cid:
        first = host_key(cid)
        with login(cid, "deploy", key) as deploy:
            assert execute(deploy, "command -v docker")[0] != 0
        docker("restart", "-t", "1", cid)
        wait_for_ssh(cid)
        assert host_key(cid) != first
