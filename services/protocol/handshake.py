"""The order every TCP connection keeps, for both ends, as two state machines without I/O.

    server                                   client
    welcome (clear: nonce, auth?, tls?)  ->
                    <- TLS handshake, when the welcome says tls (pinned fingerprints)
                    <- auth: HMAC of the nonce (and, under TLS, both fingerprints),
                             and a nonce of its own
    ok: HMAC of both nonces              ->
                                            (with a key, both ends prove it, TLS or not)
                    <- requests ...      -> replies, in order

The chunk server (asyncio) and `net.client.PeerClient` (blocking sockets) each move
bytes and run TLS; these classes decide what comes next and refuse what is out of
order, so the two ends cannot drift apart. Tests drive them by feeding frames.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass

from p2pshare.services.protocol.frames import (
    AuthRequest,
    Request,
    Welcome,
    auth_mac,
    check_auth,
    check_server_auth,
    decode_reply,
    decode_welcome,
    encode_ok,
    encode_request,
    encode_welcome,
    server_auth_mac,
)
from p2pshare.services.protocol.limits import (
    NONCE_HEX,
    MalformedMessage,
    ProtocolError,
    WrongNetworkKey,
)


class CannotTalk(ProtocolError):
    """This node and a peer disagree on encryption; the message says why, in one sentence."""


class Stage(enum.Enum):
    WELCOME = "welcome"  # client: waiting for it; server: about to send it
    TLS = "tls"  # the TLS handshake comes next
    AUTH = "auth"  # client: its proof sent, waiting for the ok; server: waiting for a proof
    OPEN = "open"  # requests and replies


@dataclass(frozen=True)
class Channel:
    """Under TLS, who is at each end: a key proof is bound to both fingerprints."""

    server: str
    client: str


class ClientHandshake:
    """The client's side. Feed it the welcome, report the TLS handshake, send what it
    returns, feed it the reply to the proof; `stage` is OPEN when requests may flow."""

    def __init__(self, *, key: str | None, can_encrypt: bool, nonce: str | None = None) -> None:
        self.key = key
        self.can_encrypt = can_encrypt  # a pinned TLS link to this peer is known
        self.stage = Stage.WELCOME
        self.welcome: Welcome | None = None
        # What the server must prove the key over: a server without it cannot answer.
        self.nonce = secrets.token_hex(NONCE_HEX // 2) if nonce is None else nonce
        self.channel: Channel | None = None

    def on_welcome(self, body: bytes) -> Stage:
        """The server's first frame. Returns the next stage: TLS (run the handshake, then
        `tls_done`), AUTH (send `proof()`), or OPEN. Raises ProtocolError subclasses."""
        self._expect(Stage.WELCOME)
        welcome = self.welcome = decode_welcome(body)
        if welcome.auth_required and self.key is None:
            raise WrongNetworkKey("the peer requires a network key")
        if self.key is not None and not welcome.auth_required:
            # Anyone can open a port: a node of our network asks us for the key.
            raise WrongNetworkKey("the peer does not ask for the network key; refusing it")
        if welcome.tls and not self.can_encrypt:
            raise CannotTalk("the peer encrypts (P2P_ENCRYPT) and this node does not")
        if self.can_encrypt and not welcome.tls:
            # It announced TLS: answering in clear is a downgrade, whoever is doing it.
            raise MalformedMessage("the peer announced TLS but answers in clear")
        self.stage = Stage.TLS if welcome.tls else self._after_channel()
        return self.stage

    def tls_done(self) -> Stage:
        """The TLS handshake succeeded and the server's certificate was checked."""
        self._expect(Stage.TLS)
        self.stage = self._after_channel()
        return self.stage

    def proof(self, channel: Channel | None) -> bytes:
        """The frame proving the network key (for this nonce and, under TLS, this channel)."""
        self._expect(Stage.AUTH)
        assert self.key is not None and self.welcome is not None
        if (channel is None) != (not self.welcome.tls):
            raise ValueError("a TLS connection's proof names its channel; a clear one's not")
        self.channel = channel
        mac = auth_mac(self.key, self.welcome.nonce, _pair(channel))
        client_fp = None if channel is None else channel.client
        return encode_request(AuthRequest(mac, client_fp, self.nonce))

    def on_auth_reply(self, body: bytes) -> Stage:
        """The server's answer to the proof: an ok proving the key in turn, else an error
        (RemoteRefused) or WrongNetworkKey."""
        self._expect(Stage.AUTH)
        assert self.key is not None and self.welcome is not None
        check_server_auth(
            decode_reply(body),
            key=self.key,
            nonce=self.welcome.nonce,
            client_nonce=self.nonce,
            channel=_pair(self.channel),
        )
        self.stage = Stage.OPEN
        return self.stage

    def _after_channel(self) -> Stage:
        return Stage.AUTH if self.key is not None else Stage.OPEN

    def _expect(self, stage: Stage) -> None:
        if self.stage is not stage:
            raise MalformedMessage(
                f"handshake out of order: at {self.stage.value}, not {stage.value}"
            )


def _pair(channel: Channel | None) -> tuple[str, str] | None:
    return None if channel is None else (channel.server, channel.client)


class ServerHandshake:
    """The server's side. Send `welcome()`, run TLS when `encrypt`, then pass every request
    through `on_request`: a key proof is answered here (the bytes to send), anything else
    is let through only once the key is proven (or none is needed)."""

    def __init__(
        self, *, key: str | None, encrypt: bool, nonce: str, old_key: str | None = None
    ) -> None:
        if len(nonce) != NONCE_HEX:
            raise ValueError("a nonce is NONCE_HEX hex digits")
        self.key = key
        self.old_key = old_key  # the key as set: names a client of an older p2pshare
        self.encrypt = encrypt
        self.nonce = nonce
        self.stage = Stage.WELCOME
        self.own_fingerprint: str | None = None  # under TLS, what a proof must be bound to

    @property
    def authed(self) -> bool:
        return self.stage is Stage.OPEN

    def welcome(self) -> bytes:
        """The first frame, sent in clear."""
        if self.stage is not Stage.WELCOME:
            raise MalformedMessage("the welcome is sent once, first")
        self.stage = Stage.TLS if self.encrypt else self._after_channel()
        return encode_welcome(Welcome(self.nonce, self.key is not None, self.encrypt))

    def tls_done(self, own_fingerprint: str) -> None:
        """The client completed the TLS handshake with our certificate."""
        if self.stage is not Stage.TLS:
            raise MalformedMessage("no TLS handshake was due")
        self.own_fingerprint = own_fingerprint
        self.stage = self._after_channel()

    def on_request(self, req: Request) -> bytes | None:
        """The reply to a key proof (raises WrongNetworkKey when it is wrong), or None for a
        request to serve. Raises WrongNetworkKey for a request before the proof."""
        if self.stage in (Stage.WELCOME, Stage.TLS):
            raise MalformedMessage("a request before the handshake")
        if isinstance(req, AuthRequest):
            if self.key is None:
                self.stage = Stage.OPEN
                return encode_ok()
            channel = check_auth(
                req,
                key=self.key,
                nonce=self.nonce,
                server_fingerprint=self.own_fingerprint,
                old_key=self.old_key,
            )
            assert req.nonce is not None  # check_auth refuses a proof without one
            self.stage = Stage.OPEN
            return encode_ok(mac=server_auth_mac(self.key, self.nonce, req.nonce, channel))
        if self.stage is not Stage.OPEN:
            raise WrongNetworkKey("this node requires the network key")
        return None

    def _after_channel(self) -> Stage:
        return Stage.AUTH if self.key is not None else Stage.OPEN
