"""One step on one worker, start to cleanup: stage, pull, preflight, run, stream, collect, clean.

The warm path is a single SSH round trip (the GO scriptlet of docker.py)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

from ..config.runbook import SET_NAME, Step
from ..core.secrets import MIN_SECRET, short_secret
from ..core.status import CANCELLED, ERROR, TIMED_OUT
from ..errors import (
    Cancelled,
    ConnectionLost,
    ImageRefused,
    PullError,
    WorkerError,
)
from ..executor import executor_hash
from ..ssh import Aborted
from ..worker.bundle import check_files, write_bundle
from ..worker.coord import beat_arg
from ..worker.docker import (
    E_COORD,
    E_NOEXECUTOR,
    E_NOIMAGE,
    E_NOSLOT,
    E_REFUSED,
    GO,
    LEFT_MARKER,
    STATE_MARKER,
    ImageInfo,
    WorkerFacts,
    parse_state,
    preflight,
)
from ..worker.docker_errors import absent_is_docker_failure, classify_docker_failure, stage_error
from ..worker.heartbeat import beat
from ..worker.session import WorkerSession
from ..worker.slots import SlotWait, no_free_slot
from .artifacts import Artifact, collect_artifacts
from .outcome import Ended, classify, with_refused_artifacts
from .output import OutputPipeline
from .protocol import header, marker, new_nonce, parse_message
from .result import StepContext, StepResult

log = logging.getLogger("sshexec")


def container_name(run_id: str, step: str, worker: str) -> str:
    return f"sshexec-{run_id}-{step}-{worker}"


SMALL_BUNDLE = 1 << 20  # bundles up to this size travel with the GO command itself


def small_bundle(step: Step) -> bytes | None:
    """The bundle as tar bytes when it is small enough to send in one go, else None."""
    if step.files is not None:
        count, size = check_files(step.files)
        if size + len(step.script) > SMALL_BUNDLE or count > 200:
            return None
    buf = bytearray()
    write_bundle(buf.extend, script=step.script, files=step.files)
    return bytes(buf)


def run_step(session: WorkerSession, step: Step, ctx: StepContext) -> StepResult:
    """Run `step` on the session's worker; cleanup runs on every path.

    Warm path: one SSH round trip (GO) stages a small bundle, checks the
    executor and the image, and runs the container. Only what is missing
    costs more: a big bundle is streamed first (STAGE), a missing executor is
    uploaded, a missing image pulled, and GO tried again.

    Infrastructure problems before the script starts raise (so that
    `target: any` can try another worker); everything after is a result.
    """
    w = session.worker
    t0 = time.monotonic()
    event = ctx.on_event
    session.open()
    session.last_image = step.image
    tar = small_bundle(step)
    staged = False
    pulled = False
    slot_wait = None
    try:
        if tar is None:
            event("stage", w.name, step.name)
            _ensure_heartbeat(session, ctx)  # the bundle's directory outlives this round trip
            session.stage_bundle(step.name, script=step.script, files=step.files, on_bytes=lambda n: event("upload", w.name, n))
            staged = True
        if step.pull == "always" and step.image not in session.pulled:
            _ensure_heartbeat(session, ctx)  # so is the pull's DOCKER_CONFIG, under the run's directory
            session.pull(step.image, ctx.feed, ctx.feed_password, on_pull=lambda p: event("pull", w.name, p), cancel=ctx.cancel)
            pulled = True
        tries = 0
        while tries < 3:
            outcome = _go(session, step, ctx, t0, None if staged else tar)
            if isinstance(outcome, StepResult):
                return dataclasses.replace(outcome, pulled=(step.image,) if pulled else ())
            code, facts, early = outcome
            staged = code in (E_NOIMAGE, E_NOEXECUTOR, E_NOSLOT)  # GO keeps the directory for the next try
            if code == E_NOSLOT:
                busy = no_free_slot(w.name, facts.get("noslot", ""))
                if not ctx.wait_slot:
                    raise busy
                slot_wait = slot_wait or SlotWait(step.timeout, ctx.cancel, lambda text: event("slot-wait", w.name, text))
                if slot_wait.expired():
                    raise slot_wait.give_up(busy)
                slot_wait.pause(w.name)
                continue
            tries += 1
            if code == E_COORD:
                raise WorkerError(w.name, facts.get("coord") or "cannot use the max_steps slots", hint="install flock (util-linux) on the worker, or drop max_steps")
            if code == E_NOEXECUTOR:
                session.upload_executor()
            elif code == E_NOIMAGE:
                reason = facts.get("noimage", "")
                if absent_is_docker_failure(reason):
                    raise classify_docker_failure(w, reason)
                if step.pull == "never":
                    raise PullError(w.name, f"image {step.image} is not on {w.name} and its pull policy is never", hint="pull it first (sshexec prepull) or change container.pull")
                if step.image in session.pulled:
                    raise PullError(w.name, f"image {step.image} disappeared from {w.name} right after it was pulled")
                _ensure_heartbeat(session, ctx)
                session.pull(step.image, ctx.feed, ctx.feed_password, on_pull=lambda p: event("pull", w.name, p), cancel=ctx.cancel)
                pulled = True
            elif code == E_REFUSED:
                info = session.images.get(step.image)
                if info is not None:
                    preflight(w, info, session.facts.machine if session.facts else "")
                raise ImageRefused(w.name, f"image {step.image} cannot run here", hint="check its ENTRYPOINT and platform: docker image inspect " + step.image)
            else:
                raise stage_error(w, code, early)
        raise WorkerError(w.name, f"step {step.name} could not start after fetching the executor and the image")
    except BaseException:
        if staged:
            _quiet(lambda: session.clean_step(step.name, step.image))
        raise


def _ensure_heartbeat(session: WorkerSession, ctx: StepContext) -> None:
    """Write the run's heartbeat before something that outlives one round trip (GO writes its own)."""
    if not session.beat_left:
        session.beat_left = True
        beat(session.conn, ctx.run_id, ctx.owner)


