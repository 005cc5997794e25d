"""docs/security.md holds the generated table of hostile inputs, and every row names a real test."""

import ast
import functools
from pathlib import Path

from security_cases import CASES, DOC, PAYLOADS, render

TESTS = Path(__file__).resolve().parents[1]


@functools.cache
def _functions(file: str) -> dict[str, ast.FunctionDef]:
    (path,) = TESTS.rglob(file)
    return {n.name: n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}


def test_docs_security_md_holds_the_generated_table():
    assert render() in DOC.read_text(), "docs/security.md is out of date: run .venv/bin/python tests/security_cases.py --write"


def test_every_case_names_an_existing_test():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len({p.id for p in PAYLOADS}) == len(PAYLOADS)
    for c in CASES:
        file, test = c.proof.split("::")
        fn = _functions(file).get(test)
        assert fn is not None, f"{c.id}: no test {c.proof}"
        params = any("params(" in ast.unparse(d) for d in fn.decorator_list)
        assert params == c.param, f"{c.id}: {c.proof} {'is not' if c.param else 'is'} parametrized over the cases"
        gap_mark = any("xfail_if_gap" in ast.unparse(d) for d in fn.decorator_list)
        if c.gap and not c.param:
            assert gap_mark, f"{c.id} has a gap: {c.proof} must be decorated with xfail_if_gap({c.id!r})"


def test_every_security_test_is_in_the_table():
    named = {c.proof for c in CASES}
    for file in ("test_security.py", "test_parsers_property.py"):
        for name in _functions(file):
            if name.startswith("test_"):
                assert f"{file}::{name}" in named or name == "test_the_valid_files_are_valid", f"{file}::{name} proves no row of docs/security.md"


def test_rows_say_which_are_proved_without_the_lab():
    """*(no lab)* follows from the test's own fixtures (security_cases.uses_the_lab): a unit test never claims the lab."""
    from security_cases import by_id

    assert by_id("hostkey-unknown-run").lab and by_id("serve-body-before-auth").lab  # through the lab fixtures, and a server fixture
    assert not by_id("hostkey-no-autoadd").lab  # in tests/integration, but a scan of the source
    for c in CASES:
        (path,) = TESTS.rglob(c.proof.split("::")[0])
        if path.parent.name == "unit":
            assert not c.lab, f"{c.id}: {c.proof} is a unit test"
        shown = f"`{c.proof}[{c.id}]`" if c.param else f"`{c.proof}`"
        assert (f"{shown} *(no lab)*" in render()) == (not c.lab), c.id
