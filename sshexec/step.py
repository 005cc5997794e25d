"""One step on one worker, start to cleanup: stage, pull, preflight, run, stream, collect, clean."""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .command import Secret
from .connection import Aborted
from .docker import LEFT_MARKER, RUN, preflight
from .errors import (
    Cancelled,
    ConnectionLost,
    DockerError,
    ImageRefused,
    SshexecError,
    StepTimeout,
    WorkerError,
)
from .inventory import Feed
from .protocol import header, marker, new_nonce, parse_message
from .runbook import Step
from .session import WorkerSession
from .stream import Masker, OutputPipeline, PrefixWriter

log = logging.getLogger("sshexec")

ARTIFACT_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+@=,")

# Statuses, in the order that decides a run's exit code when steps disagree.
SUCCEEDED, FAILED, TIMED_OUT, ERROR, CANCELLED = "succeeded", "failed", "timed-out", "error", "cancelled"
EXIT_CODES = {SUCCEEDED: 0, FAILED: 1, TIMED_OUT: 124, ERROR: 3, CANCELLED: 130}


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path
    size: int


@dataclass(frozen=True)
class StepResult:
    """What one step did on one worker. `message` and outputs shown to people are masked."""

    step: str
    worker: str
    status: str
    exit_code: int | None
    duration: float
    message: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    sensitive_outputs: frozenset[str] = frozenset()
    artifacts: tuple[Artifact, ...] = ()
    pulled: tuple[str, ...] = ()  # images pulled for this step
    error: SshexecError | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def shown_outputs(self, masker: Masker | None = None) -> dict[str, str]:
        """Outputs as people may see them: sensitive ones hidden, any secret inside the others masked."""
        mask = masker.mask_text if masker else (lambda v: v)
        return {k: ("********" if k in self.sensitive_outputs else mask(v)) for k, v in self.outputs.items()}

    def to_dict(self, masker: Masker | None = None) -> dict:
        return {
            "step": self.step,
            "worker": self.worker,
            "status": self.status,
            "exit_code": self.exit_code,
            "duration": round(self.duration, 3),
            "message": masker.mask_text(self.message) if masker and self.message else self.message,
            "outputs": self.shown_outputs(masker),
            "artifacts": [{"name": a.name, "path": str(a.path), "size": a.size} for a in self.artifacts],
            "pulled": list(self.pulled),
            "error": _masked_error(self.error, masker),
        }


@dataclass
class StepContext:
    """What a step needs from its run."""

    run_id: str
    variables: dict[str, str]  # everything the script may read, sensitive values included
    masker: Masker
    writers: tuple[PrefixWriter, ...]
    artifact_dir: Path
    cancel: threading.Event
    feed: Feed | None = None
    feed_password: Secret | None = None
    on_event: Callable[[str, str, object], None] = lambda kind, worker, data: None


def _masked_error(error: SshexecError | None, masker: Masker | None) -> dict | None:
    if error is None:
        return None
    d = error.to_dict()
    if masker:
        d = {k: masker.mask_text(v) if isinstance(v, str) else v for k, v in d.items()}
    return d


def container_name(run_id: str, step: str, worker: str) -> str:
    return f"sshexec-{run_id}-{step}-{worker}"


def run_step(session: WorkerSession, step: Step, ctx: StepContext) -> StepResult:
    """Run `step` on the session's worker; cleanup runs on every path.

    Infrastructure problems before the script starts raise (so that
    `target: any` can try another worker); everything after is a result.
    """
    w = session.worker
    t0 = time.monotonic()
    event = ctx.on_event
    session.open()
    event("stage", w.name, step.name)
    session.stage(
        step.name,
        [step.image],
        script=step.script,
        files=step.files,
        on_bytes=lambda n: event("upload", w.name, n),
    )
    session.last_image = step.image
    try:
        session.upload_executor()
        info, pulled = session.ensure_image(step.image, step.pull, ctx.feed, ctx.feed_password, on_pull=lambda p: event("pull", w.name, p), cancel=ctx.cancel)
        preflight(w, info, session.staged.machine)
    except BaseException:
        _quiet(lambda: session.clean_step(step.name, step.image))
        raise
    result = _run_container(session, step, ctx, t0)
    return dataclasses.replace(result, pulled=(step.image,) if pulled else ())


