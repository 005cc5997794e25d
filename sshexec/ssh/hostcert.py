"""OpenSSH host certificates: what a host presented, and whether a CA of known_hosts vouches for it.

paramiko negotiates a `*-cert-v01@openssh.com` host key and checks that the
host holds the certified key, but leaves the certificate itself to the
caller. `cryptography` parses it and verifies its signature; `problem()` holds
it to what OpenSSH's client asks of a host certificate: signed by a CA trusted
for that host, of type host, the dialed name among its principals, within its
validity, no critical option.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import paramiko
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, SSHCertificate, SSHCertificateType, load_ssh_public_identity

from .known_hosts import Line, blob_fingerprint

CERT_SUFFIX = "-cert-v01@openssh.com"


@dataclass(frozen=True)
class HostCertificate:
    """A host certificate as presented: the parsed certificate and its CA's key (wire form)."""

    cert: SSHCertificate
    ca_blob: bytes

    @property
    def key_id(self) -> str:
        return self.cert.key_id.decode("utf-8", "replace")

    @property
    def ca_fingerprint(self) -> str:
        return blob_fingerprint(self.ca_blob)

    @property
    def principals(self) -> list[str]:
        return [p.decode("utf-8", "replace") for p in self.cert.valid_principals]


def presented(key: paramiko.PKey) -> HostCertificate | None:
    """The certificate a host presented with its key (None: a plain key).

    ValueError if it cannot be parsed: a host sending a certificate nobody can read is refused.
    """
    blob = getattr(key, "public_blob", None)
    if blob is None or not blob.key_type.endswith(CERT_SUFFIX):
        return None
    try:
        cert = load_ssh_public_identity(f"{blob.key_type} {base64.b64encode(blob.key_blob).decode()}".encode())
        if not isinstance(cert, SSHCertificate):
            raise ValueError("not a certificate")
        signer = cert.signature_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1]
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"a key type cryptography cannot read: {exc}") from None
    return HostCertificate(cert, base64.b64decode(signer))


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def problem(hc: HostCertificate, cas: tuple[Line, ...], name: str, *, now: float | None = None) -> str | None:
    """Why the CAs trusted for this host do not vouch for `hc` (None: they do). `name` is the host dialed."""
    c = hc.cert
    ours = " or ".join(ca.describe() for ca in cas)
    if not any(ca.blob == hc.ca_blob for ca in cas):
        return f"its certificate '{hc.key_id}' is signed by another CA ({hc.ca_fingerprint}), not by the one known_hosts trusts for it, {ours}"
    if c.type != SSHCertificateType.HOST:
        return f"it presented a user certificate ('{hc.key_id}'), not a host certificate"
    try:
        c.verify_cert_signature()
    except InvalidSignature:
        return f"the signature of its certificate '{hc.key_id}' does not verify with its CA's key"
    if not hc.principals:
        return f"its certificate '{hc.key_id}' names no host (no principals); sshexec needs {name} among them"
    if name not in hc.principals:
        return f"its certificate '{hc.key_id}' is for {', '.join(hc.principals)}, not for {name}"
    now = time.time() if now is None else now
    if now < c.valid_after:
        return f"its certificate '{hc.key_id}' is not valid before {_utc(c.valid_after)}"
    if now >= c.valid_before:
        return f"its certificate '{hc.key_id}' expired at {_utc(c.valid_before)}"
    if c.critical_options:
        return f"its certificate '{hc.key_id}' carries critical options ({', '.join(k.decode('utf-8', 'replace') for k in c.critical_options)}), which no host certificate may"
    return None
