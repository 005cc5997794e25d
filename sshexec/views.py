"""What runs, steps, artifacts and workers look like as JSON: one model per view, for `--json` and the HTTP API.

`sshexec run --json`, `runs --json`, `logs --json` and `check --json` print
these models, and `sshexec serve` answers with them (and describes them at
/docs), so a script written against one works against the other. The library
builds them too: `sshexec check` finds a `WorkerHealth`, and a run's result
gives its `RunResultView`.
Every text in them is already masked: they are built from the history, which
holds only masked text, from results that mask their own, and from health
checks, which hold no secret.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field


class RunSummary(BaseModel):
    """One run of the history."""

    id: str
    runbook: str
    runbook_path: str | None = None
    inventory: str | None = None
    started: float
    finished: float | None = None
    duration: float | None = None
    status: str = Field(description="queued, running, succeeded, failed, timed-out, error, cancelled, or interrupted (its process died, or its node was lost)")
    exit_code: int | None = None
    message: str | None = None
    variables: dict[str, str] | None = Field(default=None, description="the plain variables as run, sensitive values masked")
    host: str | None = Field(default=None, description="the machine whose sshexec process ran it")
    pid: int | None = None
    started_by: str | None = Field(default=None, description="the local user (command line), or the token that asked the server")
    runbook_hash: str | None = Field(default=None, description="sha256 of the runbook file as run (--retry-failed refuses a changed one)")
    retry_of: str | None = Field(default=None, description="the run this one retried (sshexec run --retry-failed)")
    node: str | None = Field(default=None, description="the server node that claimed it from the queue (none: a command-line run)")

    @classmethod
    def of(cls, record) -> "RunSummary":
        return cls(**record.to_dict())


class ErrorView(BaseModel):
    """An error, as sshexec's errors describe themselves (`SshexecError.to_dict()`): its class, message and hint,
    and what its class adds (the worker, a host key's fingerprint, a lock's holder...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    error: str = Field(description="the error's class, e.g. UnknownHostKey, PullError (README: errors)")
    message: str
    hint: str | None = Field(default=None, description="what to do about it")


class ArtifactView(BaseModel):
    """A file a step collected, stored in the history's database: `sshexec artifact RUN_ID WORKER/NAME`
    fetches it, and the server sends it at `url`."""

    step: str
    worker: str
    name: str
    size: int
    stored: bool = Field(default=True, description="false: only its record is kept (its file was gone when an older history was upgraded)")
    url: str | None = None


class StepView(BaseModel):
    """One step on one worker (one attempt of it). A run's own result (`run --json`) adds what the history does not keep:
    the artifacts of the step, the images pulled for it, its error, and its earlier attempts."""

    seq: int | None = Field(default=None, description="the step's place in the runbook (history)")
    step: str
    worker: str
    status: str
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    duration: float | None = None
    message: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict, description="output variables, sensitive ones masked")
    attempt: int = Field(default=1, description="which attempt this row is (retries:); each attempt has its row")
    attempts: int = Field(default=1, description="how many attempts the step allows")
    carried_from: str | None = Field(default=None, description="--retry-failed: not run here; its result and outputs come from that run")
    image_digest: str | None = Field(default=None, description="the image that ran: repository@sha256:... (the worker's RepoDigest); --retry-failed runs it again")
    bundle_hash: str | None = Field(default=None, description="SHA-256 of the step's bundle: its script and files:")
    artifacts: list[ArtifactView] = Field(default_factory=list, description="run --json: the files this step collected")
    pulled: list[str] = Field(default_factory=list, description="run --json: images pulled for this step")
    error: ErrorView | None = None
    earlier_attempts: list["StepView"] = Field(default_factory=list, description="run --json: the attempts before this one, oldest first")


class RunDetail(RunSummary):
    """A run with its steps and artifacts."""

    steps: list[StepView] = Field(default_factory=list)
    artifacts: list[ArtifactView] = Field(default_factory=list)

    @classmethod
    def load(cls, history, record, *, artifact_url=None) -> "RunDetail":
        """`artifact_url(worker, name)` gives each artifact's download URL (the server's)."""
        arts = [ArtifactView(**a, url=artifact_url(a["worker"], a["name"]) if artifact_url else None) for a in history.artifacts(record.id)]
        return cls(**record.to_dict(), steps=[StepView(**s) for s in history.steps(record.id)], artifacts=arts)


class RunResultView(BaseModel):
    """`sshexec run --json`: what the run did, as it ended."""

    run_id: str
    runbook: str
    status: str
    exit_code: int
    duration: float
    message: str | None = None
    steps: list[StepView] = Field(default_factory=list)
    outputs: dict[str, str] = Field(default_factory=dict, description="every output variable as later steps see it (STEP.NAME, STEP[WORKER].NAME), sensitive ones masked")
    log: str | None = Field(default=None, description="how to read the run's stored log (it is in the history's database)")
    leftovers: list[str] = Field(default_factory=list, description="workers where something of the run could not be cleaned up")
    retry_of: str | None = None


