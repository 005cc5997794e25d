"""Whatever an inventory or runbook file holds, loading it gives a model or an InputError (exit 2).

Property tests (hypothesis) over `load_inventory` and `load_runbook`: random
text and bytes, random nested YAML structures, and mutations of valid files.
Any other exception would reach the person as a traceback or an "unexpected
error" with exit 3. Cases parse-* of docs/security.md.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from security_cases import xfail_if_gap

from sshexec.config.inventory import Inventory, load_inventory
from sshexec.config.runbook import Runbook, load_runbook
from sshexec.errors import InputError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = ("inventory", "runbook")

VALID = {
    "inventory": {
        "defaults": {"user": "deploy", "port": 22, "identity_file": "keys/id", "known_hosts": "kh", "docker": "sudo -n docker", "work_root": "~/.sshexec", "connect_timeout": 5},
        "workers": [
            {"name": "w1", "host": "127.0.0.1", "port": 2222, "pools": ["linux", "gpu"]},
            {"name": "w2", "host": "build.example.invalid", "pools": ["linux"], "work_root": "/srv/sx", "user": "ci"},
        ],
        "feeds": [{"name": "lab", "registry": "127.0.0.1:5000", "username": "ci", "password_env": "LAB_PW"}, {"name": "public", "registry": "registry.example.invalid"}],
    },
    "runbook": {
        "name": "demo",
        "variables": {"GREETING": "hello", "N": 3, "F": 1.5, "B": True},
        "sensitive_variables": {"TOKEN": {"env": "API_TOKEN"}},
        "steps": [
            {"name": "build", "pool": "linux", "target": "each", "timeout": 60, "files": "payload",
             "container": {"image": "127.0.0.1:5000/sshexec/tools:1", "feed": "lab", "pull": "always", "user": "worker"},
             "script": {"syntax": "bash", "inline": "echo $GREETING"}},
            {"name": "report", "pool": "linux", "container": {"image": "busybox@sha256:" + "a" * 64}, "script": {"syntax": "sh", "file": "report.sh"}},
        ],
    },
}  # fmt: skip

KEYS = sorted({"defaults", "workers", "feeds", "name", "host", "port", "pools", "user", "identity_file", "known_hosts", "docker",
               "work_root", "connect_timeout", "registry", "username", "password_env", "steps", "variables", "sensitive_variables",
               "env", "pool", "target", "container", "image", "feed", "pull", "script", "syntax", "inline", "file", "files", "timeout"})  # fmt: skip
WORDS = ["w1", "linux", "lab", "127.0.0.1", "127.0.0.1:5000", "deploy", "bash", "sh", "python", "any", "each", "always", "never",
         "image", "worker", "payload", "report.sh", "busybox", "~", "~/x", "/", "..", "../..", "", " ", "a" * 300, "-x", "$(id)",
         "w1\n", "\x00", "é", "*a", "&a", "!!str", "null", "~nobody/x"]  # fmt: skip

# Values that have broken parsers before: NUL, names too long for the file system, huge numbers, wrong types.
NASTY = ["\x00", "a\x00b", "x" * 300, "../" * 50, "~nobody/x", "/dev/null", "/proc/self/fd/0", "", " ", "\n", "w1\n", "-1",
         -1, 0, 2**70, 1e400, float("nan"), True, None, [], {}, [None], {"a": None}, "é✓日本", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300), st.sampled_from(WORDS), st.sampled_from(NASTY),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(-3, 3), st.booleans())
trees = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(keys, kids, max_size=5)), max_leaves=40)
documents = st.one_of(trees, st.dictionaries(st.sampled_from(KEYS), trees, max_size=6))
FRAGMENTS = ["workers:", "steps:", "feeds:", "defaults:", "variables:", "- ", "  ", "    ", "\n", "\t", "name: w1", "host: h", "pools: [linux]",
             "pool: linux", "container: {image: busybox}", "script: {syntax: sh, inline: x}", "{", "}", "[", "]", ": ", ",", "&a ", "*a",
             "<<: *a", "!!python/object/apply:os.system [id]", "? ", "'", '"', "#", "---", "...", "%YAML 1.1", "\\x00", "\ufeff", "é"]  # fmt: skip
yamlish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=60).map("".join)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Where the files under test live, next to what a valid runbook refers to."""
    d = tmp_path_factory.mktemp("parsers")
    (d / "payload").mkdir()
    (d / "payload" / "data.txt").write_text("x")
    (d / "report.sh").write_text("echo report\n")
    return d


def load(kind: str, content: bytes, folder: Path):
    """Load `content` as a `kind` file: the model, or None after an InputError. Anything else is a failure."""
    path = folder / f"{kind}.yaml"
    path.write_bytes(content)
    try:
        model = load_inventory(path) if kind == "inventory" else load_runbook(path)
    except InputError as exc:
        assert exc.exit_code == 2
        assert str(exc) and exc.to_dict()["message"]
        return None
    assert isinstance(model, Inventory if kind == "inventory" else Runbook)
    return model