class _GoState:
    """Reads GO's state lines on stderr until "staged"; after it, stderr is the container's."""

    def __init__(self, session: WorkerSession, image: str, on_staged: Callable[[], None], forward: Callable[[bytes], None]):
        self.session, self.image = session, image
        self.on_staged, self.forward = on_staged, forward
        self.started = False
        self.facts: dict[str, str] = {}
        self.early = bytearray()
        self._buf = b""

    def feed(self, data: bytes) -> None:
        if self.started:
            self.forward(data)
            return
        buf = self._buf + data
        while not self.started:
            line, sep, rest = buf.partition(b"\n")
            if not sep:
                break
            buf = rest
            if line.startswith(STATE_MARKER):
                self._state(line[len(STATE_MARKER):].decode("utf-8", "replace"))
            else:
                self.early.extend(line + b"\n")
                del self.early[:-8192]
        if self.started:
            self._buf = b""
            if buf:
                self.forward(buf)
        else:
            self._buf = buf

    def _state(self, line: str) -> None:
        kind, fields = parse_state(line)
        s = self.session
        if kind == "root" and len(fields) == 4:
            s.facts = WorkerFacts(*fields)
        elif kind == "image" and len(fields) >= 6:
            s.images[self.image] = ImageInfo.parse(self.image, fields)
            s.executor_ok = True
        elif kind == "staged":
            self.started = True
            self.on_staged()
        else:
            self.facts[kind] = fields[0] if fields else ""


