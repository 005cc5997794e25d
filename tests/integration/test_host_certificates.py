"""known_hosts markers against real sshd: host certificates signed by a CA made here, revocations,
and marker lines about other hosts that must never break anyone (issue 19, item 8).

The worker's sshd has `HostCertificate` in its config; each test signs the worker's
own host key with ssh-keygen (`-h`, principals, validity) and puts the certificate
in place. sshd re-executes itself for every connection and reads its host keys and
certificates then, so the next connection presents the new certificate.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from labkit import docker, extra_worker, inventory_file, jump_lab, sshexec, step, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
CERT_SSHD = {"SSHEXEC_SSHD_CONFIG": f"HostCertificate {HOST_KEY}-cert.pub"}


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True, capture_output=True, timeout=30)
    return path


def public(path: Path) -> str:
    """"TYPE BASE64" of a key pair's public half."""
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def host_key(container: str) -> str:
    return " ".join(docker("exec", container, "cat", f"{HOST_KEY}.pub").stdout.split()[:2])


def certify(container: str, ca: Path, work: Path, *, principals="127.0.0.1", validity="-5m:+1h", host=True, key_id="worker") -> None:
    """Sign the container's ed25519 host key with `ca` and install the certificate its sshd presents."""
    pub = work / f"hk-{uuid.uuid4().hex[:6]}.pub"
    pub.write_text(host_key(container) + "\n")
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, *(["-h"] if host else []), "-n", principals, "-V", validity, str(pub)]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    cert = pub.with_name(pub.name.removesuffix(".pub") + "-cert.pub").read_bytes()
    subprocess.run(["docker", "exec", "-i", container, "sh", "-c", f"cat >{HOST_KEY}-cert.pub.new && mv {HOST_KEY}-cert.pub.new {HOST_KEY}-cert.pub"],
                   input=cert, check=True, capture_output=True, timeout=60)  # fmt: skip


def accepted(container: str) -> int:
    logs = docker("logs", container)
    return (logs.stdout + logs.stderr).count("Accepted publickey")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The host CA known_hosts trusts, another CA, and the marker lines of an enterprise
    known_hosts that are about other hosts and other keys."""
    d = tmp_path_factory.mktemp("pki")
    ca, other, stolen = keygen(d / "host-ca"), keygen(d / "other-ca"), keygen(d / "stolen")
    unrelated = f"@cert-authority *.corp.example {public(other)}\n@revoked * {public(stolen)}\n"
    return {"dir": d, "ca": ca, "other": other, "unrelated": unrelated}


@pytest.fixture(scope="module")
def certified(lab, pki):
    """A worker whose sshd presents a host certificate (signed anew by each test)."""
    with extra_worker(lab, env=CERT_SSHD) as xw:
        yield xw


def check(inv, *extra):
    res = sshexec("check", "--inventory", inv, "--json", *extra)
    return res, json.loads(res.stdout) if res.stdout.strip().startswith("{") else None


def ca_line(pki, port: int) -> str:
    return f"@cert-authority [127.0.0.1]:{port} {public(pki['ca'])}\n"


def test_a_host_certified_by_a_trusted_ca_needs_no_key_in_known_hosts(lab_env, tmp_path, pki, certified):
    xw = certified
    certify(xw.id, pki["ca"], pki["dir"])
    known = pki["unrelated"] + ca_line(pki, xw.port)  # no plain key for the worker at all
    inv = inventory_file(tmp_path, lab_env, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["certs"], "work_root": str(xw.work)}], known_hosts=known)
    kh = tmp_path / "inv.yaml.known_hosts"
    res, data = check(inv)
    assert res.returncode == 0, res.stdout + res.stderr
    assert data["workers"][0]["host_key"] is True
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "certs", "steps": [step("s", lab_env.image_ref("busybox"), "echo certified-ran", syntax="sh", pool="certs")]})
    run = sshexec("run", rb, "--inventory", inv)
    assert run.returncode == 0 and "certified-ran" in run.stdout, run.stdout + run.stderr
    # trust says the CA covers it, and writes nothing
    trusted = sshexec("trust", "--inventory", inv, "--worker", xw.name, "--yes", "--json")
    assert trusted.returncode == 0, trusted.stderr
    (hop,) = json.loads(trusted.stdout)["hops"]
    assert (hop["status"], hop["added"]) == ("certified", False) and f"{kh}:3" in hop["ca"]
    told = sshexec("trust", "--inventory", inv, "--worker", xw.name, "--yes")
    assert "covered by the CA" in told.stderr and "no key written" in told.stderr, told.stderr
    assert kh.read_text() == known


REFUSED = {
    # case: (how to sign, or "revoked"), the error class, words of its message
    "other-ca": ({"ca": "other"}, "HostCertificateError", "is signed by another CA"),
    "expired": ({"validity": "20200101:20200102"}, "HostCertificateError", "expired at 2020-01-02 00:00:00 UTC"),
    "wrong-principal": ({"principals": "db.corp.example"}, "HostCertificateError", "is for db.corp.example, not for 127.0.0.1"),
    "user-certificate": ({"host": False, "principals": "deploy"}, "HostCertificateError", "a user certificate ('worker'), not a host certificate"),
    "revoked": ({"revoke": True}, "RevokedHostKey", "is revoked in known_hosts"),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_certificate_the_trusted_ca_does_not_vouch_for_is_refused_with_exit_3(lab_env, tmp_path, pki, certified, case):
    xw = certified
    how, error, words = REFUSED[case]
    how = dict(how)
    revoke = how.pop("revoke", False)
    certify(xw.id, pki[how.pop("ca", "ca")], pki["dir"], **how)
    known = pki["unrelated"] + ca_line(pki, xw.port) + (f"@revoked * {host_key(xw.id)}\n" if revoke else "")
    inv = inventory_file(tmp_path, lab_env, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port}], known_hosts=known)
    kh = tmp_path / "inv.yaml.known_hosts"
    before = accepted(xw.id)
    res, data = check(inv)
    assert res.returncode == 3, res.stdout + res.stderr
    err = data["workers"][0]["error"]
    assert err["error"] == error and words in err["message"], err
    assert "Refusing to connect" in err["message"] and err["hint"]
    if revoke:
        assert f"{kh}:4: @revoked *" in err["message"]  # the revocation is named
    trusted = sshexec("trust", "--inventory", inv, "--worker", xw.name, "--yes")
    assert trusted.returncode == 3 and words in trusted.stderr, trusted.stderr
    assert kh.read_text() == known  # no plain key written for a host the CA covers
    assert accepted(xw.id) == before  # nothing was offered to it


def lab_with_known_hosts(tmp_path, lab, text: str) -> Path:
    """The lab's own inventory, its known_hosts replaced by `text`."""
    data = yaml.safe_load(lab.inventory_path.read_text())
    base = lab.inventory_path.parent
    kh = tmp_path / "known_hosts"
    kh.write_text(text)
    data["defaults"]["identity_file"] = str(base / data["defaults"]["identity_file"])
    data["defaults"]["known_hosts"] = str(kh)
    inv = tmp_path / "lab.yaml"
    inv.write_text(yaml.safe_dump(data))
    return inv


