"""One step on one worker, start to cleanup: stage, pull, preflight, run, stream, collect, clean.

The warm path is a single SSH round trip (GO, worker/docker.py), which the
worker's session carries out (`WorkerSession.go`). This module decides what to
do around it: what to send (`_go`), what to fetch when GO says something is
missing (`run_step`), and what the container's end means (`_finish`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ..config.runbook import Step
from ..core.status import CANCELLED, ERROR, TIMED_OUT
from ..errors import ImageRefused, PullError, WorkerError
from ..worker.bundle import bundle_digest, check_files, write_bundle
from ..worker.docker import E_COORD, E_DIGEST, E_NOEXECUTOR, E_NOIMAGE, E_NOSLOT, E_REFUSED, VARS_TMPFS, preflight
from ..worker.docker_errors import absent_is_docker_failure, classify_docker_failure, stage_error
from ..worker.go import GoReply
from ..worker.session import WorkerSession
from ..worker.slots import SlotWait, no_free_slot
from .artifacts import Artifact, collect_artifacts
from .messages import Messages
from .outcome import Ended, classify, with_refused_artifacts
from .output import OutputPipeline
from .protocol import header, marker, new_nonce
from .result import StepContext, StepResult

log = logging.getLogger("sshexec")


def container_name(run_id: str, step: str, worker: str) -> str:
    return f"sshexec-{run_id}-{step}-{worker}"


SMALL_BUNDLE = 1 << 20  # bundles up to this size travel with the GO command itself


def small_bundle(step: Step, under: str = "") -> bytes | None:
    """The bundle as tar bytes when it is small enough to send in one go, else None. `under`: RUN/WORKER/STEP,
    the step directory's place under work_root's runs/ (GO unpacks it there: the directories come with it)."""
    if step.files is not None:
        count, size = check_files(step.files)
        if size + len(step.script) > SMALL_BUNDLE or count > 200:
            return None
    buf = bytearray()
    write_bundle(buf.extend, script=step.script, files=step.files, under=under)
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
    tar = small_bundle(step, f"{ctx.run_id}/{w.name}/{step.name}")
    staged = False
    pulled = False
    slot_wait = None

    def pull() -> None:
        session.ensure_heartbeat(ctx.owner)  # the pull's DOCKER_CONFIG, under the run's directory, outlives one round trip
        session.pull(step.image, ctx.feed, ctx.feed_password, on_pull=lambda p: event("pull", w.name, p), cancel=ctx.cancel)

    try:
        if tar is None:
            event("stage", w.name, step.name)
            session.ensure_heartbeat(ctx.owner)  # the bundle's directory outlives this round trip
            session.stage_bundle(step.name, image=step.image, script=step.script, files=step.files, on_bytes=lambda n: event("upload", w.name, n))
            staged = True
        if step.pull == "always" and step.image not in session.pulled:
            pull()
            pulled = True
        tries = 0
        while tries < 3:
            reply = _go(session, step, ctx, None if staged else tar)
            if isinstance(reply, StepResult):
                return dataclasses.replace(reply, duration=time.monotonic() - t0, pulled=(step.image,) if pulled else ())
            code, facts = reply.code, reply.facts
            if reply.started:  # _go: docker run found no image by the ID its connection remembered; GO inspects now
                tries += 1
                continue
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
                pull()
                pulled = True
            elif code == E_DIGEST:
                want = ctx.resolved.get(step.image, "?") if ctx.resolved is not None else "?"
                raise ImageRefused(
                    w.name, f"image {step.image} is another image on {w.name} than the {want} this run ran elsewhere",
                    hint="pin it (image: NAME@sha256:...), push the tag once for all, or let the runbook allow it: mixed_digests: allow",
                )  # fmt: skip
            elif code == E_REFUSED:
                info = session.images.get(step.image)
                if info is not None:
                    preflight(w, info, session.facts.machine if session.facts else "")
                raise ImageRefused(w.name, f"image {step.image} cannot run here", hint="check its ENTRYPOINT and platform: docker image inspect " + step.image)
            else:
                raise stage_error(w, code, reply.early)
        raise WorkerError(w.name, f"step {step.name} could not start after fetching the executor and the image")
    except BaseException:
        if staged:
            _quiet(lambda: session.clean_step(step.name, step.image))
        raise


def _go(session: WorkerSession, step: Step, ctx: StepContext, tar: bytes | None) -> StepResult | GoReply:
    """One GO round trip: a StepResult once the container ran, else GO's reply (what is missing)."""
    w = session.worker
    name = container_name(ctx.run_id, step.name, w.name)
    docker_args = [
        "--rm", "-i", "--name", name,
        "--label", f"sshexec.run={ctx.run_id}", "--label", f"sshexec.step={step.name}", "--label", f"sshexec.worker={w.name}",
        "--log-driver", "none",
        "--tmpfs", f"{VARS_TMPFS}:rw,nosuid,nodev,size=64m,mode=1777",
    ]  # fmt: skip
    nonce = new_nonce()
    stdin = header(
        nonce=nonce, syntax=step.syntax, variables=ctx.variables,
        context={"run": ctx.run_id, "step": step.name, "worker": w.name}, allow=ctx.loaders,
    )  # fmt: skip
    messages = Messages(w.name, step.name, ctx.masker, on_output=lambda var: ctx.on_event("output", w.name, (step.name, var)))
    prefix = f"{w.name}/{step.name}".encode()
    pipeline = OutputPipeline(
        prefix_out=prefix + b" | ", prefix_err=prefix + b" ! ", marker=marker(nonce), masker=ctx.masker, writers=ctx.writers, on_message=messages.take,
    )  # fmt: skip
    try:
        reply = session.go(
            step.name, container=name, image=step.image, bundle=tar, user=step.user, docker_args=docker_args, owner=ctx.owner,
            header=stdin, on_stdout=pipeline.stdout, on_stderr=pipeline.stderr, on_started=lambda: ctx.on_event("running", w.name, step.name),
            timeout=step.timeout, cancel=ctx.cancel, want=_wanted(ctx, step),
        )  # fmt: skip
    finally:
        pipeline.close()
    if not reply.started and reply.aborted is None and reply.lost is None:
        return reply
    if reply.known and reply.code == 125 and not messages.started and tar is not None and "No such image" in pipeline.stderr_tail():
        return reply  # the image a kept connection checked was deleted since (worker/facts.py): run_step asks GO again
    return _finish(session, step, ctx, reply, messages, pipeline.stderr_tail())