def _go(session: WorkerSession, step: Step, ctx: StepContext, t0: float, tar: bytes | None):
    """One GO round trip: a StepResult once the container ran, else (exit code, state, early stderr)."""
    w = session.worker
    name = container_name(ctx.run_id, step.name, w.name)
    argv = [
        "--rm", "-i", "--name", name,
        "--label", f"sshexec.run={ctx.run_id}", "--label", f"sshexec.step={step.name}", "--label", f"sshexec.worker={w.name}",
        "--log-driver", "none",
        "--tmpfs", "/run/sshexec:rw,nosuid,nodev,size=64m,mode=1777",
    ]  # fmt: skip
    size = str(len(tar)) if tar is not None else "staged"
    hb = beat_arg(w.lock_stale, w.max_steps, ctx.owner)
    command = GO.command(w.docker, w.work_root, ctx.run_id, w.name, step.name, name, step.image, executor_hash(), size, step.user, hb, *argv)
    session.dirty = True
    session.beat_left = True  # GO writes the run's heartbeat; it drops it when it leaves nothing behind

    nonce = new_nonce()
    stdin = header(
        nonce=nonce, syntax=step.syntax, variables=ctx.variables,
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
            if not SET_NAME.fullmatch(var):
                log.warning("%s/%s: ignored an output variable with a bad name", w.name, step.name)
                return
            if flag == "1":
                ctx.masker.add(value)
                if value and len(value) < MIN_SECRET and var not in sensitive:
                    # Masked all the same (it is a secret), and said once; logged after add(), so the
                    # masker covers this message too, in case the name holds the value.
                    log.warning(
                        "%s/%s: the sensitive output %s %s: it is masked wherever those characters appear, even inside "
                        "other words; set a longer value, or drop --sensitive if it is no secret", w.name, step.name, var, short_secret(value),
                    )  # fmt: skip
                sensitive.add(var)
            outputs[var] = value
            ctx.on_event("output", w.name, (step.name, var))
        elif msg.kind == "artifact":
            artifacts.append((msg.args[0], msg.args[1]))
        elif msg.kind == "fail":
            state["fail"] = msg.args[0]
        elif msg.kind == "missing":
            state["missing"] = msg.args[0]
        elif msg.kind == "started":
            state["started"] = ""

    prefix = f"{w.name}/{step.name}".encode()
    pipeline = OutputPipeline(
        prefix_out=prefix + b" | ",
        prefix_err=prefix + b" ! ",
        marker=marker(nonce),
        masker=ctx.masker,
        writers=ctx.writers,
        on_message=on_message,
    )
    chan_box: list = []

    def staged() -> None:
        # Only now is it safe to send more than the bundle: head and tar are done reading.
        if not ctx.cancel.is_set():
            chan_box[0].sendall(stdin)
        ctx.on_event("running", w.name, step.name)

    def abort(reason: str) -> None:
        try:
            chan_box[0].shutdown_write()  # the executor's watchdog stops the script too
        except Exception:  # noqa: BLE001 - the channel may be gone already
            pass
        session.stop(name)

    gate = _GoState(session, step.image, staged, pipeline.stderr)
    aborted, lost, code = None, None, None
    finished = False  # the run scriptlet ended by itself, cleanup included
    try:
        code = session.conn.stream(
            command,
            stdin=tar,
            keep_stdin_open=True,
            on_channel=chan_box.append,
            on_stdout=pipeline.stdout,
            on_stderr=gate.feed,
            timeout=step.timeout,
            cancel=ctx.cancel,
            on_abort=abort,
        )
        finished = True
    except Aborted as exc:
        finished = exc.exit_code is not None
        if not gate.started and exc.reason == "cancel":
            raise Cancelled(f"step {step.name} on {w.name} was cancelled before it started") from None
        aborted = exc.reason
    except ConnectionLost as exc:
        lost = exc
    finally:
        pipeline.close()
    if not gate.started and aborted is None and lost is None:
        return code, gate.facts, gate.early.decode("utf-8", "replace")

    tail = pipeline.stderr_tail()
    if finished and not artifacts and LEFT_MARKER not in tail:
        session.dirty = False  # the run scriptlet removed the step directory itself
        session.beat_left = False  # and the heartbeat, unless a lock of the run keeps it (locks.py)
    outcome = classify(Ended(
        step=step.name, worker=w.name, image=step.image, syntax=step.syntax, timeout=step.timeout,
        exit_code=code, executor_started="started" in state, aborted=aborted, lost=lost,
        missing=state.get("missing"), failed=state.get("fail"), stderr_tail=tail,
    ))  # fmt: skip

    collected: list[Artifact] = []
    if artifacts and outcome.status != ERROR:
        try:
            collected, refused = collect_artifacts(session, session.step_dir(step.name), artifacts, ctx.artifact_dir / w.name, ctx.masker)
        except WorkerError as exc:
            refused = [exc.message]
        outcome = with_refused_artifacts(outcome, refused)
    if artifacts or (outcome.status in (TIMED_OUT, CANCELLED) and session.dirty):
        # The run scriptlet kept the directory for the artifacts, or was cut short.
        try:
            if session.clean_step(step.name, step.image):
                session.dirty = False
        except Exception as exc:  # noqa: BLE001 - the final sweep tries again
            log.warning("%s: cleanup failed: %s", w.name, exc)
    return StepResult(
        step=step.name,
        worker=w.name,
        status=outcome.status,
        exit_code=outcome.exit_code,
        duration=time.monotonic() - t0,
        message=ctx.masker.mask_text(outcome.message) if outcome.message else None,
        outputs=outputs,
        sensitive_outputs=frozenset(sensitive),
        artifacts=tuple(collected),
        error=outcome.error,
    )


def _quiet(fn) -> None:
    """Best-effort cleanup: a failure here must not hide the step's own result."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        log.warning("cleanup failed: %s", exc)
