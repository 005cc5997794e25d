"""What a failed docker, registry or sudo command means, in errors a user can act on.

The one place where the text of a failure on the worker becomes an error class:
`sshexec check`, the pull and the prepull, staging a step, and `docker run`
all ask here. Each function is pure (text and exit code in, error out), so
the tables of real messages in tests/unit/test_docker_errors.py pin them.
"""

from __future__ import annotations

import re

from ..config.inventory import Worker
from ..errors import DaemonDown, DiskFull, DockerError, DockerMissing, DockerPermission, ImageRefused, LoginError, PullError, WorkerError

# Exit codes of sshexec's own scriptlets (docker.py), not of any script.
E_LOGIN = 90  # 91 is the pull itself: its output says why
E_MKDIR, E_STEPDIR, E_TAR = 101, 102, 103

TRANSIENT = ("service unavailable", "bad gateway", "internal server error", "gateway timeout", "connection reset",
             "unexpected eof", "tls handshake timeout", "i/o timeout", "connection refused", "no route to host",
             "temporary failure", "too many requests")  # fmt: skip


# Said by the docker CLI or by sudo when the SSH user may not reach the daemon: never by a registry.
_PERMISSION = re.compile(
    r"permission denied while trying to connect to the docker"  # docker CLI 20.10 to 28, socket mode 660
    r"|dial unix \S+: connect: permission denied"
    r"|sudo: a password is required|sudo: a terminal is required"
    r"|is not allowed to execute|is not in the sudoers file",
    re.I,
)
_DAEMON_DOWN = re.compile(
    r"cannot connect to the docker daemon|is the docker daemon running|error during connect"
    r"|dial unix \S+: connect: (no such file or directory|connection refused)",
    re.I,
)


def daemon_failure(worker: Worker, out: str) -> DockerError | None:
    """The error when `out` says the docker CLI or its daemon is unusable; None when it says something else.

    Asked first wherever docker runs, so that a registry's or a script's words
    ("denied", "not found") are never read as a daemon problem, nor the other way round.
    """
    name = worker.name
    docker = " ".join(worker.docker)
    if _PERMISSION.search(out):
        return DockerPermission(
            name,
            f"user may not use the Docker daemon ({_first_line(out)})",
            hint="add the SSH user to the worker's docker group (then log in again), "
            'or set docker: "sudo -n docker" in the inventory with a NOPASSWD sudo rule',
        )
    if _DAEMON_DOWN.search(out):
        return DaemonDown(
            name,
            f"the Docker daemon is not reachable ({_first_line(out)})",
            hint="start it on the worker (systemctl start docker) or fix DOCKER_HOST",
        )
    if _missing_command(worker).search(out):
        return DockerMissing(name, f"`{docker}` was not found on the worker", hint="install Docker on the worker, or fix docker: in the inventory")
    return None


def _missing_command(worker: Worker) -> re.Pattern:
    """ "sh: 1: docker: not found" (dash), "bash: line 1: docker: command not found", "sudo: docker: command not found"."""
    words = sorted({w.rsplit("/", 1)[-1] for w in worker.docker if not w.startswith("-")})
    return re.compile(r"(^|[\s:/])(" + "|".join(map(re.escape, words)) + r"): (command )?not found", re.I | re.M)


def classify_docker_failure(worker: Worker, out: str) -> DockerError:
    """Turn the text of a failed `docker ...` into the error a user can act on."""
    err = daemon_failure(worker, out)
    if err is not None:
        return err
    return DockerError(worker.name, f"`{' '.join(worker.docker)}` failed: {_first_line(out)}", hint="run it by hand on the worker to see why")


def absent_is_docker_failure(reason: str) -> bool:
    """True if `docker image inspect` failed because of docker, not because the image is absent."""
    low = reason.lower()
    return "no such image" not in low and "no such object" not in low


def stage_error(worker: Worker, code: int, stderr: str) -> WorkerError:
    """A scriptlet that prepares a step (its directory, the bundle, the executor) failed."""
    low = stderr.lower()
    if "no space left" in low or "disk quota" in low or "wrote only" in low:
        return DiskFull(worker.name, f"no space left on {worker.name} in its work_root", hint="free space on the worker or point work_root at a bigger disk")
    # GO's tar makes the run's and the step's directories (docker.py): its "Cannot mkdir" is a work_root problem too.
    if code in (E_MKDIR, E_STEPDIR) or (code == E_TAR and ("cannot mkdir" in low or "permission denied" in low)):
        return WorkerError(worker.name, f"cannot create the run directory under work_root {worker.work_root}: {stderr.strip()[:300]}", hint="check work_root in the inventory and its permissions")
    if code == E_TAR:
        return WorkerError(worker.name, f"unpacking the bundle failed: {stderr.strip()[:300]}", hint="check free space and that tar works on the worker")
    return WorkerError(worker.name, f"preparing the step failed (exit {code}): {stderr.strip()[:300]}")


def pull_error(worker: Worker, image: str, code: int, output: str, feed: str | None) -> WorkerError:
    """The PULL scriptlet failed; `transient` on the error says whether another attempt may help."""
    err = _pull_error(worker, image, code, output, feed)
    low = output.lower()
    # Only the registry or the network hiccups (during the pull or the login before it);
    # refused credentials or an unusable daemon stay so.
    err.transient = type(err) in (PullError, LoginError) and any(t in low for t in TRANSIENT)
    return err


def _pull_error(worker: Worker, image: str, code: int, output: str, feed: str | None) -> WorkerError:
    low = output.lower()
    daemon = daemon_failure(worker, output)
    if daemon is not None:
        return daemon
    if code == E_MKDIR:  # the credentials' directory under work_root
        return stage_error(worker, code, output)
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
    return PullError(worker.name, f"pulling {image} failed: {_last(output)}")


def _login_error(worker: Worker, feed: str | None, output: str) -> DockerError:
    return LoginError(
        worker.name,
        f"registry login failed for feed {feed} on {worker.name}: {_last(output)}",
        hint=f"check the username and password of feed {feed} (password_env in the inventory)",
    )


def is_transient(err: WorkerError) -> bool:
    """Worth another pull attempt: the registry or the network hiccupped."""
    return bool(getattr(err, "transient", False))


def container_start_error(worker: str, code: int, tail: str) -> DockerError:
    """The container ended with `code` before the executor announced itself: nothing of the script ran.

    125-127 are `docker run`'s own (the daemon refused, /bin/sh missing or not
    executable); any other code means the executor stopped early.
    """
    # After a failed start the docker CLI may add `level=error msg="error waiting for container:
    # context canceled"` (its attach was cut short): noise that would hide the daemon's reason.
    said = [line for line in tail.splitlines() if line.strip() and not line.startswith("See '") and "error waiting for container" not in line]
    last = said[-1][:300] if said else f"exit {code}"
    if code in (126, 127):
        return ImageRefused(worker, f"the container did not start: {last}", hint="the image needs /bin/sh; check the docker error above")
    if code == 125:
        return DockerError(worker, f"the container did not start: {last}")
    return DockerError(
        worker,
        f"the executor stopped before the script started (exit {code}): {last}",
        hint="the image's /bin/sh may be unusual; the step's output above says more",
    )


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no output"


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
