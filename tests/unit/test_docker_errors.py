"""docker_errors: real docker, registry and sudo messages in, the error a user can act on out.

Every message below was copied from a real run on the lab (docker 20.10 on the
worker, docker 28 on the host, distribution registry 2.8, sudo 1.9), except
where a row says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sshexec.config.inventory import Worker
from sshexec.errors import DaemonDown, DiskFull, DockerError, DockerMissing, DockerPermission, ImageRefused, LoginError, PullError, WorkerError
from sshexec.worker import docker_errors as de

W = Worker("w1", "h", 22, "deploy", None, Path("/kh"), ("docker",), "~/.sshexec", 5.0)
SUDO = Worker("w1", "h", 22, "deploy", None, Path("/kh"), ("sudo", "-n", "docker"), "~/.sshexec", 5.0)
REG = "127.0.0.1:5121"
IMG = f"{REG}/sshexec/busybox:1"

# What the docker CLI says when the SSH user is not in group docker (socket mode 660).
SOCKET_DENIED = {
    "pull": 'permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Post "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/images/create?fromImage=127.0.0.1%3A5121%2Fsshexec%2Fbusybox&tag=1": dial unix /var/run/docker.sock: connect: permission denied',
    "login": 'permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Post "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/auth": dial unix /var/run/docker.sock: connect: permission denied',
    "inspect": '[]\npermission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/images/127.0.0.1:5121/sshexec/busybox:1/json": dial unix /var/run/docker.sock: connect: permission denied',
    "version": 'permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version": dial unix /var/run/docker.sock: connect: permission denied',
    "docker28": 'permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.50/containers/json": dial unix /var/run/docker.sock: connect: permission denied',
}
SUDO_PASSWORD = "sudo: a password is required"
NO_DAEMON = "Cannot connect to the Docker daemon at unix:///nonexistent.sock. Is the docker daemon running?"
NO_DAEMON_TCP = "Cannot connect to the Docker daemon at tcp://127.0.0.1:1. Is the docker daemon running?"
NO_DOCKER_DASH = "sh: 1: docker: not found"
NO_DOCKER_BASH = "bash: line 1: docker: command not found"
NO_DOCKER_SUDO = "sudo: docker: command not found"  # sudo 1.9 when the command is missing
NO_SUCH_IMAGE = "[]\nError: No such image: nope:1"
MANIFEST_UNKNOWN = f"Error response from daemon: manifest for {REG}/sshexec/nope:1 not found: manifest unknown: manifest unknown"
NO_AUTH = f'Error response from daemon: Head "http://{REG}/v2/sshexec/busybox/manifests/1": no basic auth credentials'
LOGIN_401 = f"Error response from daemon: login attempt to http://{REG}/v2/ failed with status: 401 Unauthorized"
REFUSED = 'Error response from daemon: Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused'
# Registry 5xx and a network reset: the text docker 20.10 prints around the registry's answer (not seen on the lab).
UNAVAILABLE = "Error response from daemon: received unexpected HTTP status: 503 Service Unavailable"
RESET = f'Error response from daemon: Get "http://{REG}/v2/": read tcp 127.0.0.1:40000->127.0.0.1:5121: read: connection reset by peer'
NO_SPACE = "write /var/lib/docker/tmp/GetImageBlob123: no space left on device"
RUN_NO_SH = 'docker: Error response from daemon: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/bin/sh": stat /bin/sh: no such file or directory: unknown.'
# Seen under load: the CLI's cancelled attach reports after the daemon's reason.
RUN_NO_SH_THEN_WAIT = RUN_NO_SH + '\ntime="2026-11-26T10:49:38Z" level=error msg="error waiting for container: context canceled"'
RUN_NO_EXEC = 'docker: Error response from daemon: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/hello": permission denied: unknown.'
RUN_BAD_VOLUME = "docker: Error response from daemon: invalid volume specification: '/nonexistent-rel:x': invalid mount config for type \"bind\": invalid mount path: 'x' mount path must be absolute.\nSee 'docker run --help'."


@pytest.mark.parametrize(
    "worker, text, cls, words",
    [
        (W, SOCKET_DENIED["version"], DockerPermission, "user may not use the Docker daemon"),
        (W, SOCKET_DENIED["docker28"], DockerPermission, "user may not use the Docker daemon"),
        (SUDO, SUDO_PASSWORD, DockerPermission, "user may not use the Docker daemon (sudo: a password is required)"),
        (W, NO_DAEMON, DaemonDown, "the Docker daemon is not reachable"),
        (W, NO_DAEMON_TCP, DaemonDown, "the Docker daemon is not reachable"),
        (W, "docker: command not found", DockerMissing, "`docker` was not found on the worker"),
        (W, NO_DOCKER_DASH, DockerMissing, "`docker` was not found on the worker"),
        (W, NO_DOCKER_BASH, DockerMissing, "`docker` was not found on the worker"),
        (SUDO, NO_DOCKER_SUDO, DockerMissing, "`sudo -n docker` was not found on the worker"),
        (W, "Error response from daemon: something new", DockerError, "`docker` failed: Error response from daemon: something new"),
    ],
    ids=["socket-denied", "socket-denied-docker28", "sudo-password", "no-daemon", "no-daemon-tcp", "cli-missing-check",
         "cli-missing-dash", "cli-missing-bash", "cli-missing-sudo", "other"],
)  # fmt: skip
def test_docker_failures(worker, text, cls, words):
    err = de.classify_docker_failure(worker, text)
    assert type(err) is cls
    assert err.message.startswith("w1: ") and words in err.message
    assert err.hint


@pytest.mark.parametrize(
    "code, text, cls, words, transient",
    [
        (91, MANIFEST_UNKNOWN, PullError, f"image {IMG.replace('busybox:1', 'nope:1')} not found", False),
        (91, NO_AUTH, PullError, "the registry refused to serve", False),
        (90, LOGIN_401, LoginError, "registry login failed for feed lab on w1: Error response from daemon: login attempt", False),
        (90, REFUSED, LoginError, "registry login failed for feed lab", True),  # the registry did not answer: a retry may help
        (91, REFUSED, PullError, "cannot reach the registry of", True),
        (91, UNAVAILABLE, PullError, "pulling", True),
        (91, RESET, PullError, "pulling", True),
        (91, NO_SPACE, PullError, "no space left on w1 to pull", False),
        (91, NO_DAEMON, DaemonDown, "the Docker daemon is not reachable", False),
        # The Docker socket refusing the SSH user is not the registry refusing the image:
        # `target: any` must move on to another worker (session.is_unhealthy).
        (91, SOCKET_DENIED["pull"], DockerPermission, "user may not use the Docker daemon", False),
        (90, SOCKET_DENIED["login"], DockerPermission, "user may not use the Docker daemon", False),
        (90, SUDO_PASSWORD, DockerPermission, "user may not use the Docker daemon", False),
        (91, NO_DOCKER_DASH, DockerMissing, "`docker` was not found", False),
        # Words that only look like a daemon problem.
        (91, "Error response from daemon: manifest for docker.example.invalid/docker:1 not found: manifest unknown: manifest unknown", PullError, "not found in its registry", False),
        (91, "Error response from daemon: pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", PullError, "not found in its registry", False),
        (90, "Error saving credentials: open /srv/w/runs/r/docker-config-1/config.json: permission denied", LoginError, "registry login failed", False),
        (101, "mkdir: cannot create directory '/var/lib/sx-b/work/w1': Permission denied", WorkerError, "cannot create the run directory under work_root", False),
    ],
    ids=["manifest-unknown", "no-basic-auth", "login-401", "login-unreachable", "registry-unreachable", "registry-503",
         "connection-reset", "no-space", "no-daemon", "socket-denied-pull", "socket-denied-login", "sudo-password-login",
         "cli-missing", "docker-in-image-name", "hub-access-denied", "config-not-writable", "work-root-not-writable"],
)  # fmt: skip
def test_pull_failures(code, text, cls, words, transient):
    image = IMG.replace("busybox:1", "nope:1") if "nope" in text else IMG
    err = de.pull_error(W, image, code, "\n" + text, "lab")
    assert type(err) is cls, err
    assert words in err.message
    assert de.is_transient(err) is transient


def test_a_registry_refusal_without_a_feed_says_to_set_one():
    err = de.pull_error(W, IMG, 91, NO_AUTH, None)
    assert "set container.feed" in err.hint
    assert "check the credentials of feed lab" in de.pull_error(W, IMG, 91, NO_AUTH, "lab").hint


@pytest.mark.parametrize(
    "text, absent",
    [(NO_SUCH_IMAGE, True), ("Error: No such object: x:1", True), (SOCKET_DENIED["inspect"], False), (NO_DAEMON, False)],
    ids=["no-such-image", "no-such-object", "socket-denied", "no-daemon"],
)
def test_an_absent_image_is_not_a_docker_failure(text, absent):
    assert de.absent_is_docker_failure(text) is not absent


@pytest.mark.parametrize(
    "code, text, cls, words",
    [
        (101, "mkdir: cannot create directory '/srv/x/runs': Permission denied", WorkerError, "cannot create the run directory under work_root ~/.sshexec"),
        (102, "mkdir: cannot create directory '/srv/x/runs/r/s': File exists", WorkerError, "cannot create the run directory"),
        (103, "tar: script: Cannot write: No space left on device", DiskFull, "no space left on w1 in its work_root"),
        (103, "tar: This does not look like a tar archive", WorkerError, "unpacking the bundle failed: tar: This does not look"),
        (103, "tar: r1/w1: Cannot mkdir: Permission denied\ntar: r1/w1/s: Cannot mkdir: Permission denied", WorkerError, "cannot create the run directory under work_root"),
        (1, "head: write error", WorkerError, "preparing the step failed (exit 1): head: write error"),
    ],
    ids=["mkdir", "step-dir", "tar-no-space", "tar-garbage", "tar-mkdir", "other"],
)
def test_stage_failures(code, text, cls, words):
    err = de.stage_error(W, code, text)
    assert type(err) is cls and words in err.message


@pytest.mark.parametrize(
    "code, text, cls, words, hint",
    [
        (127, RUN_NO_SH, ImageRefused, 'the container did not start: docker: Error response from daemon: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/bin/sh"', "the image needs /bin/sh"),
        (127, RUN_NO_SH_THEN_WAIT, ImageRefused, 'the container did not start: docker: Error response from daemon: failed to create shim task', "the image needs /bin/sh"),
        (126, RUN_NO_EXEC, ImageRefused, "the container did not start", "the image needs /bin/sh"),
        (125, RUN_BAD_VOLUME, DockerError, "the container did not start: docker: Error response from daemon: invalid volume specification", None),
        (125, "", DockerError, "the container did not start: exit 125", None),
        (2, "sshexec: run.sh: 1: Syntax error", DockerError, "the executor stopped before the script started (exit 2): sshexec: run.sh: 1: Syntax error", "unusual"),
    ],
    ids=["no-bin-sh", "no-bin-sh-then-wait-cancelled", "not-executable", "docker-run-125", "no-output", "executor-died"],
)  # fmt: skip
def test_container_start_failures(code, text, cls, words, hint):
    err = de.container_start_error(W.name, code, text)
    assert type(err) is cls and words in err.message
    assert (hint in err.hint) if hint else err.hint is None
