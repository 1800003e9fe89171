"""`[tls]` settings and the ``ssl`` contexts of SIP over TLS (RFC 3261 §26.2.1, RFC 5630).

The listener presents ``certificate``/``key``; with ``require_client_certificate`` it accepts only
clients whose certificate ``ca`` signed. Outbound, to a ``transport=tls`` or ``sips:`` next
hop, the node verifies the server against ``ca`` (or the system's trust store) and its name or IP
address (RFC 5922 §7.2).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsSettings:
    """SIP over TLS: the listener's certificate and how peers are verified."""

    enabled: bool = False
    """Listen for SIP over TLS (and allow outbound TLS). Off by default: a certificate must be provided."""
    port: int = 5061
    """TLS listen port. 5061 is SIP over TLS's registered port (RFC 3261 §19.1.2); 0 picks a free one (tests)."""
    certificate: str = ""
    """PEM file with the node's certificate (and its chain), presented to every TLS peer."""
    key: str = ""
    """PEM file with the certificate's private key."""
    ca: str = ""
    """PEM file of trusted CAs: verifies the servers the node connects to, and client certificates
    when `require_client_certificate` is set. "" = the system's trust store."""
    require_client_certificate: bool = False
    """Refuse TLS clients without a certificate signed by `ca` (mutual TLS, RFC 5922 §7.4). Off by
    default: endpoints usually authenticate with digest, and Kamailio's tls module
    (require_certificate=0) and Asterisk (tlsverifyclient=no) default the same way."""
    handshake_timeout: float = 10.0
    """Seconds a TLS handshake may take before the connection is closed: a silent client holds a
    descriptor no longer than this. A handshake is two round trips; 10 s is Kamailio's
    tcp_connect_timeout (nginx's ssl_handshake_timeout allows 60 s, for the open Internet)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected 0..65535, got {self.port}")
        if self.handshake_timeout <= 0:
            raise ValueError(f"handshake_timeout: expected a positive number of seconds, got {self.handshake_timeout}")
        if self.require_client_certificate and not self.ca:
            raise ValueError("require_client_certificate: needs `ca`, the CAs client certificates are checked against")
        if self.enabled:
            if not (self.certificate and self.key):
                raise ValueError("enabled: a TLS listener needs `certificate` and `key` (PEM files)")
            for name in ("certificate", "key", "ca"):
                path = getattr(self, name)
                if path and not Path(path).is_file():
                    raise ValueError(f"{name}: no such file: {path}")


def server_context(s: TlsSettings) -> ssl.SSLContext:
    """The listener's context: TLS 1.2+ (RFC 8996 retires 1.0/1.1), client certificates per settings."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(s.certificate, s.key)
    if s.require_client_certificate:
        # Asked for only when required: an optional request makes some clients stop and ask their
        # user for a certificate (linphone's belle-sip), and nothing here would use one anyway.
        ctx.load_verify_locations(s.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(s: TlsSettings) -> ssl.SSLContext:
    """Outbound: verify the next hop's certificate and name (RFC 5922 §7.2), offer ours (RFC 5923 §4)."""
    ctx = ssl.create_default_context(cafile=s.ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.certificate and s.key:
        ctx.load_cert_chain(s.certificate, s.key)
    return ctx
