"""Reproducible runs (issue 21) on the lab: every step attempt records the image digest that ran and its bundle's hash;
a tag re-pushed to another image between a run and its --retry-failed: the retry runs the first digest (pulled by
digest), --latest the new one; a runbook may pin name@sha256:...; `logs` and the API show what ran."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

from labkit import docker, sshexec, step, write_runbook

from sshexec.store.history import History


def push_variant(lab, ref: str, text: str, tmp_path) -> str:
    """Build FROM the lab's busybox an image whose /which says `text`, push it as `ref`; its registry digest (repo@sha256:...)."""
    ctx = tmp_path / f"ctx-{uuid.uuid4().hex[:6]}"
    ctx.mkdir()
    (ctx / "which").write_text(text + "\n")
    (ctx / "Dockerfile").write_text(f"FROM {lab.image_ref('busybox')}\nCOPY which /which\n")
    subprocess.run(["docker", "build", "-q", "-t", ref, str(ctx)], check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    cfg = tmp_path / f"docker-{uuid.uuid4().hex[:6]}"
    cfg.mkdir(mode=0o700)
    try:
        subprocess.run(["docker", "--config", str(cfg), "login", "-u", "sshexec", "--password-stdin", lab.registry_address], input=lab.registry_password().encode(), check=True, capture_output=True)
        subprocess.run(["docker", "--config", str(cfg), "push", ref], check=True, capture_output=True)
    finally:
        subprocess.run(["rm", "-rf", str(cfg)])
    digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout)
    docker("rmi", ref)
    (digest,) = [d for d in digests if d.startswith(ref.rsplit(":", 1)[0] + "@")]
    return digest


def said(res) -> str:
    return next(line.split("image says ", 1)[1].strip() for line in res.stdout.splitlines() if "image says " in line)


def ran(run_id: str) -> list[tuple[str | None, str | None]]:
    return [(s["image_digest"], s["bundle_hash"]) for s in History().steps(run_id) if s["step"] == "which"]


def test_a_retry_runs_the_digest_the_run_ran_even_after_its_tag_moved(lab_env, tmp_path):
    env = {**os.environ}
    ref = f"{lab_env.registry_address}/teams/which:{uuid.uuid4().hex[:8]}"
    first = push_variant(lab_env, ref, "A", tmp_path)
    script = 'echo "image says $(cat /which)"; [ "$FAIL" = no ]'
    rb = write_runbook(tmp_path / "which.yaml", {"name": "which", "variables": {"FAIL": "yes"},
                                                   "steps": [step("which", ref, script, syntax="sh", feed="lab", pull="always")]})  # fmt: skip
    res = sshexec("run", rb, "--worker", "w1", env=env)
    assert res.returncode == 1 and said(res) == "A", res.stdout + res.stderr
    run1 = History().runs(1)[0].id
    ((digest1, bundle1),) = ran(run1)
    assert digest1 == first and bundle1 and len(bundle1) == 64
    shown = sshexec("logs", run1, env=env).stdout
    assert f"image {first}" in shown and f"bundle sha256:{bundle1[:16]}" in shown
    assert json.loads(sshexec("logs", run1, "--json", env=env).stdout)["steps"][0]["image_digest"] == first

    # The tag moves to another image.
    second = push_variant(lab_env, ref, "B", tmp_path)
    assert second != first
    plan = json.loads(sshexec("run", "--retry-failed", run1, "--dry-run", "--json", env=env).stdout)
    assert plan["steps"][0]["image"] == first  # the plan says which image the retry will run
    # The retry runs the first digest (pull: always pulls it by digest), and records it.
    res = sshexec("run", "--retry-failed", run1, "--var", "FAIL=no", env=env)
    assert res.returncode == 0 and said(res) == "A", res.stdout + res.stderr
    run2 = History().runs(1)[0].id
    assert ran(run2) == [(first, bundle1)]
    # --latest takes the tag again: the new image.
    res = sshexec("run", "--retry-failed", run1, "--var", "FAIL=no", "--latest", env=env)
    assert res.returncode == 0 and said(res) == "B", res.stdout + res.stderr
    assert ran(History().runs(1)[0].id)[0][0] == second
    # A runbook may pin the digest itself.
    pinned = write_runbook(tmp_path / "pinned.yaml", {"name": "pinned", "variables": {"FAIL": "no"},
                                                       "steps": [step("which", first, script, syntax="sh", feed="lab", pull="always")]})  # fmt: skip
    res = sshexec("run", pinned, "--worker", "w2", env=env)
    assert res.returncode == 0 and said(res) == "A", res.stdout + res.stderr
    assert ran(History().runs(1)[0].id)[0][0] == first
    bad = sshexec("run", rb, "--latest", env=env)
    assert bad.returncode == 2 and "--latest goes with --retry-failed" in bad.stderr


def test_a_tag_that_is_another_image_on_another_worker_is_refused_unless_allowed(lab_env, tmp_path):
    env = {**os.environ}
    ref = f"{lab_env.registry_address}/teams/mixed:{uuid.uuid4().hex[:8]}"
    first = push_variant(lab_env, ref, "A", tmp_path)
    script = 'echo "image says $(cat /which)"'
    warm = write_runbook(tmp_path / "warm.yaml", {"name": "warm", "steps": [step("which", ref, script, syntax="sh", feed="lab")]})
    assert sshexec("run", warm, "--worker", "w1", env=env).returncode == 0  # w1 has the tag as A now
    second = push_variant(lab_env, ref, "B", tmp_path)  # ...and the registry has it as B: a worker that pulls it gets B

    def each(name: str, **extra) -> dict:
        rolling = {"batch": 1}  # w1 first (inventory order), then the others one at a time
        return {"name": name, **extra, "steps": [step("which", ref, script, syntax="sh", feed="lab", target="each", rolling=rolling)]}

    res = sshexec("run", write_runbook(tmp_path / "strict.yaml", each("strict")), "--json", env=env)
    assert res.returncode == 3, res.stderr
    rows = {s["worker"]: s for s in History().steps(json.loads(res.stdout)["run_id"])}
    assert rows["w1"]["status"] == "succeeded" and rows["w1"]["image_digest"] == first
    assert rows["w2"]["status"] == "error" and f"than the {first} this run ran elsewhere" in rows["w2"]["message"]
    assert "image says B" not in res.stderr  # refused before it ran
    res = sshexec("run", write_runbook(tmp_path / "loose.yaml", each("loose", mixed_digests="allow")), "--json", env=env)
    assert res.returncode == 0, res.stderr
    rows = {s["worker"]: s for s in History().steps(json.loads(res.stdout)["run_id"])}
    assert rows["w1"]["image_digest"] == first and rows["w2"]["image_digest"] == second
