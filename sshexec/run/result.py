"""A run's result: its status, exit code, every step's result on every worker, and its outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.secrets import Masker
from ..core.status import SUCCEEDED
from ..step.result import StepResult
from ..views import RunResultView


@dataclass(frozen=True)
class StepRun:
    """One step of a run on all its workers: the results (carried ones first), and how many failed workers it tolerates."""

    results: list[StepResult]
    limit: int = 0


@dataclass
class RunResult:
    run_id: str
    runbook: str
    status: str
    exit_code: int
    duration: float
    steps: list[StepResult] = field(default_factory=list)
    message: str | None = None
    leftovers: list[str] = field(default_factory=list)  # workers that could not be cleaned
    masker: Masker | None = field(default=None, repr=False, compare=False)
    retry_of: str | None = None  # --retry-failed: the run this one retried

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def outputs(self) -> dict[str, str]:
        """Every output variable as later steps see it, sensitive values masked."""
        out: dict[str, str] = {}
        by_step: dict[str, list[StepResult]] = {}
        for r in self.steps:
            by_step.setdefault(r.step, []).append(r)
        for step, results in by_step.items():
            for r in results:
                for k, v in r.shown_outputs(self.masker).items():
                    out[f"{step}[{r.worker}].{k}"] = v
                    if len(results) == 1:
                        out[f"{step}.{k}"] = v
        return dict(sorted(out.items()))

    def view(self) -> RunResultView:
        """The result as `run --json` shows it, masked."""
        return RunResultView(
            run_id=self.run_id,
            runbook=self.runbook,
            status=self.status,
            exit_code=self.exit_code,
            duration=round(self.duration, 3),
            message=self.message,
            steps=[s.view(self.masker) for s in self.steps],
            outputs=self.outputs(),
            log=f"sshexec logs {self.run_id}",
            leftovers=list(self.leftovers),
            retry_of=self.retry_of,
        )