def _run_container(session: WorkerSession, step: Step, ctx: StepContext, t0: float) -> StepResult:
    w = session.worker
    staged = session.staged
    s_dir, r_dir = session.step_dir(step.name)
    exe = session.executor_dir()
    name = container_name(ctx.run_id, step.name, w.name)
    argv = [
        "--rm", "-i", "--name", name,
        "--label", f"sshexec.run={ctx.run_id}", "--label", f"sshexec.step={step.name}", "--label", f"sshexec.worker={w.name}",
        "--log-driver", "none",
        "--tmpfs", "/run/sshexec:rw,nosuid,nodev,size=64m,mode=1777",
        "-v", f"{exe}:{exe}:ro", "-v", f"{s_dir}:{s_dir}", "-w", f"{s_dir}/files",
    ]  # fmt: skip
    if step.user == "worker":
        argv += ["--user", f"{staged.uid}:{staged.gid}"]
    argv += [step.image, "/bin/sh", f"{exe}/run.sh", s_dir]
    command = RUN.command(w.docker, s_dir, r_dir, ctx.run_id, name, step.image, *argv)

    nonce = new_nonce()
    stdin = header(
        nonce=nonce, syntax=step.syntax, owner=staged.uid, variables=ctx.variables,
        context={"run": ctx.run_id, "step": step.name, "worker": w.name},
    )  # fmt: skip
    outputs: dict[str, str] = {}
    sensitive: set[str] = set()
    artifacts: list[tuple[str, str]] = []
    state: dict[str, str] = {}

    def on_message(body: bytes) -> None:
        msg = parse_message(body)
        if msg is None:
            log.warning("%s/%s: ignored a malformed service message", w.name, step.name)
            return
        if msg.kind == "set":
            var, value, flag = msg.args
            if flag == "1":
                ctx.masker.add(value)
                sensitive.add(var)
            outputs[var] = value
            ctx.on_event("output", w.name, (step.name, var))
        elif msg.kind == "artifact":
            artifacts.append((msg.args[0], msg.args[1]))
        elif msg.kind == "fail":
            state["fail"] = msg.args[0]
        elif msg.kind == "missing":
            state["missing"] = msg.args[0]

    prefix = f"{w.name}/{step.name}".encode()
    pipeline = OutputPipeline(
        prefix_out=prefix + b" | ",
        prefix_err=prefix + b" ! ",
        marker=marker(nonce),
        masker=ctx.masker,
        writers=ctx.writers,
        on_message=on_message,
    )
    ctx.on_event("running", w.name, step.name)
    status, code, message, error = SUCCEEDED, None, None, None
    finished = False  # the run scriptlet ended by itself, cleanup included
    try:
        code = session.conn.stream(
            command,
            stdin=stdin,
            keep_stdin_open=True,
            on_stdout=pipeline.stdout,
            on_stderr=pipeline.stderr,
            timeout=step.timeout,
            cancel=ctx.cancel,
            on_abort=lambda reason: session.stop(name),
        )
        finished = True
    except Aborted as exc:
        finished = exc.exit_code is not None
        if exc.reason == "timeout":
            status, code = TIMED_OUT, 124
            message = f"timed out after {step.timeout}s; the container was stopped"
            error = StepTimeout(f"step {step.name} on {w.name} {message}")
        else:
            status, code, message = CANCELLED, 130, "cancelled"
            error = Cancelled(f"step {step.name} on {w.name} was cancelled")
    except ConnectionLost as exc:
        status, code, message, error = ERROR, None, exc.message, exc
    finally:
        pipeline.close()

    tail = pipeline.stderr_tail()
    if finished and not artifacts and LEFT_MARKER not in tail:
        session.dirty = False  # the run scriptlet removed the step directory itself
    if status == SUCCEEDED:
        if "missing" in state:
            status, message = ERROR, f"image {step.image} has no {state['missing']} (script.syntax is {step.syntax})"
            error = ImageRefused(w.name, message, hint="use an image that has that interpreter, or change script.syntax")
        elif code in (125, 126, 127) and ("docker:" in tail or "Error response from daemon" in tail or "OCI runtime" in tail):
            status, message = ERROR, f"the container did not start: {tail.splitlines()[-1] if tail else code}"
            error = ImageRefused(w.name, message, hint="the image needs /bin/sh; check the docker error above") if code in (126, 127) else DockerError(w.name, message)
        elif "fail" in state:
            status, message = FAILED, ctx.masker.mask_text(state["fail"])
        elif code != 0:
            status, message = FAILED, f"the script exited with code {code}"

    collected: list[Artifact] = []
    if artifacts and status != ERROR:
        try:
            collected, refused = collect_artifacts(session, s_dir, artifacts, ctx.artifact_dir / w.name)
        except WorkerError as exc:
            refused = [exc.message]
        if refused:
            if status == SUCCEEDED:
                status, code = FAILED, code or 1
            message = "; ".join(filter(None, [message, *refused]))
    if artifacts or (status in (TIMED_OUT, CANCELLED) and session.dirty):
        # The run scriptlet kept the directory for the artifacts, or was cut short.
        try:
            if session.clean_step(step.name, step.image):
                session.dirty = False
        except Exception as exc:  # noqa: BLE001 - the final sweep tries again
            log.warning("%s: cleanup failed: %s", w.name, exc)
    return StepResult(
        step=step.name,
        worker=w.name,
        status=status,
        exit_code=code,
        duration=time.monotonic() - t0,
        message=ctx.masker.mask_text(message) if message else None,
        outputs=outputs,
        sensitive_outputs=frozenset(sensitive),
        artifacts=tuple(collected),
        error=error,
    )


