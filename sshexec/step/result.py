"""What one step on one worker needs from its run (`StepContext`), and what it did (`StepResult`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from ..config.inventory import Feed
from ..core.secrets import Masker, Secret
from ..core.status import SUCCEEDED
from ..errors import SshexecError
from ..store.artifacts import RunArtifacts
from ..views import ArtifactView, ErrorView, StepView
from ..worker.coord import Owner
from .artifacts import Artifact
from .output import PrefixWriter


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
    attempt: int = 1  # which attempt this is, of `attempts` allowed (retries:)
    attempts: int = 1
    earlier: tuple["StepResult", ...] = ()  # the attempts before this one, oldest first
    carried_from: str | None = None  # --retry-failed: not run here, its outputs come from that run
    image_digest: str | None = None  # the image that ran, as repository@sha256:... (the worker's RepoDigest)
    bundle_hash: str | None = None  # SHA-256 of what the bundle holds: the script and files: (worker/bundle.py)

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def shown_outputs(self, masker: Masker | None = None) -> dict[str, str]:
        """Outputs as people may see them: sensitive ones hidden, any secret inside the others masked."""
        mask = masker.mask_text if masker else (lambda v: v)
        # Names are masked too: a script may have used a secret as a name.
        return {mask(k): ("********" if k in self.sensitive_outputs else mask(v)) for k, v in self.outputs.items()}

    def view(self, masker: Masker | None = None) -> StepView:
        """This result as `run --json` shows it: masked, with its artifacts, pulls, error and earlier attempts."""
        mask = masker.mask_text if masker else (lambda v: v)
        return StepView(
            step=self.step,
            worker=self.worker,
            status=self.status,
            exit_code=self.exit_code,
            duration=round(self.duration, 3),
            message=mask(self.message) if self.message else self.message,
            outputs=self.shown_outputs(masker),
            artifacts=[ArtifactView(step=self.step, worker=self.worker, name=a.name, size=a.size) for a in self.artifacts],
            pulled=list(self.pulled),
            error=_masked_error(self.error, masker),
            attempt=self.attempt,
            attempts=self.attempts,
            earlier_attempts=[e.view(masker) for e in self.earlier],
            carried_from=self.carried_from,
            image_digest=self.image_digest,
            bundle_hash=self.bundle_hash,
        )


@dataclass
class StepContext:
    """What a step needs from its run."""

    run_id: str
    variables: dict[str, str]  # everything the script may read, sensitive values included
    masker: Masker
    writers: tuple[PrefixWriter, ...]
    artifacts: RunArtifacts  # where collected files are stored (store/artifacts.py)
    cancel: threading.Event
    feed: Feed | None = None
    feed_password: Secret | None = None
    on_event: Callable[[str, str, object], None] = lambda kind, worker, data: None
    owner: Owner = field(default_factory=Owner.here)  # who this run is, in its heartbeat and slots (worker/coord.py)
    wait_slot: bool = True  # no free max_steps slot: wait for one (else NoFreeSlot: target: any tries elsewhere)
    loaders: frozenset[str] = frozenset()  # loader names the executor may export: the runbook's own values (config/variables.py)
    # image tag -> the repository@sha256 it ran as first in this run, shared by the run's steps; None: the runbook allows
    # a tag to be another image on another worker (mixed_digests: allow)
    resolved: dict[str, str] | None = None


def _masked_error(error: SshexecError | None, masker: Masker | None) -> ErrorView | None:
    if error is None:
        return None
    d = error.to_dict()
    if masker:
        d = {k: masker.mask_text(v) if isinstance(v, str) else v for k, v in d.items()}
    return ErrorView(**d)
