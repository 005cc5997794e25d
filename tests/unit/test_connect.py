"""Connecting, against in-process SSH servers: every hop's host key, shared jump hosts, channels, keys."""

from __future__ import annotations

import subprocess
import threading
import time

import paramiko
import pytest
import yaml
from fakessh import FakeSSH

from sshexec.config.inventory import load_inventory
from sshexec.errors import AuthError, ChangedHostKey, UnknownHostKey
from sshexec.ssh import Connection


@pytest.fixture
def client_key(tmp_path):
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def inventory(tmp_path, key_path, workers, known_hosts="", defaults=None):
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts)
    data = {"defaults": {"user": "deploy", "identity_file": str(key_path), "known_hosts": str(kh), "connect_timeout": 5, **(defaults or {})}, "workers": workers}
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_inventory(path)


def server(key_path, **kw) -> FakeSSH:
    return FakeSSH(paramiko.PKey.from_path(str(key_path)), **kw)


def test_unknown_worker_key_is_refused_before_any_credential(tmp_path, client_key):
    with server(client_key) as w:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": w.port}])
        with pytest.raises(UnknownHostKey) as err:
            Connection(inv.worker("w1"), retries=1).open()
    assert w.host_key.fingerprint in err.value.message and err.value.hop is None
    assert err.value.hint == "if that fingerprint is right, run: sshexec trust --worker w1"
    assert w.seen.auth == []  # no key was offered to an unverified server
    assert (tmp_path / "known_hosts").read_text() == ""


def test_changed_worker_key_is_refused(tmp_path, client_key):
    other = paramiko.ECDSAKey.generate()
    with server(client_key) as w:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": w.port}], f"[127.0.0.1]:{w.port} {other.get_name()} {other.get_base64()}\n")
        with pytest.raises(ChangedHostKey) as err:
            Connection(inv.worker("w1"), retries=1).open()
    assert "man-in-the-middle" in err.value.message and other.fingerprint in err.value.message
    assert w.seen.auth == []


def test_known_key_connects_and_runs(tmp_path, client_key):
    with server(client_key, on_exec=lambda cmd: (0, b"hi " + cmd.encode(), b"")) as w:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": w.port}], w.known_hosts_line)
        with Connection(inv.worker("w1"), retries=1) as conn:
            res = conn.run("true")
    assert res.ok and res.stdout == b"hi true"
    assert [user for user, _ in w.seen.auth] == ["deploy"]


def jump_inventory(tmp_path, client_key, bastion, worker, known):
    return inventory(
        tmp_path, client_key,
        [{"name": "bastion", "host": "127.0.0.1", "port": bastion.port}, {"name": "w1", "host": "127.0.0.1", "port": worker.port, "pools": ["p"], "jump": "bastion"}],
        known,
    )  # fmt: skip


def test_jump_host_with_unknown_key_is_refused_and_nothing_reaches_the_worker(tmp_path, client_key):
    with server(client_key) as b, server(client_key) as w:
        inv = jump_inventory(tmp_path, client_key, b, w, w.known_hosts_line)
        with pytest.raises(UnknownHostKey) as err:
            Connection(inv.worker("w1"), retries=1).open()
    assert err.value.hop == "bastion" and err.value.worker == "w1"
    assert "jump host bastion" in err.value.message and b.host_key.fingerprint in err.value.message
    assert "sshexec trust --worker w1" in err.value.hint
    assert b.seen.auth == [] and b.seen.forwards == [] and w.seen.connections == 0


def test_jump_host_with_changed_key_is_refused(tmp_path, client_key):
    other = paramiko.ECDSAKey.generate()
    with server(client_key) as b, server(client_key) as w:
        known = f"[127.0.0.1]:{b.port} {other.get_name()} {other.get_base64()}\n" + w.known_hosts_line
        inv = jump_inventory(tmp_path, client_key, b, w, known)
        with pytest.raises(ChangedHostKey) as err:
            Connection(inv.worker("w1"), retries=1).open()
    assert err.value.hop == "bastion" and "man-in-the-middle" in err.value.message
    assert b.seen.auth == [] and w.seen.connections == 0