def dump(data) -> bytes:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass")


def test_the_valid_files_are_valid(folder):
    assert load("inventory", dump(VALID["inventory"]), folder) is not None
    assert load("runbook", dump(VALID["runbook"]), folder) is not None


@SETTINGS
@given(kind=st.sampled_from(KINDS), content=st.one_of(st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=400), yamlish.map(str.encode)))
@example(kind="inventory", content=b"\xff\xfe\x00garbage")
@example(kind="runbook", content=b"name: [unclosed")
@example(kind="inventory", content=b"")
def test_random_text(kind, content, folder):
    load(kind, content, folder)


@SETTINGS
@given(kind=st.sampled_from(KINDS), data=documents)
@example(kind="inventory", data={"workers": [{"name": "w1", "host": "h", 1: 2}]})
@example(kind="runbook", data={"name": "x", "steps": [None, 1, "s", []]})
def test_random_structures(kind, data, folder):
    content = dump(data)
    load(kind, content, folder)


def _paths(node, at=()):
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, at + (i,))


@SETTINGS
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_mutations_of_valid_files(kind, data, folder):
    doc = copy.deepcopy(VALID[kind])
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = list(_paths(doc))
        at = data.draw(st.sampled_from(paths), label="at")
        action = data.draw(st.sampled_from(["replace", "delete", "add", "duplicate", "rename"]), label="action")
        if not at:
            doc = data.draw(documents, label="document") if action == "replace" else doc
            continue
        parent = doc
        for part in at[:-1]:
            parent = parent[part]
        last = at[-1]
        if action == "replace":
            parent[last] = data.draw(trees, label="value")
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(keys, label="key")] = data.draw(trees, label="value")
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(parent[last]))
        elif action == "rename" and isinstance(parent, dict):
            parent[data.draw(keys, label="key")] = parent.pop(last)
    content = dump(doc)
    if data.draw(st.booleans(), label="splice text"):
        i = data.draw(st.integers(0, len(content)), label="from")
        j = data.draw(st.integers(i, min(len(content), i + 40)), label="to")
        content = content[:i] + data.draw(yamlish, label="insert").encode() + content[j:]
    load(kind, content, folder)


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_with_nasty_values(kind, folder):
    """Each value, list and mapping of a valid file, replaced in turn by each NASTY value."""
    tried = 0
    for at in list(_paths(VALID[kind]))[1:]:
        for value in NASTY:
            doc = copy.deepcopy(VALID[kind])
            parent = doc
            for part in at[:-1]:
                parent = parent[part]
            parent[at[-1]] = value
            content = dump(doc)
            load(kind, content, folder)
            tried += 1
    assert tried > 400


BOMB = b"""name: bomb
variables:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
steps: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize(
    "kind, content",
    [
        ("runbook", BOMB),
        ("inventory", BOMB.replace(b"name: bomb\nvariables:", b"defaults:").replace(b"steps:", b"workers:")),
        ("inventory", b"workers: &w [*w]\n"),
        ("runbook", b"name: x\nsteps: &s\n  - *s\n"),
        ("inventory", b"workers: " + b"[" * 10000 + b"]" * 10000 + b"\n"),
        ("runbook", b"name: x\nname: y\nsteps: []\n"),
        ("inventory", b"workers: !!python/object/apply:os.system ['touch /tmp/sshexec-yaml-pwned']\n"),
        ("runbook", b"!!python/object/new:os.system [touch /tmp/sshexec-yaml-pwned]\n"),
        ("inventory", b"workers:\n  - {name: w1, host: h}\n  - {<<: *undefined}\n"),
        ("runbook", b"name: x\nsteps:\n  - ? [a, b]\n    : c\n"),
    ],
    ids=["alias-bomb-runbook", "alias-bomb-inventory", "recursive-inventory", "recursive-runbook", "deep-nesting",
         "duplicate-key", "python-tag-inventory", "python-tag-runbook", "undefined-alias", "complex-key"],
)
def test_yaml_bombs_and_tags(kind, content, folder):
    assert load(kind, content, folder) is None
    assert not os.path.exists("/tmp/sshexec-yaml-pwned")


@xfail_if_gap("parse-files-path")
@pytest.mark.parametrize("value", ["a\0b", "x" * 300], ids=["nul", "long-name"])
def test_files_path_edge_cases(value, folder):
    data = copy.deepcopy(VALID["runbook"])
    data["steps"][0]["files"] = value
    with pytest.raises(InputError) as err:
        load_runbook(_write(folder, dump(data)))
    assert err.value.field == "steps[build].files"


def _write(folder: Path, content: bytes) -> Path:
    path = folder / "edge.yaml"
    path.write_bytes(content)
    return path
