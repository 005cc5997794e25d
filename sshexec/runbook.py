"""The runbook: named steps, each a script run in a container on a pool's workers (SPEC §2)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from .command import Secret
from .errors import InputError
from .inventory import Inventory
from .protocol import SET_NAME
from .yamlfile import line_of, read_yaml, unique_names, validate

StepName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", max_length=40)]
PoolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63)]
FeedName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=63)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]

MAX_SCRIPT_BYTES = 1 << 20
# A lock's name is a directory name on every worker (sshexec/locks.py): no "/", no leading dot.
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


class StepSpec(_Strict):
    name: StepName
    pool: PoolName
    target: Literal["any", "each"] = "any"
    container: ContainerSpec
    script: ScriptSpec
    files: str | None = None
    timeout: int = Field(default=3600, ge=1, le=MAX_TIMEOUT)
    lock: str | None = None

    _lock = field_validator("lock")(check_lock_name)


class SensitiveSource(_Strict):
    env: EnvName


Scalar = str | int | float | bool


class RunbookFile(_Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,200}$")]
    variables: dict[str, Scalar] = {}
    sensitive_variables: dict[str, SensitiveSource] = {}
    steps: list[StepSpec] = Field(min_length=1)
    lock: str | None = None

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
    lock: str | None = None  # taken on the step's workers while it runs


@dataclass(frozen=True)
class Runbook:
    path: Path
    name: str
    variables: dict[str, str]
    sensitive: dict[str, str]  # name -> environment variable it comes from
    steps: tuple[Step, ...]
    lock: str | None = None  # taken on every worker the run may touch, for the whole run

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise InputError(f"no step named {name!r} in {self.path}")


def load_runbook(path: str | os.PathLike) -> Runbook:
    """Read and validate a runbook. Raises InputError naming file, line and field."""
    file = Path(path)
    data = read_yaml(file, "runbook")
    spec = validate(RunbookFile, data, file, "runbook")
    unique_names(data, "steps", file, "step")
    base = file.resolve().parent
    both = set(spec.variables) & set(spec.sensitive_variables)
    if both:
        name = sorted(both)[0]
        raise InputError(f"{name} is both a plain and a sensitive variable", file=file, line=line_of(data, ("sensitive_variables", name)), field=f"sensitive_variables.{name}")
    step_names = {s.name for s in spec.steps}
    for name in list(spec.variables) + list(spec.sensitive_variables):
        prefix = re.split(r"[.\[]", name, maxsplit=1)[0]
        if prefix in step_names and name != prefix:
            raise InputError(f"variable {name} would hide an output of step {prefix}", file=file, field=name, hint="rename the variable")
    steps = []
    for i, s in enumerate(spec.steps):
        where = ("steps", i)
        if s.script.file is not None:
            script_path = base / os.path.expanduser(s.script.file)
            try:
                if not script_path.is_file():
                    raise FileNotFoundError
                if script_path.stat().st_size > MAX_SCRIPT_BYTES:
                    raise InputError("the script file is larger than 1 MiB", file=file, line=line_of(data, where + ("script", "file")), field=f"steps[{s.name}].script.file")
                script = script_path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                raise InputError(f"script file {script_path} not found", file=file, line=line_of(data, where + ("script", "file")), field=f"steps[{s.name}].script.file", hint="script.file is relative to the runbook file") from None
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read script file {script_path}: {getattr(exc, 'strerror', None) or exc}", file=file, line=line_of(data, where + ("script", "file")), field=f"steps[{s.name}].script.file") from None
        else:
            script = s.script.inline.encode()
        files = None
        if s.files is not None:
            try:
                files = (base / os.path.expanduser(s.files)).resolve()
                is_dir = files.is_dir()
            except (OSError, ValueError) as exc:
                raise InputError(f"bad files directory: {exc}", file=file, line=line_of(data, where + ("files",)), field=f"steps[{s.name}].files") from None
            if not is_dir:
                raise InputError(f"files directory {files} not found", file=file, line=line_of(data, where + ("files",)), field=f"steps[{s.name}].files", hint="files: is a directory relative to the runbook file")
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
                timeout=s.timeout,
                line=line_of(data, where),
                lock=s.lock,
            )
        )
    return Runbook(
        path=file,
        name=spec.name,
        variables={k: _text(v) for k, v in spec.variables.items()},
        sensitive={k: v.env for k, v in spec.sensitive_variables.items()},
        steps=tuple(steps),
        lock=spec.lock,
    )


def check_against(runbook: Runbook, inventory: Inventory) -> None:
    """Every pool and feed a step names must exist in the inventory."""
    data = read_yaml(runbook.path, "runbook")
    for i, step in enumerate(runbook.steps):
        if step.pool not in inventory.pools:
            known = ", ".join(sorted(inventory.pools)) or "none"
            raise InputError(
                f"unknown pool {step.pool!r}: no worker of {inventory.path} is in it",
                file=runbook.path, line=line_of(data, ("steps", i, "pool")), field=f"steps[{step.name}].pool",
                hint=f"pools in the inventory: {known}",
            )  # fmt: skip
        if step.feed is not None and step.feed not in {f.name for f in inventory.feeds}:
            known = ", ".join(f.name for f in inventory.feeds) or "none"
            raise InputError(
                f"unknown feed {step.feed!r}",
                file=runbook.path, line=line_of(data, ("steps", i, "container", "feed")), field=f"steps[{step.name}].container.feed",
                hint=f"feeds in the inventory: {known}",
            )  # fmt: skip


def parse_vars(pairs: list[str] | tuple[str, ...], runbook: Runbook) -> dict[str, str]:
    """--var NAME=VALUE arguments, checked against the runbook."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--var {name!r} needs a value: --var NAME=VALUE")
        if not SET_NAME.fullmatch(name):
            raise InputError(f"--var {name!r}: bad variable name (letters, digits, _ . -, not starting with a digit)")
        if name in runbook.sensitive:
            raise InputError(f"--var {name}: {name} is sensitive; set it through ${runbook.sensitive[name]} instead, so it stays off the command line")
        if "\0" in value:
            raise InputError(f"--var {name}: the value contains a NUL byte")
        out[name] = value
    return out


def sensitive_values(runbook: Runbook, environ=os.environ) -> dict[str, Secret]:
    """The sensitive variables' values from the operator's environment; InputError naming a missing one."""
    out = {}
    for name, env in runbook.sensitive.items():
        value = environ.get(env)
        if value is None:
            raise InputError(
                f"sensitive variable {name} comes from the environment variable {env}, which is not set",
                file=runbook.path, field=f"sensitive_variables.{name}",
                hint=f"export {env}=... before running sshexec",
            )  # fmt: skip
        if "\0" in value:
            raise InputError(f"${env} contains a NUL byte", field=f"sensitive_variables.{name}")
        out[name] = Secret(value)
    return out
