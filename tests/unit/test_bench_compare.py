"""`python -m benchmarks --compare BEFORE.json AFTER.json`: rows matched by case and title."""

import json
import subprocess
import sys

from benchmarks.report import compare

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def doc(rows):
    return {"cases": {"warm": {"rows": rows}}}


def row(title, ratio, a, verdict="ok"):
    return {"title": title, "unit": "s", "ratio": ratio, "a_median": a, "verdict": verdict}


def test_rows_are_matched_and_changes_computed():
    old = doc([row("warm step (CLI)", 1.5, 0.9, "ok (> aim)"), row("gone", 1.0, 0.1)])
    new = doc([row("warm step (CLI)", 1.2, 0.7), row("new row", 2.0, 0.3, "MISS")])
    changes = {c.title: c for c in compare(old, new)}
    c = changes["warm step (CLI)"]
    assert round(c.ratio_change, 3) == -0.2 and (c.old_verdict, c.new_verdict) == ("ok (> aim)", "ok")
    assert changes["gone"].new_verdict == "absent" and changes["gone"].ratio_change is None
    assert changes["new row"].old_verdict == "absent"


def test_the_command_prints_the_comparison(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(doc([row("warm step (CLI)", 1.5, 0.9)])))
    b.write_text(json.dumps(doc([row("warm step (CLI)", 1.2, 0.7)])))
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--compare", str(a), str(b)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    assert "warm step (CLI)" in res.stdout and "1.50×" in res.stdout and "1.20×" in res.stdout and "-20.0%" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "--compare", str(a), str(tmp_path / "nope.json")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2 and "cannot read" in bad.stderr
