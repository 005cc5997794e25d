import textwrap

import pytest

from sshexec.config.inventory import load_inventory
from sshexec.errors import InputError


def write(tmp_path, text, name="inv.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_are_inherited_and_overridden(tmp_path):
    p = write(tmp_path, """
        defaults:
          user: deploy
          port: 2200
          identity_file: keys/id
          known_hosts: ~/kh
          docker: sudo -n docker
        workers:
          - {name: w1, host: 10.0.0.1, pools: [linux]}
          - {name: w2, host: build-box, port: 22, user: ci, pools: [linux, gpu], work_root: /srv/sx}
        feeds:
          - {name: lab, registry: 127.0.0.1:5000, username: ci, password_env: LAB_PW}
    """)
    inv = load_inventory(p)
    w1, w2 = inv.workers
    assert (w1.user, w1.port, w1.docker) == ("deploy", 2200, ("sudo", "-n", "docker"))
    assert w1.identity_file == tmp_path / "keys/id"
    assert str(w1.known_hosts).startswith("/") and not str(w1.known_hosts).startswith("~")
    assert w1.work_root == "~/.sshexec"
    assert (w2.user, w2.port, w2.work_root) == ("ci", 22, "/srv/sx")
    assert inv.pools == {"linux", "gpu"}
    assert [w.name for w in inv.pool("gpu")] == ["w2"]
    assert inv.feed("lab").registry == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("workers:\n  - {name: w1, host: h, colour: red}\n", 2, "workers[w1].colour", "unknown key"),
        ("workers:\n  - name: w1\n    port: 22\n", 2, "workers[w1].host", "required"),
        ("workers:\n  - {name: w1, host: a}\n  - {name: w1, host: b}\n", 3, "workers[w1].name", "duplicate worker"),
        ("workers:\n  - {name: w1, host: a, port: 70000}\n", 2, "workers[w1].port", "less than or equal"),
        ("workers:\n  - {name: w1, host: a, port: ssh}\n", 2, "workers[w1].port", "a port is a whole number from 1 to 65535, not 'ssh'"),
        ("workers:\n  - {name: W_1, host: a}\n", 2, "workers[W_1].name", "'W_1' is not allowed: did you mean 'w_1'? (it may hold only lowercase letters, digits and _ . -"),
        ("workers:\n  - {name: w1, host: 'a; rm -rf /'}\n", 2, "workers[w1].host", "is not allowed: it may hold only a host name, an IP address or an ~/.ssh/config alias"),
        ("workers: [\n", 2, None, "invalid YAML"),
        ("defaults:\n  work_root: relative/dir\nworkers:\n  - {name: w1, host: a}\n", 2, "defaults.work_root", "absolute"),
        ("defaults:\n  docker: 'docker; reboot'\nworkers:\n  - {name: w1, host: a}\n", 2, "defaults.docker", "unsupported character"),
        ("workers:\n  - {name: w1, host: a}\nfeeds:\n  - {name: f, registry: r:5000, username: u}\n", 4, "feeds[f]", "password_env"),
    ],
)
def test_bad_inventories_name_file_line_and_field(tmp_path, text, line, field, words):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_inventory(p)
    err = info.value
    assert err.exit_code == 2
    assert err.file == str(p)
    assert err.line == line
    if field:
        assert err.field == field
    assert words in str(err)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_inventory(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="empty"):
        load_inventory(write(tmp_path, ""))
    with pytest.raises(InputError, match="mapping"):
        load_inventory(write(tmp_path, "- a\n- b\n"))


def test_inventory_path_from_environment(tmp_path, monkeypatch):
    p = write(tmp_path, "workers:\n  - {name: w9, host: a}\n")
    monkeypatch.setenv("SSHEXEC_INVENTORY", str(p))
    assert load_inventory().workers[0].name == "w9"


def test_select_by_pool_and_worker(tmp_path):
    inv = load_inventory(write(tmp_path, "workers:\n  - {name: a, host: h, pools: [x]}\n  - {name: b, host: h, pools: [y]}\n"))
    assert [w.name for w in inv.select(pool="x")] == ["a"]
    assert [w.name for w in inv.select(worker="b")] == ["b"]
    with pytest.raises(InputError, match="pool 'z'"):
        inv.select(pool="z")
    with pytest.raises(InputError, match="not in pool"):
        inv.select(pool="x", worker="b")
    with pytest.raises(InputError, match="no worker named"):
        inv.worker("c")


def test_feed_password_from_environment(tmp_path, monkeypatch):
    inv = load_inventory(write(tmp_path, "workers:\n  - {name: a, host: h}\nfeeds:\n  - {name: f, registry: r:1, username: u, password_env: F_PW}\n"))
    monkeypatch.delenv("F_PW", raising=False)
    with pytest.raises(InputError, match="F_PW"):
        inv.feed("f").password()
    monkeypatch.setenv("F_PW", "registry-pw")
    assert inv.feed("f").password() == "registry-pw"


@pytest.mark.parametrize("short", ["", "x", "pw", "1234567"])
def test_a_feed_password_too_short_to_mask_is_refused(tmp_path, monkeypatch, short):
    inv = load_inventory(write(tmp_path, "workers:\n  - {name: a, host: h}\nfeeds:\n  - {name: f, registry: r:1, username: u, password_env: F_PW}\n"))
    monkeypatch.setenv("F_PW", short)
    with pytest.raises(InputError) as info:
        inv.feed("f").password()
    err = info.value
    assert err.exit_code == 2 and err.field == "feeds[f].password_env"
    assert "$F_PW" in str(err) and ("is empty" if not short else "shorter than 8 characters") in str(err)
    assert not short or short not in str(err).replace("F_PW", "")  # names the variable, never the value
    monkeypatch.setenv("F_PW", "12345678")
    assert inv.feed("f").password() == "12345678"  # 8 characters are enough


