"""Results: rows of medians and ratios, the rich table, the JSON file and a Markdown table."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .measure import Sample, median, spread


@dataclass
class Row:
    """One comparison: A (sshexec) against B (a baseline), in one unit."""

    case: str
    title: str
    a_label: str
    a: list[float]
    b_label: str | None = None
    b: list[float] | None = None
    unit: str = "s"
    target: float | None = None  # the A/B ratio the issue asks for (at most)
    aim: float | None = None  # the ratio to aim for
    limit: float | None = None  # an absolute ceiling for A's median, in `unit`
    notes: str = ""

    @property
    def a_median(self) -> float:
        return median(self.a)

    @property
    def b_median(self) -> float | None:
        return median(self.b) if self.b else None

    @property
    def ratio(self) -> float | None:
        b = self.b_median
        return self.a_median / b if b else None

    @property
    def verdict(self) -> str:
        checks = []
        if self.target is not None and self.ratio is not None:
            checks.append(self.ratio <= self.target)
        if self.limit is not None:
            checks.append(self.a_median <= self.limit)
        if not checks:
            return "–"
        if not all(checks):
            return "MISS"
        if self.aim is not None and self.ratio is not None and self.ratio > self.aim:
            return "ok (> aim)"
        return "ok"

    def goal(self) -> str:
        parts = []
        if self.target is not None:
            parts.append(f"≤{self.target:g}×" + (f" (aim {self.aim:g})" if self.aim else ""))
        if self.limit is not None:
            parts.append(f"A ≤{self.limit:g} {self.unit}")
        return ", ".join(parts) or "–"

    def to_dict(self) -> dict:
        d = {
            "case": self.case,
            "title": self.title,
            "unit": self.unit,
            "a_label": self.a_label,
            "a": self.a,
            "a_median": self.a_median,
            "a_range": spread(self.a),
            "b_label": self.b_label,
            "b": self.b,
            "b_median": self.b_median,
            "b_range": spread(self.b) if self.b else None,
            "ratio": self.ratio,
            "round_ratios": [x / y for x, y in zip(self.a, self.b) if y] if self.b and len(self.b) == len(self.a) else None,
            "target": self.target,
            "aim": self.aim,
            "limit": self.limit,
            "verdict": self.verdict,
            "notes": self.notes,
        }
        return _finite(d)


@dataclass
class CaseResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # variant -> raw samples
    figures: dict = field(default_factory=dict)  # case-specific facts (bytes, phases, versions...)

    def to_dict(self) -> dict:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "samples": {k: [s.to_dict() for s in v] for k, v in self.samples.items()},
            "figures": _finite(self.figures),
        }


def _finite(obj):
    """JSON has no NaN: None instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.1f} {unit}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def print_table(results: list[CaseResult], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from rich.markup import escape

    console = console or Console()
    table = Table(title="sshexec benchmarks: medians, A = sshexec, B = baseline", title_justify="left")
    for col in ("case", "A (sshexec)", "B (baseline)", "A", "B", "A/B", "target", "result", "notes"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "MISS": "red", "ok (> aim)": "yellow"}
    for res in results:
        for r in res.rows:
            v = r.verdict
            table.add_row(
                escape(r.title), escape(r.a_label), escape(r.b_label or "–"), _fmt(r.a_median, r.unit), _fmt(r.b_median, r.unit),
                _ratio(r.ratio), r.goal(), f"[{colour.get(v, 'white')}]{escape(v)}[/]", escape(r.notes),
            )  # fmt: skip
    console.print(table)


def markdown_table(results: list[CaseResult]) -> str:
    head = "| case | A (sshexec) | B (baseline) | A median | B median | A/B | target | result | notes |\n|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for res in results:
        for r in res.rows:
            cells = [r.title, r.a_label, r.b_label or "–", _fmt(r.a_median, r.unit), _fmt(r.b_median, r.unit), _ratio(r.ratio), r.goal(), r.verdict, r.notes]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return head + "\n".join(lines) + "\n"


def machine() -> dict:
    def out(*argv: str) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    repo = Path(__file__).resolve().parents[1]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "uname": out("uname", "-a") or " ".join(platform.uname()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "openssh": out("ssh", "-V"),
        "docker_server": out("docker", "version", "--format", "{{.Server.Version}}"),
        "git_commit": out("git", "-C", str(repo), "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(out("git", "-C", str(repo), "status", "--porcelain", "--", "sshexec")),
    }


def write_json(path: Path, results: list[CaseResult], config: dict, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "config": config, "cases": {r.name: r.to_dict() for r in results}}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class Change:
    """One row of two result files side by side."""

    case: str
    title: str
    unit: str
    old_ratio: float | None
    new_ratio: float | None
    old_a: float | None
    new_a: float | None
    old_verdict: str
    new_verdict: str

    @property
    def ratio_change(self) -> float | None:
        """Relative change of the A/B ratio (negative: sshexec got closer to, or further below, the baseline)."""
        if self.old_ratio and self.new_ratio is not None:
            return self.new_ratio / self.old_ratio - 1
        return None


def compare(old: dict, new: dict) -> list[Change]:
    """Rows of two `python -m benchmarks` JSON files, matched by case and title; rows of only one side too."""

    def rows(doc: dict) -> dict[tuple[str, str], dict]:
        return {(name, r["title"]): r for name, case in doc.get("cases", {}).items() for r in case.get("rows", [])}

    a, b = rows(old), rows(new)
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        ra, rb = a.get(key, {}), b.get(key, {})
        out.append(Change(
            key[0], key[1], (rb or ra).get("unit", "s"), ra.get("ratio"), rb.get("ratio"), ra.get("a_median"), rb.get("a_median"),
            ra.get("verdict", "absent"), rb.get("verdict", "absent"),
        ))  # fmt: skip
    return out


def print_comparison(changes: list[Change], old_name: str, new_name: str, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"benchmarks: {escape(old_name)} → {escape(new_name)}", title_justify="left")
    for col in ("case", "A/B before", "A/B after", "change", "A before", "A after", "result"):
        table.add_column(col, overflow="fold")
    for c in changes:
        rc = c.ratio_change
        colour = "white" if rc is None or abs(rc) < 0.03 else ("green" if rc < 0 else "red")
        change = "–" if rc is None else f"[{colour}]{rc * 100:+.1f}%[/]"
        verdict = c.new_verdict if c.old_verdict == c.new_verdict else f"{c.old_verdict} → {c.new_verdict}"
        table.add_row(escape(c.title), _ratio(c.old_ratio), _ratio(c.new_ratio), change, _fmt(c.old_a, c.unit), _fmt(c.new_a, c.unit), escape(verdict))
    console.print(table)
