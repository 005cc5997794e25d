"""Load a YAML file into a pydantic model, mapping every error to file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InputError

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


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; InputError (with the line) if it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file not found", file=path, hint=f"check the path of the {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the {what} file: {exc}", file=path) from None
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


def _message(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the format in the README)"
    if kind == "missing":
        return "this field is required"
    msg = err.get("msg", "invalid value")
    return msg.removeprefix("Value error, ")


def validate(model: type[M], data: Any, path: Path, what: str) -> M:
    """model.model_validate(data), with the first error turned into an InputError."""
    if data is None:
        raise InputError(f"the {what} file is empty", file=path)
    if not isinstance(data, dict):
        raise InputError(f"the {what} must be a YAML mapping at the top level", file=path, line=1)
    try:
        return model.model_validate(data, context={"path": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Unions add their member's name to loc; drop the parts that are not in the data.
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
        loc = tuple(clean)
        count = len(exc.errors())
        more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
        raise InputError(
            _message(err) + more,
            file=path,
            line=line_of(data, loc),
            field=field_name(data, loc) or None,
        ) from None


def unique_names(data: Any, key: str, path: Path, what: str) -> None:
    """InputError at the second item of data[key] whose `name` repeats an earlier one."""
    seen: set = set()
    for i, item in enumerate(data.get(key) or ()):
        name = item.get("name") if isinstance(item, dict) else None
        if name in seen:
            raise InputError(
                f"duplicate {what} name {name!r}: {what} names must be unique",
                file=path,
                line=line_of(data, (key, i, "name")),
                field=f"{key}[{name}].name",
            )
        seen.add(name)
