"""`sshexec trust`: offer the host key of every hop on the way to a worker, and add the ones confirmed.

Hops are visited in order: a jump host's key must be trusted before the next
hop can be reached through it. A key already in known_hosts passes silently,
and so does a host whose certificate a CA of known_hosts vouches for (nothing
is written for it: the CA covers it); an unknown key is shown (`confirm(hop)`
decides); a changed key is refused unless `replace` is given and confirmed
too. A revoked key, or a certificate the trusted CA does not vouch for, is
refused, never added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import paramiko

from ..config.inventory import Worker
from ..errors import ChangedHostKey, InputError
from ._dial import Endpoint, walk_route
from .hostkeys import add_known_host, fingerprint, judge, refusal


@dataclass(frozen=True)
class HopKey:
    """The host key one hop offers, and how it compares with known_hosts."""

    worker: str
    hop: str | None  # the jump host's label; None for the worker itself
    name: str  # its known_hosts name: host, or [host]:port
    key: paramiko.PKey
    status: str  # "known", "certified" (a CA of known_hosts vouches for its certificate), "unknown" or "changed"
    known: tuple[str, ...] = ()  # fingerprints already there, for a changed key
    added: bool = False
    ca: str = ""  # certified: the @cert-authority line that covers it

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def what(self) -> str:
        return f"jump host {self.hop} ({self.name})" if self.hop else f"{self.worker} ({self.name})"

    def to_dict(self) -> dict:
        return {
            "hop": self.hop,
            "host": self.name,
            "key_type": self.key.get_name(),
            "fingerprint": self.fingerprint,
            "status": self.status,
            "known": list(self.known),
            "added": self.added,
            "ca": self.ca or None,
        }


class NotConfirmed(InputError):
    """The person did not confirm a key (exit 2): nothing more was contacted."""


def trust_worker(worker: Worker, confirm: Callable[[HopKey], bool], *, replace: bool = False) -> list[HopKey]:
    """Walk the worker's route, adding each confirmed unknown (or, with `replace`, changed) key.

    Returns one HopKey per hop, in order. Raises NotConfirmed when a key is
    declined, ChangedHostKey for a changed key without `replace`.
    """
    seen: list[HopKey] = []

    def on_key(ep: Endpoint, key: paramiko.PKey, hop: str | None) -> None:
        v = judge(worker.known_hosts, ep.host, ep.port, key)
        if v.status in ("known", "certified"):
            seen.append(HopKey(worker.name, hop, v.name, key, v.status, ca=v.ca))
            return
        if v.status in ("revoked", "refused"):
            raise refusal(v, worker=worker.name, hop=hop, path=worker.known_hosts)
        status, name = v.status, v.name
        hk = HopKey(worker.name, hop, name, key, status, v.known)
        if status == "changed" and not replace:
            raise ChangedHostKey(
                worker.name,
                f"known_hosts already has a different key for {hk.what} ({', '.join(hk.known)}); it offers {key.get_name()} {hk.fingerprint}",
                fingerprint=hk.fingerprint,
                hop=hop,
                hint="if that host was really reinstalled, run again with --replace",
            )
        if not confirm(hk):
            raise NotConfirmed(f"the key of {hk.what} was not added; nothing after it was contacted")
        add_known_host(worker.known_hosts, name, key, replace=status == "changed")
        seen.append(HopKey(worker.name, hop, name, key, status, hk.known, added=True))

    walk_route(worker, on_key)
    return seen