def collect_artifacts(session: WorkerSession, s_dir: str, wanted: list[tuple[str, str]], dest: Path) -> tuple[list[Artifact], list[str]]:
    """Download the files a script named; refuse anything outside its files/ directory."""
    files_dir = f"{s_dir}/files"
    collected: list[Artifact] = []
    refused: list[str] = []
    sftp = session.conn.sftp()
    try:
        real_files = sftp.normalize(files_dir)
        for path, name in wanted:
            reason = _artifact_refusal(path, name, files_dir)
            if reason is None:
                try:
                    real = sftp.normalize(path)
                    st = sftp.stat(real)
                except OSError:
                    reason = f"artifact {name!r}: {path} does not exist on the worker"
                else:
                    if not (real + "/").startswith(real_files.rstrip("/") + "/"):
                        reason = f"artifact {name!r}: {path} leads outside the step's directory (symlink?); refused"
                    elif not stat.S_ISREG(st.st_mode or 0):
                        reason = f"artifact {name!r}: {path} is not a regular file; refused"
            if reason is not None:
                refused.append(reason)
                continue
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = dest / name
            if target.exists():
                refused.append(f"artifact {name!r} was named twice; kept the first")
                continue
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                sftp.getfo(real, fh)
            collected.append(Artifact(name, target, target.stat().st_size))
    finally:
        sftp.close()
    return collected, refused


def _artifact_refusal(path: str, name: str, files_dir: str) -> str | None:
    if not name or name in (".", "..") or not set(name) <= ARTIFACT_NAME_CHARS or len(name) > 200:
        return f"artifact name {name!r} is not a plain file name (letters, digits, . _ - + @ = ,); refused"
    norm = posixpath.normpath(path)
    if not path.startswith("/") or not (norm + "/").startswith(files_dir + "/") or norm == files_dir:
        return f"artifact {name!r}: {path} is outside the step's working directory; refused"
    return None


def _quiet(fn) -> None:
    """Best-effort cleanup: a failure here must not hide the step's own result."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        log.warning("cleanup failed: %s", exc)