def test_marker_lines_about_other_hosts_never_break_the_lab(lab_env, tmp_path, pki):
    """The issue's known_hosts: a CA for *.corp.example and a revoked key of someone else, at the top."""
    known = lab_env.known_hosts_path.read_text()
    inv = lab_with_known_hosts(tmp_path, lab_env, pki["unrelated"] + known)
    res, data = check(inv)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {w["worker"] for w in data["workers"]} >= {"w1", "w2", "w3", "bastion", "inner1"}
    assert all(w["host_key"] for w in data["workers"])  # inner1 too: behind the bastion, every hop read the file


def test_a_certified_bastion_is_judged_like_any_worker_and_its_revocation_stops_the_hop(lab_env, tmp_path, pki):
    with jump_lab(lab_env, bastion_env=CERT_SSHD) as jl:
        certify(jl.bastion, pki["ca"], pki["dir"])
        kh = tmp_path / "known_hosts"
        workers = [{"name": "bastion", "host": "127.0.0.1", "port": jl.bastion_port},
                   {"name": "inner1", "host": "inner1", "port": 22, "pools": ["inner"], "jump": "bastion", "work_root": str(lab_env.work_base / jl.inner["inner1"])}]  # fmt: skip
        data = {"defaults": {"user": "deploy", "identity_file": str(lab_env.key_path), "known_hosts": str(kh), "connect_timeout": 10}, "workers": workers}
        inv = tmp_path / "inv.yaml"
        inv.write_text(yaml.safe_dump(data))
        kh.write_text(pki["unrelated"] + ca_line(pki, jl.bastion_port) + jl.inner_keys())  # no plain key for the bastion
        res, out = check(inv, "--worker", "inner1")
        assert res.returncode == 0, res.stdout + res.stderr
        kh.write_text(kh.read_text() + f"@revoked * {host_key(jl.bastion)}\n")
        logins = jl.accepted_logins()
        res, out = check(inv, "--worker", "inner1")
        assert res.returncode == 3, res.stdout + res.stderr
        err = out["workers"][0]["error"]
        assert err["error"] == "RevokedHostKey" and err["hop"] == "bastion" and "jump host bastion" in err["message"]
        assert jl.accepted_logins() == logins  # the bastion was offered nothing
