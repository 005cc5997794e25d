"""Load a YAML file into a pydantic model, mapping every error to file, line and field.

Every problem of a file is reported at once (`validate` collects them; the
loaders add theirs with `raise_problems`), each with file:line:field, and an
unknown key names the nearest valid one.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import re
import types
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import InputError, Problem

M = TypeVar("M", bound=BaseModel)


class _Mapping(dict):
    """A dict that remembers the line of each key (1-based)."""

    lines: dict
    line: int


class _Sequence(list):
    lines: list
    line: int


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember where they came from."""

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        result = _Mapping()
        result.lines = {}
        result.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            # YAML 1.1 reads a plain `on:` (yes, no, off...) as a boolean; as a key it is the word
            # (retries' `on:`), and no key of sshexec's files is a boolean.
            if key_node.tag == "tag:yaml.org,2002:bool":
                key = key_node.value
            else:
                key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            if key in result:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node, deep=False):
        result = _Sequence(self.construct_object(child, deep=True) for child in node.value)
        result.lines = [child.start_mark.line + 1 for child in node.value]
        result.line = node.start_mark.line + 1
        return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_sequence)


# Parsed files kept by a process that runs one command after another (the agent's reusable children,
# `keep_parsed`): by resolved path, kept while the SHA-256 of the bytes is the same. The bytes are read
# and hashed every time (a stat would miss an edit that keeps mtime and size); only the parse is saved
# (pure-Python PyYAML with line numbers: ~10-30 ms a file).
_parsed: dict[str, tuple[bytes, Any]] = {}
_keep = False
KEEP_FILES = 32


def keep_parsed() -> None:
    global _keep
    _keep = True


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; InputError (with the line) if it cannot be read or parsed."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file not found", file=path, hint=f"check the path of the {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the {what} file: {exc}", file=path) from None
    if not _keep:
        return _parse(text, path)
    try:
        where = str(path.resolve())
    except OSError:
        return _parse(text, path)
    stamp = hashlib.sha256(raw).digest()
    kept = _parsed.get(where)
    if kept is None or kept[0] != stamp:
        kept = (stamp, _parse(text, path))
        if len(_parsed) >= KEEP_FILES:
            _parsed.pop(next(iter(_parsed)))
        _parsed[where] = kept
    return _copy(kept[1])


def forget_parsed_holding(secrets: list[bytearray]) -> None:
    """Drop the kept parses that hold any of `secrets` (a runbook may spell a value out): they are about to be
    wiped from memory (agent/scrub.py), and a kept object must not be changed under its next reader."""
    if not secrets:
        return
    for where in [w for w, (_stamp, data) in _parsed.items() if _holds(data, secrets)]:
        del _parsed[where]


def _holds(node: Any, secrets: list[bytearray]) -> bool:
    if isinstance(node, dict):
        return any(_holds(k, secrets) or _holds(v, secrets) for k, v in node.items())
    if isinstance(node, (list, tuple, set)):
        return any(_holds(v, secrets) for v in node)
    if isinstance(node, str):
        raw = node.encode("utf-8", "surrogateescape")
        return any(s in raw for s in secrets)
    return False


def _copy(node: Any) -> Any:
    """A copy of parsed YAML, line numbers kept: the caller may change what it gets."""
    if isinstance(node, _Mapping):
        out = _Mapping((k, _copy(v)) for k, v in node.items())
        out.lines, out.line = dict(node.lines), node.line
        return out
    if isinstance(node, _Sequence):
        seq = _Sequence(_copy(v) for v in node)
        seq.lines, seq.line = list(node.lines), node.line
        return seq
    if isinstance(node, (dict, list, set)):  # plain containers (YAML sets, merged keys): deep-copied as they are
        return copy.deepcopy(node)
    return node


def _parse(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"invalid YAML: {problem}", file=path, line=line) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", file=path) from None
    except RecursionError:
        raise InputError("invalid YAML: nested too deeply", file=path) from None


def line_of(data: Any, loc: tuple) -> int | None:
    """The line of the deepest node of `loc` that exists in `data`."""
    line = getattr(data, "line", None)
    node = data
    for part in loc:
        if isinstance(node, _Mapping) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, _Sequence) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lines[part]
            node = node[part]
        else:
            break
    return line


