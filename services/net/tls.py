"""TLS between nodes: TLS 1.3 only, no certificate authorities and no host names; a client
accepts a server only if its certificate hashes to the fingerprint the server announced.

`NodeTls` is what a role knows: its identity, whether it encrypts (P2P_ENCRYPT), and
the contexts; `link()` decides how to talk to one peer, or says why we cannot.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from dataclasses import dataclass
from functools import cached_property

from p2pshare.services.net.identity import Identity
from p2pshare.services.protocol import short_fingerprint
from p2pshare.services.protocol.handshake import CannotTalk

__all__ = ["CannotTalk", "Link", "NodeTls", "WrongCertificate", "check_server"]


class WrongCertificate(ssl.SSLError):
    """The server's certificate is not the one its announcement named."""


@dataclass(frozen=True)
class Link:
    """How to reach one peer: in clear (context None) or by TLS pinned to its fingerprint."""

    context: ssl.SSLContext | None
    peer_fingerprint: str | None
    own_fingerprint: str


@dataclass
class NodeTls:
    identity: Identity
    encrypt: bool

    @cached_property
    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.identity.path)
        ctx.num_tickets = 0  # no resumption: each connection is one full handshake, no state
        return ctx

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # Pinned by fingerprint after the handshake instead (check_server): a peer's
        # certificate is self-signed and a LAN address names no host.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def link(self, peer_tls: bool, peer_fingerprint: str | None) -> Link:
        """How to talk to a peer that announced `peer_tls`. Raises CannotTalk."""
        own = self.identity.fingerprint
        if self.encrypt and not peer_tls:
            raise CannotTalk(
                "it does not encrypt and this node does (P2P_ENCRYPT); they cannot talk"
            )
        if peer_tls and not self.encrypt:
            raise CannotTalk(
                "it encrypts (P2P_ENCRYPT=on, or a network key) and this node does not; "
                "they cannot talk"
            )
        if not peer_tls:
            return Link(None, None, own)
        return Link(self.client_context, peer_fingerprint, own)


def certificate_fingerprint(sock: ssl.SSLSocket | ssl.SSLObject) -> str:
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise WrongCertificate("the peer presented no certificate")
    return hashlib.sha256(der).hexdigest()


def check_server(sock: ssl.SSLSocket, expected: str | None) -> None:
    """Raises WrongCertificate unless the server's certificate is the announced one."""
    got = certificate_fingerprint(sock)
    if expected is None or not hmac.compare_digest(got, expected):
        raise WrongCertificate(
            f"the peer's certificate {short_fingerprint(got)} is not the one it announced "
            f"({short_fingerprint(expected or '0' * 16)}); refusing it"
        )