class RunWithLog(RunDetail):
    """`sshexec logs --json`: a run, and its whole (masked) log."""

    log: str


class RunList(BaseModel):
    runs: list[RunSummary]
    total: int = Field(description="how many runs match the filters")
    limit: int
    offset: int


class TriggerRequest(BaseModel):
    """Start a runbook of the server's --runbooks directory."""

    runbook: str = Field(description="the runbook's name: its file name without .yaml", examples=["demo"])
    vars: dict[str, str] = Field(default_factory=dict, description="values for variables the runbook declares under variables: (any other name, or a loader name such as PYTHONPATH, is refused: 422); sensitive ones come only from the server's environment")


class TriggerResponse(BaseModel):
    run_id: str
    url: str = Field(description="the run, in the API")


class RunbookView(BaseModel):
    name: str = Field(description="what POST /api/runs takes")
    title: str = Field(description="the runbook's own name:")
    variables: dict[str, str] = Field(description="plain variables and their defaults")
    sensitive: list[str] = Field(description="sensitive variables: set from the server's environment")
    missing: list[str] = Field(default_factory=list, description="environment variables the sensitive ones need that the server lacks: a run would be refused")
    steps: list[str]
    error: str | None = Field(default=None, description="why the file cannot be run (bad YAML, say)")


class WorkerSlots(BaseModel):
    used: int | None = Field(default=None, description="step containers running now (None: not known)")
    max: int | None = Field(default=None, description="the worker's max_steps (None: no limit)")


class WorkerHealth(BaseModel):
    """One worker's health, as `sshexec check` finds it. `error` is the first problem found, with what to do."""

    model_config = ConfigDict(frozen=True)

    worker: str
    address: str
    ssh: bool = False
    host_key: bool | None = None
    docker_cli: bool | None = None
    daemon: bool | None = None
    permission: bool | None = None
    version: str | None = None
    platform: str | None = None
    free_bytes: int | None = None
    work_root: str | None = None
    writable: bool | None = None
    docker_required: bool = Field(default=True, description="false for a jump host (a worker in no pool): only SSH and its host key are checked")
    endpoint: str | None = Field(default=None, description="the Docker daemon's address, as the docker CLI on the worker used it")
    daemon_id: str | None = Field(default=None, description="the daemon's ID (docker info)")
    daemon_name: str | None = Field(default=None, description="the daemon's name (docker info)")
    docker_root: str | None = Field(default=None, description="where the daemon keeps images and containers (docker info DockerRootDir)")
    docker_free_bytes: int | None = Field(default=None, description="free disk there, when the SSH user can see it")
    node: str | None = Field(default=None, description="the worker's own host name: where its locks, slots and heartbeats live (work_root/coord/<node>)")
    slots: WorkerSlots = Field(default_factory=WorkerSlots, description="step containers running there now, any operator's, and its max_steps")
    error: ErrorView | None = None
    warnings: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def healthy(self) -> bool:
        return self.error is None


class HealthReport(BaseModel):
    """`sshexec check --json`, and GET /api/workers (with the age of the check)."""

    healthy: bool
    workers: list[WorkerHealth]
    checked_at: float | None = Field(default=None, description="when the check ran (the server caches it)")
    age: float | None = Field(default=None, description="seconds since the check ran")


class TokenView(BaseModel):
    name: str
    role: str
    created: float


class NodeView(BaseModel):
    """A server node of the cluster (store/cluster.py)."""

    name: str
    host: str | None = None
    pid: int | None = None
    url: str | None = None
    task_cap: int
    started: float
    last_seen: float
    draining: bool
    state: str = Field(description="up, stopped (it stopped cleanly) or lost (it stopped checking in)")
    version: str | None = None
    running: int = Field(description="its runs running now")
    maintenance: bool = Field(description="it holds the cluster's maintenance lease (retention)")


class ScheduleRequest(BaseModel):
    """A schedule: a runbook of the servers' --runbooks directory, queued at each tick of a cron expression (UTC)."""

    name: str = Field(examples=["nightly"])
    cron: str = Field(examples=["*/5 * * * *"], description="5 fields (minute hour day month weekday), or 6 with seconds last")
    runbook: str = Field(examples=["demo"])
    vars: dict[str, str] = Field(default_factory=dict)


class ScheduleView(BaseModel):
    name: str
    cron: str
    runbook: str
    variables: dict[str, str]
    created: float
    created_by: str | None = None
    last_tick: float | None = None
    next_tick: float


class AuditView(BaseModel):
    """One entry of the audit trail (store/audit.py): `sshexec audit --json`, GET /api/audit."""

    id: int
    at: float = Field(description="Unix time")
    who: str = Field(description="token:NAME (the server), or the local user (the command line)")
    source: str = Field(description="from where: http ADDRESS, or cli HOST pid N")
    action: str
    target: str | None = None
    detail: dict = Field(default_factory=dict, description="names and counts; never a secret")


class AuditList(BaseModel):
    entries: list[AuditView]