def field_name(data: Any, loc: tuple) -> str:
    """A readable dotted path for `loc`, naming list items by their `name` when they have one."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and 0 <= part < len(node) and isinstance(node[part], dict) else None
            parts.append(f"[{name}]" if isinstance(name, str) else f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return "".join(parts)


def _members(tp: Any) -> list:
    """The types an annotation allows: Optional, unions and Annotated unwrapped."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _by_key(model: type[BaseModel]) -> dict:
    """A model's fields by the key a file writes them with (its alias, like `if`, else its name)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the models at `loc` (a path in the data) accept; [] where no model is."""
    found: list = [model]
    for part in loc:
        below: list = []
        for t in (m for tp in found for m in _members(tp)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                if isinstance(part, str) and part in _by_key(t):
                    below.append(_by_key(t)[part].annotation)
            elif get_origin(t) is list and isinstance(part, int):
                below.append(get_args(t)[0])
            elif get_origin(t) is dict and get_args(t):
                below.append(get_args(t)[1])
        found = below
    keys: list[str] = []
    for t in (m for tp in found for m in _members(tp)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            keys += [k for k in _by_key(t) if k not in keys]
    return keys


def unknown_key(key: Any, valid: list[str]) -> str:
    """What to say about an unknown key: the nearest valid key if one is close, else the valid ones."""
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key: did you mean {close[0]!r}?"
    if valid:
        return "unknown key: the keys here are " + ", ".join(valid)
    return "unknown key (see the format in the README)"


# Whole numbers whose key does not say what they count.
_WHOLE = {"port": "a port is a whole number from 1 to 65535", "attempts": "attempts is a whole number", "max_steps": "max_steps is a whole number"}


# What each name pattern of the inventory and the runbook allows, in words.
_PATTERNS = {
    r"^[a-z0-9][a-z0-9_.-]*$": "lowercase letters, digits and _ . -, starting with a letter or digit",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*$": "letters, digits and _ . -, starting with a letter or digit",
    r"^[A-Za-z0-9_-]+$": "letters, digits, _ and -",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "letters, digits and _, not starting with a digit",
    r"^[A-Za-z0-9_][A-Za-z0-9_.:%\[\]-]*$": "a host name, an IP address or an ~/.ssh/config alias (letters, digits and _ . : % [ ] -)",
    r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$": "letters, digits and _ . -, starting with a letter or _",
    r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?$": "a registry address: host or host:port",
    r"^[^\s:]+$": "no spaces and no ':'",
    r"^[^\x00-\x1f\x7f]{1,200}$": "1 to 200 characters, no control characters",
}


def _pattern_words(value: Any, pattern: str) -> str:
    words = _PATTERNS.get(pattern)
    if words is None:
        return f"{value!r} is not allowed here"
    fixed = str(value).lower()
    if fixed != value and re.fullmatch(pattern, fixed):
        return f"{value!r} is not allowed: did you mean {fixed!r}? (it may hold only {words})"
    return f"{value!r} is not allowed: it may hold only {words}"


def one_of(value: Any, valid: list[str]) -> str:
    """A value that is not one of `valid`: the nearest if one is close, and the valid ones."""
    close = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.6)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown value {value!r}: {guess}use one of {', '.join(valid)}"


def _message(err: dict, model: type[BaseModel], loc: tuple) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden" and loc:
        return unknown_key(loc[-1], _keys_at(model, loc[:-1]))
    if kind == "missing":
        return "this field is required"
    if kind == "literal_error":
        return one_of(err.get("input"), re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", ""))))
    if kind == "string_pattern_mismatch":
        return _pattern_words(err.get("input"), str((err.get("ctx") or {}).get("pattern", "")))
    if kind in ("int_parsing", "int_type", "int_from_float") and loc and str(loc[-1]) in _WHOLE:
        return f"{_WHOLE[str(loc[-1])]}, not {err.get('input')!r}"
    msg = err.get("msg", "invalid value")
    return msg.removeprefix("Value error, ")


def _data_loc(err: dict, data: Any) -> tuple:
    """The error's location as a path in the data.

    Pydantic adds validator and union-member names to `loc`; those are not in
    the data and are dropped. A missing or unknown key is kept as the last part.
    """
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    clean: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int):
            clean.append(part)
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
        elif err.get("type") in ("missing", "extra_forbidden") and part == loc[-1]:
            clean.append(part)
    return tuple(clean)


def problems_of(exc: ValidationError, model: type[BaseModel], data: Any, path: Path) -> list[Problem]:
    """Every error of a validation as a Problem with file, line and field; one per place in the data.

    A value that fits no member of a union gets an error per member: the first says it.
    """
    out: dict[tuple, Problem] = {}
    errors = exc.errors()
    # A typo says it once: "hots: unknown key: did you mean 'host'?", not also "host: required".
    meant = set()
    for err in errors:
        loc = _data_loc(err, data)
        if err.get("type") == "extra_forbidden" and loc:
            close = difflib.get_close_matches(str(loc[-1]), _keys_at(model, loc[:-1]), n=1, cutoff=0.6)
            meant |= {tuple(map(str, loc[:-1] + (close[0],)))} if close else set()
    for err in errors:
        loc = _data_loc(err, data)
        key = tuple(map(str, loc))  # 0 and "0" are different places only for pydantic
        if err.get("type") == "missing" and key in meant:
            continue
        if key not in out:
            out[key] = Problem(_message(err, model, loc), file=path, line=line_of(data, loc), field=field_name(data, loc) or None)
    return list(out.values())


def in_file_order(problems: list[Problem]) -> list[Problem]:
    """Problems sorted by line (stable; those without a line last)."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def raise_problems(problems: list[Problem]) -> None:
    """InputError listing every problem, if there is any."""
    if problems:
        raise InputError(problems=problems)


def validate(model: type[M], data: Any, path: Path, what: str, *, unique: dict[str, str] | None = None) -> M:
    """model.model_validate(data); InputError listing every problem, with file, line and field.

    `unique` maps a list's key to what its items are ({"steps": "step"}): a
    repeated `name` there is one more problem.
    """
    if data is None:
        raise InputError(f"the {what} file is empty", file=path)
    if not isinstance(data, dict):
        raise InputError(f"the {what} must be a YAML mapping at the top level", file=path, line=1)
    problems = [p for key, item in (unique or {}).items() for p in duplicate_names(data, key, path, item)]
    try:
        spec = model.model_validate(data, context={"path": path})
    except ValidationError as exc:
        problems += problems_of(exc, model, data, path)
    raise_problems(in_file_order(problems))
    return spec


def duplicate_names(data: Any, key: str, path: Path, what: str) -> list[Problem]:
    """A problem at each item of data[key] whose `name` repeats an earlier one."""
    seen: set = set()
    out = []
    items = data.get(key) if isinstance(data, dict) else None
    for i, item in enumerate(items if isinstance(items, list) else ()):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, (str, int, float, bool)):
            continue
        if name in seen:
            out.append(Problem(
                f"duplicate {what} name {name!r}: {what} names must be unique",
                file=path, line=line_of(data, (key, i, "name")), field=f"{key}[{name}].name",
            ))  # fmt: skip
        seen.add(name)
    return out
