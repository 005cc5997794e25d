"""The runbook: named steps, each a script run in a container on a pool's workers (SPEC §2)."""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from ..core.duration import parse_duration
from ..core.secrets import MIN_SECRET, SHORT_SECRET_HINT, Secret, secret_from_env, short_secret
from ..errors import InputError, Problem
from ._yaml import in_file_order, line_of, raise_problems, read_yaml, validate
from .inventory import Inventory
from .references import MAX_SCRIPT_BYTES, files_of, inventory_problems, references, script_of
from .release import Retries, Rolling, Share, parse_share
from .variables import OPT_IN, SET_NAME, declared_problems, parse_vars  # noqa: F401 - SET_NAME, parse_vars: imported from here too

StepName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", max_length=40)]
PoolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63)]
FeedName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=63)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]

# A lock's name is a directory name on every worker (sshexec/worker/locks.py): no "/", no leading dot.
LOCK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_lock_name(value: str | None) -> str | None:
    if value is None:
        return value
    if not isinstance(value, str) or not LOCK_NAME.fullmatch(value):
        why = " ('/' would make it a path on the worker)" if isinstance(value, str) and "/" in value else ""
        raise ValueError(f"bad lock name {value!r}{why}: use 1 to 64 letters, digits, _ . - starting with a letter or digit")
    return value
MAX_TIMEOUT = 7 * 24 * 3600

# The docker reference grammar (distribution/reference), anchored.
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)


def check_image_reference(ref: str) -> str:
    m = IMAGE_REFERENCE.fullmatch(ref)
    if not m or len(ref) > 512:
        raise ValueError(f"{ref!r} is not a valid image reference (like registry:5000/team/image:tag)")
    domain = m.group("domain")
    if domain and not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
        # "team/image": the first part is a path component, not a registry; the regex allowed it as one.
        if not re.fullmatch(_PATH_COMPONENT, domain):
            raise ValueError(f"{ref!r} is not a valid image reference (repository names are lowercase)")
    if len(m.group("path")) > 255:
        raise ValueError("the repository name is longer than 255 characters")
    return ref


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContainerSpec(_Strict):
    image: str
    feed: FeedName | None = None
    pull: Literal["always", "if-not-present", "never"] = "if-not-present"
    user: Literal["image", "worker"] = "image"

    _image = field_validator("image")(classmethod(lambda cls, v: check_image_reference(v)))


class ScriptSpec(_Strict):
    syntax: Literal["bash", "sh", "python"]
    inline: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.inline is None) == (self.file is None):
            raise ValueError("give exactly one of inline: or file:")
        if self.inline is not None and len(self.inline.encode()) > MAX_SCRIPT_BYTES:
            raise ValueError("the inline script is larger than 1 MiB: put it in a file under files:")
        return self


# N or "P%" (config/release.py says how each rounds).
BatchSize = Annotated[Any, BeforeValidator(lambda v: parse_share(v, minimum=1))]
FailureLimit = Annotated[Any, BeforeValidator(lambda v: parse_share(v, minimum=0))]


def duration(what: str, minimum: float, maximum: float):
    """A time in the runbook: seconds, or 90s, 5m, 1h (core/duration.py)."""
    return Annotated[float, BeforeValidator(lambda v: parse_duration(v, what, minimum=minimum, maximum=maximum))]


class RollingSpec(_Strict):
    batch: BatchSize = None
    max_failures: FailureLimit = Share(count=0)
    pause: duration("pause", 0, MAX_TIMEOUT) = 0.0
    order: Literal["inventory", "random"] = "inventory"


class RetriesSpec(_Strict):
    attempts: int = Field(ge=1, le=100)
    delay: duration("delay", 0, 3600) = 5.0
    backoff: float = Field(default=2.0, ge=1, le=10)
    on: Literal["infrastructure", "any"] = "infrastructure"


class ApprovalSpec(_Strict):
    """A step that waits for a person's decision: no container, no worker (run/approval.py)."""

    message: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    role: Literal["operator", "admin"] = "operator"  # the server's role a decider needs (a viewer never decides)
    timeout: duration("approval timeout", 1, 30 * 86400) = 3600