def test_worker_behind_a_good_jump_host_still_has_its_key_checked(tmp_path, client_key):
    with server(client_key) as b, server(client_key) as w:
        inv = jump_inventory(tmp_path, client_key, b, w, b.known_hosts_line)
        with pytest.raises(UnknownHostKey) as err:
            Connection(inv.worker("w1"), retries=1).open()
    assert err.value.hop is None and w.host_key.fingerprint in err.value.message
    assert w.seen.auth == []


def test_proxyjump_from_ssh_config_verifies_the_jump_host(tmp_path, client_key, monkeypatch):
    """The defect: ProxyJump in ~/.ssh/config used to connect whatever key the jump host offered."""
    from sshexec.ssh._route import reset_ssh_config

    with server(client_key) as b, server(client_key) as w:
        cfg = tmp_path / "ssh_config"
        cfg.write_text(f"Host behind\n  HostName 127.0.0.1\n  Port {w.port}\n  ProxyJump deploy@127.0.0.1:{b.port}\n")
        monkeypatch.setenv("SSHEXEC_SSH_CONFIG", str(cfg))
        reset_ssh_config()
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "behind"}], w.known_hosts_line)
        with pytest.raises(UnknownHostKey) as err:
            Connection(inv.worker("w1"), retries=1).open()
        assert err.value.hop == f"deploy@127.0.0.1:{b.port}" and b.seen.auth == []
        other = paramiko.ECDSAKey.generate()
        (tmp_path / "known_hosts").write_text(w.known_hosts_line + f"[127.0.0.1]:{b.port} {other.get_name()} {other.get_base64()}\n")
        with pytest.raises(ChangedHostKey):
            Connection(inv.worker("w1"), retries=1).open()
        assert b.seen.auth == []
        (tmp_path / "known_hosts").write_text(w.known_hosts_line + b.known_hosts_line)
        with Connection(inv.worker("w1"), retries=1) as conn:
            assert conn.run("x").ok
        assert b.seen.forwards == [("127.0.0.1", w.port)]


def test_workers_behind_one_jump_host_share_one_connection_to_it(tmp_path, client_key):
    with server(client_key) as b, server(client_key) as w1, server(client_key) as w2:
        inv = inventory(
            tmp_path, client_key,
            [{"name": "bastion", "host": "127.0.0.1", "port": b.port},
             {"name": "w1", "host": "127.0.0.1", "port": w1.port}, {"name": "w2", "host": "127.0.0.1", "port": w2.port}],
            b.known_hosts_line + w1.known_hosts_line + w2.known_hosts_line, defaults={"jump": "bastion"},
        )  # fmt: skip
        assert inv.worker("bastion").jump == ()  # the bastion does not jump through itself
        c1, c2 = Connection(inv.worker("w1"), retries=1).open(), Connection(inv.worker("w2"), retries=1).open()
        try:
            assert c1.run("a").ok and c2.run("b").ok
            assert b.seen.connections == 1 and len(b.seen.forwards) == 2
        finally:
            c1.close()
            c2.close()
        c3 = Connection(inv.worker("w1"), retries=1).open()  # the last user closed it: a new one
        c3.close()
        assert b.seen.connections == 2


def test_trust_offers_every_hop_in_order_and_adds_what_is_confirmed(tmp_path, client_key):
    from sshexec.ssh.trust import NotConfirmed, trust_worker

    with server(client_key) as b, server(client_key) as w:
        inv = jump_inventory(tmp_path, client_key, b, w, "")
        asked = []
        with pytest.raises(NotConfirmed):
            trust_worker(inv.worker("w1"), lambda hk: asked.append(hk) or False)
        assert [(hk.hop, hk.status) for hk in asked] == [("bastion", "unknown")]
        assert w.seen.connections == 0 and (tmp_path / "known_hosts").read_text() == ""

        keys = trust_worker(inv.worker("w1"), lambda hk: True)
        assert [(k.hop, k.status, k.added, k.fingerprint) for k in keys] == [
            ("bastion", "unknown", True, b.host_key.fingerprint), (None, "unknown", True, w.host_key.fingerprint)]  # fmt: skip
        again = trust_worker(inv.worker("w1"), lambda hk: pytest.fail("nothing to confirm"))
        assert [k.status for k in again] == ["known", "known"]
        with Connection(inv.worker("w1"), retries=1) as conn:
            assert conn.run("x").ok


