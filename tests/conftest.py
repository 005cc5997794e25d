"""Keep the developer's own environment out of the tests."""

import os

import pytest

# testcontainers on this machine kind (shared/LAB.md): no ryuk, talk to 127.0.0.1.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """No ~/.ssh/config, no inherited inventory, a private state directory per test."""
    home = tmp_path_factory.mktemp("sshexec-home")
    monkeypatch.setenv("SSHEXEC_HOME", str(home))
    monkeypatch.setenv("SSHEXEC_SSH_CONFIG", os.devnull)
    monkeypatch.delenv("SSHEXEC_INVENTORY", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("SSHEXEC_CONNECT_RETRIES", "1")
    from sshexec.ssh._route import reset_ssh_config

    reset_ssh_config()
    yield
    reset_ssh_config()
