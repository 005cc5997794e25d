"""Who may set a variable: the runbook declares them, the outside (--var, a request, a retry) only overrides.

- A value from outside (`--var`, the API's `vars`, the values a `--retry-failed`
  reuses) may only override a name the runbook declares under `variables:`.
  Anything else is bad input naming it, with the nearest declared name.
- Loader names (LOADER_NAMES) change what code an interpreter, the shell, the
  dynamic linker or git loads or runs before or beneath the script's own code
  (PYTHONPATH, NODE_OPTIONS, LD_PRELOAD, BASH_ENV, GIT_*...). A runbook declares
  one only if it also lists it under `loader_variables:`; then the runbook's own
  value is exported, and nothing from outside may ever set it. The executor
  (executor/run.sh, whose list must match this one) exports a loader name only
  when sshexec's header allows it (step/protocol.py).
"""

from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterable, Protocol

from ..errors import InputError, Problem


class Runbook(Protocol):
    """What this module reads of a runbook (config/runbook.py's Runbook)."""

    path: Path
    name: str
    variables: dict[str, str]
    sensitive: dict[str, str]


SET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")  # an output or variable name; always fullmatch

# Patterns (fnmatch, case-sensitive). The line drawn: what runs or loads code named by
# the value without the script asking for it (startup files and hooks, module search
# paths, preloads, tool hooks). Settings a script uses on purpose (PIP_INDEX_URL, npm
# config) are the script's business. executor/run.sh holds the same list.
LOADER_NAMES: tuple[str, ...] = (
    # sh, bash, dash, busybox: a file read at start, options, a trace prompt that runs $(...)
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4",
    # the dynamic linker, glibc's iconv modules
    "LD_*", "GCONV_PATH",
    # Python: every PYTHON* but the few in HARMLESS
    "PYTHON*",
    # Node.js, Perl, Ruby, Java, Lua, PHP, Tcl, R, .NET
    "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
    "PERL5LIB", "PERL5OPT", "PERLLIB", "PERL5DB",
    "RUBYOPT", "RUBYLIB", "GEM_HOME", "GEM_PATH", "BUNDLE_GEMFILE",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    "LUA_INIT*", "LUA_PATH*", "LUA_CPATH*",
    "PHPRC", "PHP_INI_SCAN_DIR",
    "TCLLIBPATH",
    "R_PROFILE*", "R_ENVIRON*", "R_LIBS*",
    "DOTNET_STARTUP_HOOKS", "DOTNET_ADDITIONAL_DEPS", "CORECLR_PROFILER*",
    # OpenSSL loads engines and providers named by its configuration
    "OPENSSL_CONF", "OPENSSL_ENGINES", "OPENSSL_MODULES",
    # git: GIT_SSH_COMMAND, GIT_CONFIG_*, GIT_EXEC_PATH, GIT_ASKPASS... each runs a program
    "GIT_*",
)  # fmt: skip
# PYTHON* names that only tune the interpreter: exported like any variable.
HARMLESS: frozenset[str] = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONHASHSEED", "PYTHONFAULTHANDLER", "PYTHONNOUSERSITE", "PYTHONSAFEPATH"}
)
OPT_IN = "loader_variables"


def is_loader(name: str) -> bool:
    """True if `name` changes how code is loaded (LOADER_NAMES, HARMLESS aside)."""
    return name not in HARMLESS and any(fnmatchcase(name, p) for p in LOADER_NAMES)


def declared_problems(variables: Iterable[str], sensitive: Iterable[str], opted: Iterable[str], where) -> list[Problem]:
    """What is wrong with a runbook's loader names. `where(key, name)` gives (file, line) of a key's entry."""
    declared = {**{n: "variables" for n in variables}, **{n: "sensitive_variables" for n in sensitive}}
    opted = list(opted)
    problems = []
    for name, key in declared.items():
        if is_loader(name) and name not in opted:
            problems.append(Problem(
                f"{name} changes what code the step's interpreter, shell or tools load", *where(key, name), f"{key}.{name}",
                hint=f"if the runbook means it, list it under {OPT_IN}: (then only the runbook's own value is used; --var and requests can never set it)",
            ))  # fmt: skip
    for name in opted:
        if name not in declared:
            problems.append(Problem(f"{name} is listed under {OPT_IN}: but not declared", *where(OPT_IN, name), OPT_IN, hint="declare it under variables: too"))
        elif not is_loader(name):
            problems.append(Problem(f"{name} does not change how code is loaded: it needs no entry here", *where(OPT_IN, name), OPT_IN, hint=f"remove it from {OPT_IN}:"))
    return problems


def outside_problems(names: Iterable[str], runbook: Runbook, field: str) -> list[Problem]:
    """Why each name of `names`, set from outside the runbook, may not be. `field` is how a name is shown: "--var {}"."""
    problems = []
    settable = sorted(n for n in runbook.variables if not is_loader(n))
    for name in names:
        shown = field.format(name)
        if name in runbook.sensitive:
            continue  # the callers say where a sensitive value comes from instead
        if name not in runbook.variables:
            close = difflib.get_close_matches(name, settable, n=1, cutoff=0.6)
            listed = ", ".join(settable[:12]) + (f" and {len(settable) - 12} more" if len(settable) > 12 else "")
            hint = (f"did you mean {close[0]}? " if close else "") + (f"It declares {listed}. " if settable else "It declares none. ")
            problems.append(Problem(
                f"{name} is not a variable of runbook {runbook.name!r}: only the names under its variables: may be set from outside",
                field=shown, hint=hint + "To add one, declare it under variables: with a default.",
            ))  # fmt: skip
        elif is_loader(name):
            problems.append(Problem(
                f"{name} changes what code the step loads: only the runbook sets it, never a value from outside", field=shown,
                hint=f"change its value in the runbook ({OPT_IN}: lists it)",
            ))  # fmt: skip
    return problems


def outside_values(values: dict[str, str], runbook: Runbook, field: str, *, file: Path | None = None) -> dict[str, str]:
    """`values` set from outside the runbook (`field` shows a name: "--var {}", "vars.{}"), checked; InputError naming every bad one."""
    problems = []
    for name, value in values.items():
        shown = field.format(name)
        if not isinstance(name, str) or not SET_NAME.fullmatch(name):
            problems.append(Problem("bad variable name (letters, digits, _ . -, not starting with a digit)", field=shown))
        elif "\0" in value:
            problems.append(Problem("the value contains a NUL byte", field=shown))
    problems += outside_problems([n for n in values if SET_NAME.fullmatch(n)], runbook, field)
    if problems:
        raise InputError(problems=[Problem(p.message, file, None, p.field, p.hint) for p in problems])
    return dict(values)


def parse_vars(pairs: list[str] | tuple[str, ...], runbook: Runbook) -> dict[str, str]:
    """--var NAME=VALUE arguments, checked against the runbook: each NAME must be one of its `variables:`."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--var {name!r} needs a value: --var NAME=VALUE")
        if name in runbook.sensitive:
            raise InputError(f"--var {name}: {name} is sensitive; set it through ${runbook.sensitive[name]} instead, so it stays off the command line")
        out[name] = value
    return outside_values(out, runbook, "--var {}", file=runbook.path)