def test_channels_wait_for_a_free_session_past_max_sessions(tmp_path, client_key):
    fake: list = []

    def held(cmd):
        # The first commands hold their sessions until the server has refused one: the
        # refusal is certain, however the threads happen to be scheduled.
        end = time.monotonic() + 10
        while not fake[0].seen.refused and time.monotonic() < end:
            time.sleep(0.02)
        return 0, cmd.encode(), b""

    with server(client_key, max_sessions=2, on_exec=held) as w:
        fake.append(w)
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": w.port}], w.known_hosts_line)
        with Connection(inv.worker("w1"), retries=1) as conn:
            results = [None] * 6

            def one(i):
                results[i] = conn.run(f"c{i}", timeout=20)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [r.stdout for r in results] == [f"c{i}".encode() for i in range(6)]
            assert w.seen.refused >= 1 and conn.gate.limit <= 2


def test_probe_needs_no_session(tmp_path, client_key):
    with server(client_key) as w:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": w.port}], w.known_hosts_line)
        with Connection(inv.worker("w1"), retries=1) as conn:
            before = w.seen.sessions
            conn.probe(timeout=5)
            assert w.seen.sessions == before


def test_no_key_anywhere_says_so(tmp_path, client_key, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with server(client_key) as w:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": w.port}], w.known_hosts_line)
        worker = inv.worker("w1")
        import dataclasses

        with pytest.raises(AuthError) as err:
            Connection(dataclasses.replace(worker, identity_file=None), retries=1).open()
    assert "no key to log in" in err.value.message and "SSH_AUTH_SOCK is not set" in err.value.message
    assert "ssh-add" in err.value.hint


def sign(tmp_path, key_path, *, principals="deploy", validity="+1h"):
    ca = tmp_path / "ca"
    if not ca.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "test-cert", "-n", principals, "-V", validity, f"{key_path}.pub"], check=True, capture_output=True)
    return tmp_path / f"{key_path.name}-cert.pub"


def test_certificate_problems_are_explained(tmp_path, client_key):
    from sshexec.ssh._login import read_certificate

    sign(tmp_path, client_key, validity="20200101:20200102")
    key = paramiko.PKey.from_path(str(client_key))  # picks up id_ed25519-cert.pub beside it
    cert = read_certificate(key)
    assert cert.key_id == "test-cert" and cert.principals == ("deploy",)
    assert "expired at 2020-01-02" in cert.problem("deploy")
    sign(tmp_path, client_key, principals="alice,bob")
    cert = read_certificate(paramiko.PKey.from_path(str(client_key)))
    assert cert.problem("deploy") == "certificate 'test-cert' is for alice, bob, not for user deploy"
    assert cert.problem("alice") is None
    assert read_certificate(paramiko.Ed25519Key.from_private_key_file(str(client_key))) is None


@pytest.fixture
def agent(tmp_path, client_key, monkeypatch):
    """A real ssh-agent holding the client key, stopped by PID afterwards."""
    sock = tmp_path / "agent.sock"
    out = subprocess.run(["ssh-agent", "-a", str(sock), "-s"], check=True, capture_output=True, text=True).stdout
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", "-q", str(client_key)], check=True, capture_output=True, env={"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"})
        yield sock
    finally:
        import os
        import signal

        os.kill(pid, signal.SIGTERM)


def test_without_identity_file_keys_come_from_the_agent(tmp_path, client_key, agent, monkeypatch):
    import dataclasses

    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))  # no ~/.ssh/id_* to fall back on
    with server(client_key) as w:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": w.port}], w.known_hosts_line)
        worker = dataclasses.replace(inv.worker("w1"), identity_file=None)
        with Connection(worker, retries=1) as conn:
            assert conn.run("x").ok
    assert len(w.seen.auth) == 1  # the agent's key, accepted at once