def test_jumps_resolve_through_workers_and_addresses(tmp_path):
    p = write(tmp_path, """
        defaults: {user: deploy, identity_file: keys/id, jump: bastion}
        workers:
          - {name: bastion, host: 127.0.0.1, port: 2200, user: ops}
          - {name: inner, host: inner.lan, pools: [p]}
          - {name: deep, host: deep.lan, pools: [p], jump: inner}
          - {name: far, host: far.lan, pools: [p], jump: ["ci@10.0.0.9:2222"]}
          - {name: direct, host: direct.lan, pools: [p], jump: []}
    """)
    inv = load_inventory(p)
    assert inv.worker("bastion").jump == ()  # inherited, but never through itself
    (hop,) = inv.worker("inner").jump
    assert (hop.label, hop.host, hop.port, hop.user, hop.identity_file) == ("bastion", "127.0.0.1", 2200, "ops", tmp_path / "keys/id")
    assert [h.label for h in inv.worker("deep").jump] == ["bastion", "inner"]
    (hop,) = inv.worker("far").jump
    assert (hop.label, hop.host, hop.port, hop.user) == ("ci@10.0.0.9:2222", "10.0.0.9", 2222, "ci")
    assert inv.worker("direct").jump == ()


def test_docker_host_is_set_on_every_docker_command(tmp_path):
    p = write(tmp_path, """
        defaults: {docker: sudo -n docker}
        workers:
          - {name: w1, host: a, docker_host: "unix:///run/user/1000/docker.sock"}
          - {name: w2, host: b, docker_host: "tcp://10.0.0.5:2375"}
          - {name: w3, host: c}
    """)
    w1, w2, w3 = load_inventory(p).workers
    assert w1.docker == ("sudo", "-n", "docker", "--host", "unix:///run/user/1000/docker.sock")
    assert w2.docker[-2:] == ("--host", "tcp://10.0.0.5:2375")
    assert w3.docker == ("sudo", "-n", "docker") and w3.docker_host is None


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("workers:\n  - {name: w1, host: a, jump: bastoin}\n", 2, "workers[w1].jump", "jump 'bastoin' names no worker"),
        ("defaults: {jump: gw}\nworkers:\n  - {name: w1, host: a}\n", 1, "defaults.jump", "names no worker"),
        ("workers:\n  - {name: a, host: a, jump: b}\n  - {name: b, host: b, jump: a}\n", 3, "workers[b].jump", "cycle of jumps: a → b → a"),
        ("workers:\n  - {name: a, host: a, jump: a}\n", 2, "workers[a].jump", "cycle of jumps"),
        ("workers:\n  - {name: w1, host: a, jump: 'ci@@h:22'}\n", 2, "workers[w1].jump", "neither a worker name nor user@host:port"),
        ("workers:\n  - {name: w1, host: a, jump: 'ci@h:99999'}\n", 2, "workers[w1].jump", "port must be between"),
        ("workers:\n  - {name: w1, host: a, jump: 'h; rm -rf /'}\n", 2, "workers[w1].jump", "neither a worker name"),
        ("workers:\n  - {name: w1, host: a, jump: [a.b, c.d, e.f]}\n", 2, "workers[w1].jump", "at most 2"),
        ("workers:\n  - {name: b1, host: x, jump: b2}\n  - {name: b2, host: y, jump: b3}\n  - {name: b3, host: z}\n  - {name: w, host: a, jump: b1}\n", 5, "workers[w].jump", "3 jump hosts"),
        ("workers:\n  - {name: w1, host: a, docker_host: 'ssh://h'}\n", 2, "workers[w1].docker_host", "unix:///"),
        ("workers:\n  - {name: w1, host: a, docker_host: 'unix://relative.sock'}\n", 2, "workers[w1].docker_host", "unix:///"),
        ("workers:\n  - {name: w1, host: a, docker_host: 'tcp://h'}\n", 2, "workers[w1].docker_host", "tcp://host:port"),
        ("workers:\n  - {name: w1, host: a, docker_host: 'unix:///x;rm'}\n", 2, "workers[w1].docker_host", "unix:///"),
    ],
)
def test_bad_jumps_and_docker_hosts_name_file_line_and_field(tmp_path, text, line, field, words):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_inventory(p)
    e = err.value
    assert (e.file, e.line, e.field) == (str(p), line, field), e.message
    assert words in e.message


def test_the_example_inventory_loads():
    """inventory/workers.example.yaml, which the README tells a new user to copy, stays valid."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "inventory" / "workers.example.yaml"
    inv = load_inventory(example)
    assert {w.name for w in inv.workers} == {"bastion", "build-1", "build-2", "deploy-1"}
    assert [h.label for h in inv.worker("build-2").jump] == ["bastion", "ops@10.0.0.1:22"]
    assert inv.worker("bastion").jump == () and inv.worker("deploy-1").jump == ()
    assert inv.worker("deploy-1").docker[-2:] == ("--host", "unix:///run/user/1000/docker.sock")
    from sshexec.config.inventory import FeedSpec, WorkerSpec

    keys = {line.split(":")[0].strip().lstrip("#- ").strip() for line in example.read_text().splitlines() if ":" in line}
    for key in [*WorkerSpec.model_fields, *FeedSpec.model_fields]:
        assert key in keys, f"inventory/workers.example.yaml does not show the key {key}: add it, with a comment"
