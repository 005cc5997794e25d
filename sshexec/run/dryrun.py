"""`sshexec run --dry-run`: the plan of a run, from the runbook and the inventory alone.

Nothing here connects or reads the history: Runner.plan() hands in the
workers each step would run on (and, for `--retry-failed`, what would be
carried over); this module lays them out for the terminal and `--json`.
"""

from __future__ import annotations

from typing import Sequence

from ..config.inventory import Inventory, Worker
from ..config.runbook import Runbook, Step
from . import policy as plan


def run_plan(
    runbook: Runbook, inventory: Inventory, targets: Sequence[tuple[list[Worker], tuple[plan.Earlier, ...]]], *,
    retry_of: str | None = None, variables: Sequence[dict] = (),
) -> dict:  # fmt: skip
    """The plan as data (`--json`): the variables (secrets masked), the run's steps, in order, each with its workers, batches and keys."""
    return {
        "runbook": runbook.name,
        "path": str(runbook.path),
        "runbook_hash": runbook.digest,
        "inventory": str(inventory.path),
        "retry_of": retry_of,
        "lock": getattr(runbook, "lock", None),  # runbook-wide lock, when the runbook format has one
        "variables": list(variables),
        "steps": [step_plan(step, workers, carried, inventory) for step, (workers, carried) in zip(runbook.steps, targets)],
    }


def step_plan(step: Step, workers: list[Worker], carried: tuple[plan.Earlier, ...], inventory: Inventory) -> dict:
    names = [w.name for w in workers]
    feed = inventory.feed(step.feed) if step.feed else None
    out: dict = {
        "step": step.name,
        "if": step.condition,
        "target": step.target,
        "pool": step.pool,
        "workers": names,
        "image": step.image,
        "pull": step.pull,
        "feed": {"name": feed.name, "registry": feed.registry} if feed else None,
        "user": step.user,
        "syntax": step.syntax,
        "timeout": step.timeout,
        "lock": getattr(step, "lock", None),  # when the runbook format has locks
        "retries": None,
        "rolling": None,
        "carried": [{"worker": e.worker, "from": e.ran_in, "outputs": sorted(e.outputs)} for e in carried],
        "approval": None,
    }
    if step.approval is not None:
        a = step.approval
        out["approval"] = {"message": a.message, "role": a.role, "timeout": a.timeout}
    if step.retries:
        r = step.retries
        out["retries"] = {"attempts": r.attempts, "on": r.on, "delay": r.delay, "backoff": r.backoff, "waits": r.waits()}
    if step.target == "each" and names:
        rolling = step.rolling
        groups = plan.batches(names, rolling)
        random_order = rolling is not None and rolling.order == "random"
        out["rolling"] = {
            "batches": [len(g) for g in groups] if random_order else groups,
            "order": rolling.order if rolling else "inventory",
            "max_failures": plan.failure_limit(rolling, len(names)),
            "max_failures_as_written": str(rolling.max_failures) if rolling else "0",
            "pause": rolling.pause if rolling else 0.0,
        }
    return out


def render(p: dict) -> list[str]:
    """The plan as lines of text for the terminal."""
    lines = [f"plan of {p['runbook']} ({p['path']}) with {p['inventory']}: nothing was contacted"]
    if p["retry_of"]:
        lines.append(f"a retry of run {p['retry_of']}: only what did not succeed there runs")
    if p.get("lock"):
        lines.append(f"lock: {p['lock']}")
    if p.get("variables"):
        lines.append("variables:")
        lines += [f"   {v['name']} = {v['value']}" + ("" if v["from"] == "runbook" else f"   ({v['from']})") for v in p["variables"]]
    for i, s in enumerate(p["steps"], 1):
        lines.append("")
        if s.get("approval"):
            a = s["approval"]
            lines.append(f"{i}. {s['step']}   if: {s['if']} · approval by the role {a['role']}, within {a['timeout']:g}s: {a['message']}")
            lines.append("   no worker, no container: the run waits for the decision (reject or no decision: the step fails)")
            continue
        lines.append(f"{i}. {s['step']}   if: {s['if']} · target: {s['target']} · pool {s['pool']}")
        feed = f" · feed {s['feed']['name']} ({s['feed']['registry']})" if s["feed"] else ""
        lines.append(f"   image {s['image']} · pull {s['pull']}{feed} · user {s['user']} · {s['syntax']} · timeout {s['timeout']}s")
        lines += ["   " + line for line in _workers(s)]
        if s["retries"]:
            r = s["retries"]
            waits = ", ".join(f"{w:g}s" for w in r["waits"]) or "none"
            lines.append(f"   retries: {r['attempts']} attempts in all, on {r['on']}; waits at most {waits}")
        if s["lock"]:
            lines.append(f"   lock: {s['lock']}")
        for c in s["carried"]:
            outs = ", ".join(c["outputs"]) or "no outputs"
            lines.append(f"   carried from run {c['from']} on {c['worker']}: {outs}")
    return lines


def _workers(s: dict) -> list[str]:
    names = s["workers"]
    if not names:
        return ["not run here: everything was carried over" if s["carried"] else "no worker"]
    if s["target"] == "any":
        return [f"on one healthy worker of: {', '.join(names)}"]
    r = s["rolling"]
    if len(r["batches"]) == 1:
        out = [f"on every worker at once: {', '.join(names)}"]
    elif r["order"] == "random":
        sizes = " + ".join(map(str, r["batches"]))
        out = [f"in batches of {sizes} workers, drawn at random from {', '.join(names)} when the run starts"]
    else:
        out = [f"batch {i}: {', '.join(g)}" for i, g in enumerate(r["batches"], 1)]
    limit = f"max_failures {r['max_failures']}"
    if r["max_failures_as_written"].endswith("%"):
        limit += f" ({r['max_failures_as_written']} of {len(names)}, rounded down)"
    extra = [limit] + ([f"pause {r['pause']:g}s between batches"] if r["pause"] and len(r["batches"]) > 1 else [])
    return out + [" · ".join(extra)]
