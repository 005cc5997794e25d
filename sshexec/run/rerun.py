"""`sshexec run --retry-failed RUN_ID`: what a retry takes from an earlier run of the same runbook.

A retry is a new run. Its steps run only where the earlier run did not
succeed; the outputs of what succeeded are carried over (plan.rerun() decides,
step by step). The earlier run's `--var` values and `--worker` apply again
unless given anew. The runbook file must be the one the earlier run read
(same sha256), unless `force`: carried outputs came from that file's steps.
Scripts under `script.file` and `files:` may change (fixing a script is
what a retry is for); they are not part of the hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config.runbook import Runbook
from ..config.variables import outside_problems
from ..core.secrets import MASK
from ..errors import InputError, Problem
from ..store.history import History, RunRecord
from ..worker.docker import repository_of
from .policy import Earlier

FIELD = "--retry-failed"


@dataclass(frozen=True)
class Carry:
    """An earlier run, as a retry uses it."""

    run_id: str
    earlier: dict[str, tuple[Earlier, ...]]  # step -> its last attempt on each worker
    variables: dict[str, str] = field(default_factory=dict)  # the earlier run's --var values
    worker: str | None = None  # the earlier run's --worker
    unusable: dict[str, tuple[str, ...]] = field(default_factory=dict)  # step -> outputs not carried (masked in the history)
    digests: dict[str, str] = field(default_factory=dict)  # step -> the image it ran (repository@sha256:...), the last one recorded

    def rows(self, step: str) -> tuple[Earlier, ...]:
        return self.earlier.get(step, ())

    def pin(self, runbook: Runbook) -> Runbook:
        """`runbook` with each step's image tag replaced by the digest it ran as in the earlier run: the retry runs
        exactly that image (pulled by digest where it is missing). `run --retry-failed --latest` skips this."""
        steps = []
        for s in runbook.steps:
            digest = self.digests.get(s.name)
            if digest and s.approval is None and "@" not in s.image and repository_of(s.image) == digest.rpartition("@")[0]:
                s = replace(s, image=digest)
            steps.append(s)
        return replace(runbook, steps=tuple(steps))


def earlier_run(history: History, run_id: str) -> RunRecord:
    """The run to retry; InputError (exit 2) when there is nothing to retry in it."""
    rec = history.lookup(run_id, field=FIELD)
    if rec.status in ("running", "waiting"):
        raise InputError(f"run {rec.id} is still {rec.status}", field=FIELD, hint="wait for it to end (or Ctrl-C it), then retry")
    if rec.status == "succeeded":
        raise InputError(f"run {rec.id} succeeded: there is nothing to retry", field=FIELD)
    if not rec.runbook_path:
        raise InputError(f"run {rec.id} did not record its runbook file", field=FIELD, hint="run the runbook again")
    return rec


def check_runbook(rec: RunRecord, digest: str, *, force: bool) -> None:
    """The retry reads the runbook file the earlier run read, unchanged (or `force`)."""
    if rec.runbook_hash != digest and not force:
        why = "was recorded without its runbook's hash" if not rec.runbook_hash else f"read {rec.runbook_path}, which has changed since"
        raise InputError(
            f"run {rec.id} {why}",
            file=rec.runbook_path, field=FIELD,
            hint="add --force to retry with the runbook as it is now (outputs carried over came from the old one), or run it afresh",
        )  # fmt: skip


def load_carry(history: History, rec: RunRecord, runbook: Runbook) -> Carry:
    """What the retry takes from `rec`: the last attempt of each step on each worker, and its options.

    Its `--var` values apply again only to names `runbook` still declares (InputError otherwise).
    """
    runbook_variables = runbook.variables
    last: dict[tuple[str, str], dict] = {}
    digests: dict[str, str] = {}
    for row in history.steps(rec.id):
        if row.get("image_digest"):
            digests[row["step"]] = row["image_digest"]
        if row["worker"] != "-":  # a step that did not run at all has no worker row
            last[(row["step"], row["worker"])] = row  # rows come attempt by attempt: the last one stays
    earlier: dict[str, list[Earlier]] = {}
    unusable: dict[str, list[str]] = {}
    for (step, worker), row in last.items():
        outputs = {}
        for name, value in row["outputs"].items():
            # Only masked text is stored: a sensitive output (or one holding a secret) cannot be carried.
            if MASK.decode() in value or MASK.decode() in name:
                unusable.setdefault(step, []).append(name)
            else:
                outputs[name] = value
        earlier.setdefault(step, []).append(Earlier(step, worker, row["status"], outputs, row["carried_from"] or rec.id))
    overrides = {}
    for name, value in (rec.variables or {}).items():
        if runbook_variables.get(name) == value:
            continue
        if MASK.decode() in value:
            raise InputError(f"--var {name} of run {rec.id} held a secret and was stored masked", field=FIELD, hint=f"give it again: --var {name}=...")
        overrides[name] = value
    problems = outside_problems(overrides, runbook, f"{FIELD} {rec.id}: --var {{}}")
    problems += [Problem(f"{n} is sensitive in the runbook now: its value comes from ${runbook.sensitive[n]}", field=f"{FIELD} {rec.id}: --var {n}") for n in overrides if n in runbook.sensitive]
    if problems:
        raise InputError(problems=[Problem(p.message, runbook.path, None, p.field, p.hint) for p in problems])
    return Carry(
        run_id=rec.id,
        earlier={k: tuple(v) for k, v in earlier.items()},
        variables=overrides,
        worker=(rec.options or {}).get("worker"),
        unusable={k: tuple(v) for k, v in unusable.items()},
        digests=digests,
    )
