"""known_hosts: every line OpenSSH reads, host certificates judged against its CAs, key-type
preference, and concurrent writers under `sshexec trust`. Keys and certificates are made by the
real ssh-keygen; the real sshd is in tests/integration/test_host_certificates.py."""

from __future__ import annotations

import multiprocessing
import subprocess
from pathlib import Path

import paramiko
import pytest

from sshexec.ssh.hostkeys import add_known_host, judge, preferred_key_types
from sshexec.ssh.known_hosts import KnownHosts, hosts_match


def known(path: Path, host: str, port: int) -> list[str]:
    """The fingerprints of the plain keys known_hosts holds for host:port."""
    return [line.fingerprint for line in KnownHosts.read(path).lookup(host, port).keys]


def _add(path: str, i: int) -> None:
    from pathlib import Path

    add_known_host(Path(path), f"[127.0.0.1]:{2200 + i}", paramiko.ECDSAKey.generate())


def test_concurrent_trusts_lose_no_key(tmp_path):
    """Two `sshexec trust` at once used to rewrite known_hosts through one fixed temporary name."""
    kh = tmp_path / "known_hosts"
    kh.write_text("# mine\n")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add, args=(str(kh), i)) for i in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    lines = kh.read_text().splitlines()
    assert lines[0] == "# mine" and len(lines) == 13
    assert all(known(kh, "127.0.0.1", 2200 + i) for i in range(12))
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("known_hosts", "known_hosts.lock")] == []
    assert oct(kh.stat().st_mode & 0o777) == "0o600"


def test_replace_drops_only_that_hosts_lines(tmp_path):
    kh = tmp_path / "known_hosts"
    a, b, c = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    add_known_host(kh, "[h]:2222", a)
    add_known_host(kh, "other", b)
    add_known_host(kh, "[h]:2222", c, replace=True)
    assert known(kh, "h", 2222) == [c.fingerprint]
    assert known(kh, "other", 22) == [b.fingerprint]


def test_known_key_types_are_asked_for_first_and_certificates_when_a_ca_is_trusted(tmp_path):
    rsa, ecdsa = paramiko.RSAKey.generate(1024), paramiko.ECDSAKey.generate()
    offered = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519-cert-v01@openssh.com", "rsa-sha2-512-cert-v01@openssh.com"]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"rsa.example ssh-rsa {rsa.get_base64()}\necdsa.example {ecdsa.get_name()} {ecdsa.get_base64()}\n")
    look = KnownHosts.load(kh).lookup
    assert preferred_key_types(look("rsa.example", 22), offered)[:2] == ["rsa-sha2-512", "rsa-sha2-256"]
    assert preferred_key_types(look("ecdsa.example", 22), offered)[0] == "ecdsa-sha2-nistp256"
    assert preferred_key_types(look("nobody.example", 22), offered) == offered
    ca_pub = keygen(tmp_path, "ca").with_suffix(".pub").read_text().split()
    kh.write_text(kh.read_text() + f"@cert-authority *.example {ca_pub[0]} {ca_pub[1]}\n")
    assert preferred_key_types(KnownHosts.load(kh).lookup("ecdsa.example", 22), offered) == [
        "ssh-ed25519-cert-v01@openssh.com", "rsa-sha2-512-cert-v01@openssh.com", "ecdsa-sha2-nistp256", "ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256",
    ]  # fmt: skip


# -- every line OpenSSH reads ------------------------------------------------------------------


def keygen(tmp_path: Path, name: str, kind: str = "ed25519") -> Path:
    """A fresh key pair made by ssh-keygen: tmp_path/name and tmp_path/name.pub."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)], check=True, capture_output=True, timeout=30)
    return path


def pub(path: Path) -> str:
    """"TYPE BASE64" of a key pair's public half."""
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def sign(tmp_path: Path, ca: Path, key: Path, *, host=True, principals="127.0.0.1,localhost", validity="-5m:+1h", key_id="w") -> paramiko.PKey:
    """The host key `key` with a certificate `ca` signed, as paramiko holds what a server presented."""
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, *(["-h"] if host else []), "-n", principals, "-V", validity, f"{key}.pub"]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    k = paramiko.Ed25519Key(filename=str(key))
    k.load_certificate(str(key) + "-cert.pub")
    return k


def plain(key: Path) -> paramiko.PKey:
    return paramiko.Ed25519Key(filename=str(key))


def hashed(name: str) -> str:
    return paramiko.HostKeys.hash_host(name)