class StepSpec(_Strict):
    name: StepName
    pool: PoolName | None = None
    target: Literal["any", "each"] = "any"
    container: ContainerSpec | None = None
    script: ScriptSpec | None = None
    approval: ApprovalSpec | None = None
    files: str | None = None
    timeout: duration("timeout", 1, MAX_TIMEOUT) = 3600
    condition: Literal["success", "failure", "always"] = Field(default="success", alias="if")
    rolling: RollingSpec | None = None
    retries: RetriesSpec | None = None
    lock: str | None = None

    _lock = field_validator("lock")(check_lock_name)

    @model_validator(mode="after")
    def _kind(self):
        if self.approval is not None:
            extra = [k for k in ("pool", "container", "script", "files", "rolling", "retries", "lock") if getattr(self, k) is not None]
            if extra or self.target != "any":
                raise ValueError(f"an approval: step runs nothing on a worker: remove {', '.join(extra or ['target'])}")
        else:
            missing = [k for k in ("pool", "container", "script") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a step needs {', '.join(k + ':' for k in missing)} (or approval: instead of pool, container and script)")
        return self


class SensitiveSource(_Strict):
    env: EnvName


Scalar = str | int | float | bool


class RunbookFile(_Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,200}$")]
    variables: dict[str, Scalar] = {}
    sensitive_variables: dict[str, SensitiveSource] = {}
    loader_variables: list[EnvName] = []  # config/variables.py: the loader names this runbook means to set
    steps: list[StepSpec] = Field(min_length=1)
    lock: str | None = None
    # A server node lost mid-run: its runs are interrupted (never re-run behind anyone's back), or, for a
    # runbook safe to re-run from its failed step, queued again as a retry of the interrupted run.
    on_node_loss: Literal["interrupt", "requeue"] = "interrupt"
    mixed_digests: Literal["refuse", "allow"] = "refuse"  # may a tag be another image on another worker within one run?

    _lock = field_validator("lock")(check_lock_name)

    @field_validator("variables", "sensitive_variables")
    @classmethod
    def _names(cls, value):
        for name in value:
            if not isinstance(name, str) or not SET_NAME.fullmatch(name):
                raise ValueError(f"bad variable name {name!r}: use letters, digits, _ . - (not starting with a digit)")
        return value

    @field_validator("variables")
    @classmethod
    def _values(cls, value):
        for name, v in value.items():
            if isinstance(v, str) and "\0" in v:
                raise ValueError(f"variable {name} contains a NUL byte")
        return value


def _text(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass(frozen=True)
class Step:
    name: str
    pool: str
    target: str
    image: str
    feed: str | None
    pull: str
    user: str
    syntax: str
    script: bytes
    files: Path | None
    timeout: int
    line: int | None = None
    condition: str = "success"  # `if:`: success | failure | always
    rolling: Rolling | None = None  # only with target: each
    retries: Retries | None = None
    lock: str | None = None  # taken on the step's workers while it runs
    approval: Approval | None = None  # an approval step: no pool, container or script (run/approval.py)


@dataclass(frozen=True)
class Approval:
    message: str
    role: str
    timeout: float


@dataclass(frozen=True)
class Runbook:
    path: Path
    name: str
    variables: dict[str, str]
    sensitive: dict[str, str]  # name -> environment variable it comes from
    steps: tuple[Step, ...]
    digest: str = ""  # sha256 of the runbook file: --retry-failed refuses a changed runbook
    lock: str | None = None  # taken on every worker the run may touch, for the whole run
    loaders: frozenset[str] = frozenset()  # loader_variables: loader names exported with the runbook's own value
    on_node_loss: str = "interrupt"  # interrupt | requeue (store/cluster.py)
    mixed_digests: str = "refuse"  # refuse: a tag runs as one digest in a run (step/execute.py); allow: as each worker has it

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise InputError(f"no step named {name!r} in {self.path}")


def load_runbook(path: str | os.PathLike, inventory: Inventory | None = None) -> Runbook:
    """Read and validate a runbook. Raises InputError listing every problem with file, line and field.

    Every problem in one pass: the structure, the files it names, and, with `inventory`,
    the pools and feeds it names (check_against), so that fixing one round does not reveal
    the next.
    """
    file = Path(path)
    data = read_yaml(file, "runbook")
    base = file.resolve().parent
    try:
        spec = validate(RunbookFile, data, file, "runbook", unique={"steps": "step"})
        problems: list[Problem] = []
    except InputError as exc:
        if not isinstance(data, dict):
            raise
        spec, problems = None, list(exc.problems)
    # The references, from the data as written: they are checked even when its structure is not right.
    said = {p.field for p in problems}
    problems += [p for p in references(data, base, file, inventory) if p.field not in said]
    if spec is None:
        raise_problems(in_file_order(problems))
    for name in sorted(set(spec.variables) & set(spec.sensitive_variables)):
        problems.append(Problem(f"{name} is both a plain and a sensitive variable", file, line_of(data, ("sensitive_variables", name)), f"sensitive_variables.{name}"))

    def entry_at(key: str, name: str) -> tuple[Path, int | None]:
        at = (key, spec.loader_variables.index(name)) if key == OPT_IN else (key, name)
        return file, line_of(data, at)

    problems += declared_problems(spec.variables, spec.sensitive_variables, spec.loader_variables, entry_at)
    step_names = {s.name for s in spec.steps}
    for key in ("variables", "sensitive_variables"):
        for name in getattr(spec, key):
            prefix = re.split(r"[.\[]", name, maxsplit=1)[0]
            if prefix in step_names and name != prefix:
                problems.append(Problem(f"variable {name} would hide an output of step {prefix}", file, line_of(data, (key, name)), f"{key}.{name}", hint="rename the variable"))
    steps = []
    for i, s in enumerate(spec.steps):
        where = ("steps", i)
        if s.rolling is not None and s.target != "each":
            problems.append(Problem(
                "rolling: needs target: each (a target: any step runs on one worker)",
                file, line_of(data, where + ("rolling",)), f"steps[{s.name}].rolling", hint="set target: each, or remove rolling:",
            ))  # fmt: skip
        if s.approval is not None:
            a = s.approval
            steps.append(Step(
                name=s.name, pool="", target="any", image="", feed=None, pull="never", user="image", syntax="", script=b"", files=None,
                timeout=math.ceil(a.timeout), line=line_of(data, where), condition=s.condition, approval=Approval(a.message, a.role, a.timeout),
            ))  # fmt: skip
            continue
        script, _ = script_of(s.script.inline, s.script.file, base, file, None, "")
        files, _ = files_of(s.files, base, file, None, "")  # their problems are among the references'
        steps.append(
            Step(
                name=s.name,
                pool=s.pool,
                target=s.target,
                image=s.container.image,
                feed=s.container.feed,
                pull=s.container.pull,
                user=s.container.user,
                syntax=s.script.syntax,
                script=script,
                files=files,
                timeout=math.ceil(s.timeout),
                line=line_of(data, where),
                condition=s.condition,
                rolling=Rolling(s.rolling.batch, s.rolling.max_failures, s.rolling.pause, s.rolling.order) if s.rolling else None,
                retries=Retries(s.retries.attempts, s.retries.delay, s.retries.backoff, s.retries.on) if s.retries else None,
                lock=s.lock,
            )
        )
    raise_problems(in_file_order(problems))
    return Runbook(
        path=file,
        name=spec.name,
        variables={k: _text(v) for k, v in spec.variables.items()},
        sensitive={k: v.env for k, v in spec.sensitive_variables.items()},
        steps=tuple(steps),
        digest=file_digest(file),
        lock=spec.lock,
        loaders=frozenset(spec.loader_variables),
        on_node_loss=spec.on_node_loss,
        mixed_digests=spec.mixed_digests,
    )


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, as recorded with every run."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"cannot read the runbook file: {exc.strerror or exc}", file=path) from None


def check_against(runbook: Runbook, inventory: Inventory) -> None:
    """Every pool and feed a step names must exist in the inventory; InputError listing each that does not."""
    raise_problems(inventory_problems(read_yaml(runbook.path, "runbook"), runbook.path, inventory))


def sensitive_values(runbook: Runbook, environ=os.environ) -> dict[str, Secret]:
    """The sensitive variables' values from the operator's environment.

    InputError naming every variable that is unset, holds a NUL byte, or is
    shorter than MIN_SECRET characters (core/secrets.py says why); never its value.
    """
    out = {}
    problems = []
    for name, env in runbook.sensitive.items():
        where = {"file": runbook.path, "field": f"sensitive_variables.{name}"}
        value = secret_from_env(env, environ)
        if value is None:
            problems.append(Problem(f"sensitive variable {name} comes from the environment variable {env}, which is not set", hint=f"export {env}=... before running sshexec", **where))
        elif "\0" in value:
            problems.append(Problem(f"${env} contains a NUL byte", **where))
        elif len(value) < MIN_SECRET:
            problems.append(Problem(f"sensitive variable {name}: ${env} {short_secret(value)}", hint=SHORT_SECRET_HINT, **where))
        else:
            out[name] = Secret(value)
    raise_problems(problems)
    return out