def test_a_certificate_of_another_key_is_refused_before_connecting(tmp_path, client_key):
    """paramiko only checks the key type; sshexec checks that the certificate certifies this very key."""
    from sshexec.ssh._login import certifies, load_key

    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    other_cert = sign(tmp_path, other)
    with pytest.raises(AuthError) as err:
        load_key("w1", client_key, other_cert)
    assert f"certificate_file {other_cert} does not fit identity_file {client_key}" in err.value.message
    assert "certifies another public key" in err.value.message and "ssh-keygen -L" in err.value.hint
    # The same certificate lying beside the key, as KEY-cert.pub.
    (tmp_path / f"{client_key.name}-cert.pub").write_bytes(other_cert.read_bytes())
    with pytest.raises(AuthError, match="does not fit identity_file"):
        load_key("w1", client_key)
    # A certificate of another key type (RSA for an ed25519 key).
    rsa = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    (tmp_path / f"{client_key.name}-cert.pub").write_bytes(sign(tmp_path, rsa).read_bytes())
    with pytest.raises(AuthError, match="does not fit identity_file"):
        load_key("w1", client_key)
    # Its own certificate fits.
    sign(tmp_path, client_key)
    assert certifies(load_key("w1", client_key))
    assert certifies(load_key("w1", rsa, tmp_path / "rsa-cert.pub"))


def test_unreachable_is_retried_and_a_cancel_ends_the_wait(tmp_path, client_key):
    import socket as socket_

    from sshexec.errors import Cancelled, UnreachableError

    with socket_.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": port}])
    conn = Connection(inv.worker("w1"), retries=3, backoff=0.01)
    with pytest.raises(UnreachableError) as err:
        conn.open()
    assert conn.attempts == 3 and err.value.attempts == 3 and "(after 3 attempts)" in err.value.message
    # An hour between attempts: only the cancel can end that wait.
    cancel, waiting = threading.Event(), threading.Event()
    slow = Connection(inv.worker("w1"), retries=5, backoff=3600, cancel=cancel)
    slow.on_retry = lambda n, exc: waiting.set()  # called once an attempt failed, before the wait
    raised: list[BaseException] = []

    def open_it():
        try:
            slow.open()
        except BaseException as exc:  # noqa: BLE001 - what it raised is the point
            raised.append(exc)

    t = threading.Thread(target=open_it, daemon=True)
    t.start()
    assert waiting.wait(60)  # the first attempt failed: it waits now
    cancel.set()
    t.join(60)  # a hang guard only: the wait would be an hour
    assert not t.is_alive() and len(raised) == 1 and isinstance(raised[0], Cancelled), raised
    assert slow.attempts == 1


@pytest.mark.parametrize(
    "banner, attempts, words",
    [
        (None, 3, "closed the connection before the SSH handshake, 3 times"),  # MaxStartups: asked again
        (b"SSH-2.0-then-gone\r\n", 1, "closed the connection during the SSH handshake"),  # a server that answered: not again
    ],
    ids=["no-banner", "banner-then-close"],
)
def test_only_a_close_before_the_banner_is_taken_for_a_maxstartups_drop(tmp_path, client_key, monkeypatch, banner, attempts, words):
    from labkit import PortRecorder

    import sshexec.ssh._dial as connect
    from sshexec.errors import UnreachableError

    monkeypatch.setattr(connect, "DROP_RETRIES", 3)
    rec = PortRecorder(banner=banner)
    try:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": rec.port}])
        with pytest.raises(UnreachableError, match=words):
            with Connection(inv.worker("w1"), retries=1):
                pass
        assert len(rec.accepted) == attempts
    finally:
        rec.close()


def test_a_server_that_stalls_the_key_exchange_is_unreachable_not_an_unexpected_error(tmp_path, client_key):
    """It sends its banner, then nothing: paramiko's start_client returns quietly at its timeout."""
    import socket as socket_

    from sshexec.errors import UnreachableError

    server = socket_.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list = []
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"SSH-2.0-OpenSSH_9.2 stalls\r\n")
            held.append(conn)  # reads nothing, answers nothing

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        inv = inventory(tmp_path, client_key, [{"name": "w1", "host": "127.0.0.1", "port": server.getsockname()[1]}], defaults={"connect_timeout": 1})
        with pytest.raises(UnreachableError) as err:
            with Connection(inv.worker("w1"), retries=1):
                pass
        assert "127.0.0.1" in err.value.message and "connect_timeout" in (err.value.hint or "") + err.value.message, err.value.message
        assert len(held) == 1
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        server.close()