def test_every_line_openssh_reads_and_what_it_says_about_each_host(tmp_path):
    """The issue's known_hosts: marker lines for other hosts and other keys at the top broke every lookup."""
    other_ca, stolen, k1, k2, k3, k4, k5 = (keygen(tmp_path, n) for n in ("other-ca", "stolen", "k1", "k2", "k3", "k4", "k5"))
    kh = tmp_path / "known_hosts"
    kh.write_text("\n".join([
        f"@cert-authority *.corp.example {pub(other_ca)}",
        f"@revoked * {pub(stolen)}",
        "# a comment, and a blank line",
        "",
        f"@bogus-marker [127.0.0.1]:2222 {pub(k5)}",  # skipped, as OpenSSH does
        "garbage",
        "[127.0.0.1]:2222 ssh-ed25519 not*base64",
        f"[127.0.0.1]:2222 ssh-rsa {pub(k5).split()[1]}",  # a key that is not of the type it says
        f"{hashed('[127.0.0.1]:2222')} {pub(k1)}",
        f"[127.0.0.?]:22*,!127.0.0.9 {pub(k2)}",
        f"*.example,!bad.example {pub(k3)}",
        f"plain.test,PLAIN2.test {pub(k4)}   a comment",
    ]) + "\n")  # fmt: skip
    known = KnownHosts.load(kh)

    def keys(host, port=22):
        return [line.fingerprint for line in known.lookup(host, port).keys]

    fp = {n: plain(k).fingerprint for n, k in (("k1", k1), ("k2", k2), ("k3", k3), ("k4", k4), ("k5", k5))}
    assert keys("127.0.0.1", 2222) == [fp["k1"], fp["k2"]]  # hashed, and a pattern on [host]:port
    assert keys("127.0.0.9", 2222) == [fp["k2"]]  # the negation is about 127.0.0.9, not [127.0.0.9]:2222
    assert keys("127.0.0.1", 22) == []  # off port 22 only
    assert keys("web.example") == [fp["k3"]] and keys("bad.example") == []  # negated
    assert keys("plain.test") == keys("plain2.test") == [fp["k4"]]  # names are case-insensitive
    assert fp["k5"] not in {line.fingerprint for line in known.lines}  # the bad lines were skipped, not guessed at
    assert [c.fingerprint for c in known.lookup("db.corp.example", 22).cas] == [plain(other_ca).fingerprint]
    assert known.lookup("127.0.0.1", 2222).cas == ()
    assert known.revoked(plain(stolen).asbytes()).number == 2
    # paramiko's own reader could not read this file at all; the lookups sshexec makes can.
    with pytest.raises(Exception):
        paramiko.HostKeys(str(kh))


@pytest.mark.parametrize(
    "hosts, name, matched",
    [
        ("*", "[10.0.0.1]:2222", True),
        ("10.0.0.*", "[10.0.0.1]:2222", False),
        ("[10.0.0.*]:2222", "[10.0.0.1]:2222", True),
        ("w?.example", "w1.example", True),
        ("w?.example", "w10.example", False),
        ("!w1.example", "w1.example", False),  # a negation alone matches nothing
        ("*,!w1.example", "w2.example", True),
        ("a,b,,c", "c", True),
    ],
)
def test_host_patterns_match_as_openssh_matches_them(hosts, name, matched):
    assert hosts_match(hosts, name) is matched


# -- host certificates and revocations, judged ------------------------------------------------


@pytest.fixture
def pki(tmp_path):
    """A host CA, another CA, a host key, and known_hosts trusting the first CA for [127.0.0.1]:2222."""
    ca, other, host = keygen(tmp_path, "host-ca"), keygen(tmp_path, "other-ca"), keygen(tmp_path, "host-key")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"@cert-authority *.corp.example {pub(other)}\n@cert-authority [127.0.0.1]:2222,[localhost]:2222 {pub(ca)}\n")
    return {"ca": ca, "other": other, "host": host, "kh": kh, "dir": tmp_path}


def verdict(pki, key, host="127.0.0.1"):
    return judge(pki["kh"], host, 2222, key)


def test_a_certificate_signed_by_the_trusted_ca_is_accepted_with_no_key_in_known_hosts(pki):
    v = verdict(pki, sign(pki["dir"], pki["ca"], pki["host"]))
    assert v.accepted and v.status == "certified" and f"{pki['kh']}:2" in v.ca
    assert verdict(pki, sign(pki["dir"], pki["ca"], pki["host"]), host="localhost").status == "certified"


@pytest.mark.parametrize(
    "how, words",
    [
        ({"ca": "other"}, "is signed by another CA"),
        ({"validity": "20200101:20200102"}, "expired at 2020-01-02"),
        ({"validity": "+1d:+2d"}, "is not valid before"),
        ({"principals": "db.corp.example"}, "is for db.corp.example, not for 127.0.0.1"),
        ({"host": False, "principals": "deploy"}, "a user certificate ('w'), not a host certificate"),
    ],
    ids=["other-ca", "expired", "not-yet-valid", "wrong-principal", "user-certificate"],
)
def test_a_certificate_the_trusted_ca_does_not_vouch_for_is_refused(pki, how, words):
    how = dict(how)
    ca = pki[how.pop("ca", "ca")]
    v = verdict(pki, sign(pki["dir"], ca, pki["host"], **how))
    assert v.status == "refused" and words in v.reason, v.reason
    # As OpenSSH does, a known plain key still lets the host in: the certificate only adds a way.
    with pki["kh"].open("a") as f:
        f.write(f"[127.0.0.1]:2222 {pub(pki['host'])}\n")
    assert verdict(pki, sign(pki["dir"], ca, pki["host"], **how)).status == "known"


def test_a_revoked_key_is_refused_for_every_host_even_when_known_or_certified(pki):
    with pki["kh"].open("a") as f:
        f.write(f"[127.0.0.1]:2222 {pub(pki['host'])}\n@revoked never-dialed.example {pub(pki['host'])}\n")
    for key in (plain(pki["host"]), sign(pki["dir"], pki["ca"], pki["host"])):
        v = verdict(pki, key)
        assert v.status == "revoked" and f"{pki['kh']}:4: @revoked never-dialed.example" in v.reason


def test_a_certificate_signed_by_a_revoked_ca_is_refused(pki):
    with pki["kh"].open("a") as f:
        f.write(f"@revoked * {pub(pki['ca'])}\n")
    v = verdict(pki, sign(pki["dir"], pki["ca"], pki["host"]))
    assert v.status == "revoked" and "the CA that signed its certificate" in v.reason


def test_a_plain_key_where_a_ca_is_trusted_is_unknown_and_says_why(pki):
    v = verdict(pki, plain(pki["host"]))
    assert v.status == "unknown" and "presented a plain key, no host certificate" in v.reason