def _finish(session: WorkerSession, step: Step, ctx: StepContext, reply: GoReply, messages: Messages, stderr_tail: str) -> StepResult:
    """What the container's end means: the outcome, the artifacts fetched, the step's directory cleaned."""
    w = session.worker
    if reply.finished and not reply.left_marked and not messages.artifacts:
        session.step_removed()  # the run scriptlet removed the step directory itself
    outcome = classify(Ended(
        step=step.name, worker=w.name, image=step.image, syntax=step.syntax, timeout=step.timeout,
        exit_code=reply.code, executor_started=messages.started, aborted=reply.aborted, lost=reply.lost,
        missing=messages.missing, failed=messages.failed, stderr_tail=stderr_tail,
    ))  # fmt: skip
    collected: list[Artifact] = []
    if messages.artifacts and outcome.status != ERROR:
        try:
            collected, refused = collect_artifacts(session, step.name, session.step_dir(step.name), messages.artifacts, ctx.artifacts, ctx.masker)
        except WorkerError as exc:
            refused = [exc.message]
        outcome = with_refused_artifacts(outcome, refused)
    if messages.artifacts or (outcome.status in (TIMED_OUT, CANCELLED) and session.dirty):
        # The run scriptlet kept the directory for the artifacts, or was cut short.
        try:
            session.clean_step(step.name, step.image)
        except Exception as exc:  # noqa: BLE001 - the final sweep tries again
            log.warning("%s: cleanup failed: %s", w.name, exc)
    info = session.images.get(step.image)
    digest = info.digest_ref() if info is not None else None
    status, code, message = outcome.status, outcome.exit_code, outcome.message
    if digest and ctx.resolved is not None and "@" not in step.image:
        first = ctx.resolved.setdefault(step.image, digest)
        if first != digest:
            # Workers of one fan-out start at once: the first to report fixed the tag's digest for the run, and this
            # one ran another image under it. It ran; the step says so, as GO refuses it for every later start.
            status, code = ERROR, 3
            message = f"image {step.image} was {digest} on {w.name} but {first} elsewhere in this run (mixed_digests: refuse)"
    return StepResult(
        step=step.name,
        worker=w.name,
        image_digest=digest,
        bundle_hash=_bundle_hash(step),
        status=status,
        exit_code=code,
        duration=0.0,  # run_step knows when the step began
        message=ctx.masker.mask_text(message) if message else None,
        outputs=messages.outputs,
        sensitive_outputs=frozenset(messages.sensitive),
        artifacts=tuple(collected),
        error=outcome.error,
    )


def _bundle_hash(step: Step) -> str | None:
    """What the bundle held, for the history; None (with a warning) if files: cannot be read again: it already ran."""
    try:
        return bundle_digest(step.script, step.files)
    except OSError as exc:
        log.warning("step %s: could not hash its bundle for the history: %s", step.name, exc)
        return None


def _wanted(ctx: StepContext, step: Step) -> str:
    """The digest (sha256:...) the image's tag must have here: what this run ran it as already; "" if free."""
    if ctx.resolved is None or "@" in step.image:
        return ""
    first = ctx.resolved.get(step.image)
    return first.rpartition("@")[2] if first else ""


def _quiet(fn) -> None:
    """Best-effort cleanup: a failure here must not hide the step's own result."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        log.warning("cleanup failed: %s", exc)
