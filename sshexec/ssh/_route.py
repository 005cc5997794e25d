"""Where a worker is: its route (jump hosts first, the worker last), each hop resolved through ~/.ssh/config.

    route(worker)   the inventory's `jump:`, else ProxyJump of ~/.ssh/config, then the worker;
                    each an Endpoint (host, port, user, identities, ProxyCommand) as OpenSSH
                    would resolve it
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..config.inventory import Worker
from ..errors import UnreachableError

log = logging.getLogger("sshexec")


# -- ~/.ssh/config ---------------------------------------------------------------------

_ssh_config_obj = None
_ssh_config_lock = threading.Lock()


def ssh_config():
    """One parsed OpenSSH client config for the process (paramiko's SSHConfig, Includes resolved:
    _sshconfig.py): ~/.ssh/config then /etc/ssh/ssh_config, or only $SSHEXEC_SSH_CONFIG if set."""
    global _ssh_config_obj
    with _ssh_config_lock:
        if _ssh_config_obj is None:
            from . import _sshconfig

            override = os.environ.get("SSHEXEC_SSH_CONFIG")
            if override is not None:
                _ssh_config_obj = _sshconfig.load(Path(override) if override else None, None)
            else:
                _ssh_config_obj = _sshconfig.load(Path.home() / ".ssh" / "config", Path("/etc/ssh/ssh_config"))
        return _ssh_config_obj


def reset_ssh_config() -> None:
    """Forget the parsed ~/.ssh/config (tests point SSHEXEC_SSH_CONFIG elsewhere)."""
    global _ssh_config_obj
    with _ssh_config_lock:
        _ssh_config_obj = None


def _lookup(host: str) -> dict:
    return dict(ssh_config().lookup(host))


# -- the route ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One machine to log in to on the way: a jump host or the worker itself."""

    label: str  # how messages name it: the worker's name or the jump host as written
    host: str  # after ~/.ssh/config
    port: int
    user: str
    identity_file: Path | None  # from the inventory; None: ssh config, agent, ~/.ssh
    certificate_file: Path | None
    config_identities: tuple[str, ...] = ()  # IdentityFile of ~/.ssh/config
    config_certificates: tuple[str, ...] = ()  # CertificateFile of ~/.ssh/config
    proxy_command: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _endpoint(label: str, host: str, port: int | None, user: str | None, identity: Path | None, cert: Path | None) -> Endpoint:
    cfg = _lookup(host)
    return Endpoint(
        label=label,
        host=cfg.get("hostname", host),
        port=int(port or cfg.get("port") or 22),
        user=user or cfg.get("user") or getpass.getuser(),
        identity_file=identity,
        certificate_file=cert,
        config_identities=tuple(cfg.get("identityfile") or ()),
        config_certificates=tuple(cfg.get("certificatefile") or ()),
        proxy_command=cfg.get("proxycommand") if cfg.get("proxycommand", "none").lower() != "none" else None,
    )


def _proxy_jump(worker: Worker) -> list[Endpoint]:
    """ProxyJump of ~/.ssh/config for the worker's host: `[user@]host[:port]`, comma-separated."""
    value = _lookup(worker.host).get("proxyjump")
    if not value or value.lower() == "none":
        return []
    hops = []
    for word in value.split(","):
        word = word.strip()
        user, _, rest = word.rpartition("@")
        host, port = rest, None
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            port = tail.removeprefix(":") or None
        elif rest.count(":") == 1:
            host, port = rest.split(":")
        if port is not None and not port.isdigit():
            raise UnreachableError(worker.name, f"cannot read ProxyJump {value!r} in your ssh config", hint="write it as [user@]host[:port], comma-separated")
        hops.append(_endpoint(word, host, int(port) if port else None, user or None, worker.identity_file, worker.certificate_file))
    return hops


def route(worker: Worker) -> list[Endpoint]:
    """Every machine to log in to, jump hosts first, the worker last."""
    if worker.jump:
        hops = [_endpoint(h.label, h.host, h.port, h.user, h.identity_file, h.certificate_file) for h in worker.jump]
    else:
        hops = _proxy_jump(worker)
    final = _endpoint(worker.name, worker.host, worker.port, worker.user, worker.identity_file, worker.certificate_file)
    return [*hops, final]
