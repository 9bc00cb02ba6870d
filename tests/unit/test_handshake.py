"""The connection handshake as two state machines, driven by feeding each the other's frames.

The chunk server and the client both run these (tests/reliability/test_encryption.py and
test_network_key.py drive them over real sockets); here every order and refusal is
checked without a socket.
"""

from __future__ import annotations

import pytest

from p2pshare.services import protocol as p
from p2pshare.services.protocol import (
    CannotTalk,
    Channel,
    ClientHandshake,
    ServerHandshake,
    Stage,
)

NONCE = "ab" * (p.NONCE_HEX // 2)
KEY = "correct horse battery staple"
SERVER_FP = "11" * 32
CLIENT_FP = "22" * 32


def body(frame: bytes) -> bytes:
    """A frame's JSON body, as a reader hands it on (the 4-byte length stripped)."""
    assert p.frame_length(frame[:4]) == len(frame) - 4
    return frame[4:]


def request(frame: bytes) -> p.Request:
    return p.decode_request(body(frame))


def test_clear_and_keyless_opens_at_the_welcome() -> None:
    server = ServerHandshake(key=None, encrypt=False, nonce=NONCE)
    client = ClientHandshake(key=None, can_encrypt=False)
    assert client.on_welcome(body(server.welcome())) is Stage.OPEN
    assert server.authed
    assert server.on_request(p.CatalogRequest()) is None  # served


@pytest.mark.parametrize("encrypt", [False, True], ids=["clear", "tls"])
def test_a_keyed_handshake_runs_in_order_and_opens_both_ends(encrypt: bool) -> None:
    server = ServerHandshake(key=KEY, encrypt=encrypt, nonce=NONCE)
    client = ClientHandshake(key=KEY, can_encrypt=encrypt)
    stage = client.on_welcome(body(server.welcome()))
    channel = None
    if encrypt:
        assert stage is Stage.TLS and server.stage is Stage.TLS
        server.tls_done(SERVER_FP)
        channel = Channel(SERVER_FP, CLIENT_FP)
        stage = client.tls_done()
    assert stage is Stage.AUTH
    assert not server.authed
    with pytest.raises(p.WrongNetworkKey, match="requires the network key"):
        server.on_request(p.CatalogRequest())  # nothing before the proof
    reply = server.on_request(request(client.proof(channel)))
    assert reply is not None and server.authed
    assert client.on_auth_reply(body(reply)) is Stage.OPEN
    assert server.on_request(p.CatalogRequest()) is None


def test_a_wrong_key_is_refused_and_the_server_stays_closed() -> None:
    server = ServerHandshake(key=KEY, encrypt=False, nonce=NONCE)
    client = ClientHandshake(key="another key", can_encrypt=False)
    client.on_welcome(body(server.welcome()))
    with pytest.raises(p.WrongNetworkKey, match="wrong network key"):
        server.on_request(request(client.proof(None)))
    assert not server.authed


@pytest.mark.parametrize("encrypt", [False, True], ids=["clear", "tls"])
def test_a_server_that_does_not_prove_the_key_is_refused(encrypt: bool) -> None:
    """A server without the key answers the client's proof with a bare ok, or one whose
    proof is made with another key or for another nonce: the client refuses it."""
    server = ServerHandshake(key=KEY, encrypt=encrypt, nonce=NONCE)
    welcome = body(server.welcome())
    channel = Channel(SERVER_FP, CLIENT_FP) if encrypt else None
    pair = None if channel is None else (channel.server, channel.client)
    fakes = {
        "a bare ok": p.encode_ok(),
        "another key": p.encode_ok(mac=p.server_auth_mac("other", NONCE, "cd" * 16, pair)),
        "another nonce": p.encode_ok(mac=p.server_auth_mac(KEY, NONCE, "ef" * 16, pair)),
        "the client's own proof": p.encode_ok(mac=p.auth_mac(KEY, NONCE, pair)),
    }
    for label, reply in fakes.items():
        client = ClientHandshake(key=KEY, can_encrypt=encrypt, nonce="cd" * 16)
        if client.on_welcome(welcome) is Stage.TLS:
            client.tls_done()
        client.proof(channel)
        with pytest.raises(p.WrongNetworkKey, match="did not prove the network key"):
            client.on_auth_reply(body(reply))
        assert client.stage is Stage.AUTH, label


def test_a_keyed_client_refuses_a_server_that_asks_for_no_key() -> None:
    client = ClientHandshake(key=KEY, can_encrypt=False)
    keyless = ServerHandshake(key=None, encrypt=False, nonce=NONCE).welcome()
    with pytest.raises(p.WrongNetworkKey, match="does not ask for the network key"):
        client.on_welcome(body(keyless))


def test_a_proof_for_another_tls_channel_is_refused() -> None:
    """A proof relayed through a machine in the middle names that machine's certificate."""
    server = ServerHandshake(key=KEY, encrypt=True, nonce=NONCE)
    client = ClientHandshake(key=KEY, can_encrypt=True)
    client.on_welcome(body(server.welcome()))
    server.tls_done(SERVER_FP)
    client.tls_done()
    relayed = client.proof(Channel("33" * 32, CLIENT_FP))
    with pytest.raises(p.WrongNetworkKey):
        server.on_request(request(relayed))


def test_a_client_without_the_key_stops_at_the_welcome() -> None:
    server = ServerHandshake(key=KEY, encrypt=False, nonce=NONCE)
    client = ClientHandshake(key=None, can_encrypt=False)
    with pytest.raises(p.WrongNetworkKey, match="requires a network key"):
        client.on_welcome(body(server.welcome()))


def test_encryption_mismatches_are_named_and_a_downgrade_refused() -> None:
    encrypting = ServerHandshake(key=None, encrypt=True, nonce=NONCE).welcome()
    with pytest.raises(CannotTalk, match="the peer encrypts"):
        ClientHandshake(key=None, can_encrypt=False).on_welcome(body(encrypting))
    clear = ServerHandshake(key=None, encrypt=False, nonce=NONCE).welcome()
    with pytest.raises(p.MalformedMessage, match="announced TLS but answers in clear"):
        ClientHandshake(key=None, can_encrypt=True).on_welcome(body(clear))


def test_steps_out_of_order_are_refused_on_both_sides() -> None:
    client = ClientHandshake(key=KEY, can_encrypt=False)
    with pytest.raises(p.MalformedMessage, match="out of order"):
        client.tls_done()  # before any welcome
    with pytest.raises(p.MalformedMessage, match="out of order"):
        client.on_auth_reply(body(p.encode_ok()))
    server = ServerHandshake(key=KEY, encrypt=True, nonce=NONCE)
    with pytest.raises(p.MalformedMessage, match="before the handshake"):
        server.on_request(p.CatalogRequest())  # no welcome sent yet
    server.welcome()
    with pytest.raises(p.MalformedMessage, match="sent once"):
        server.welcome()
    auth = p.AuthRequest(p.auth_mac(KEY, NONCE, (SERVER_FP, CLIENT_FP)), CLIENT_FP)
    with pytest.raises(p.MalformedMessage, match="before the handshake"):
        server.on_request(auth)  # TLS has not happened
    client.on_welcome(body(ServerHandshake(key=KEY, encrypt=False, nonce=NONCE).welcome()))
    with pytest.raises(p.MalformedMessage, match="out of order"):
        client.on_welcome(body(ServerHandshake(key=KEY, encrypt=False, nonce=NONCE).welcome()))


def test_a_refused_proof_reaches_the_client_as_the_servers_sentence() -> None:
    client = ClientHandshake(key=KEY, can_encrypt=False)
    client.on_welcome(body(ServerHandshake(key=KEY, encrypt=False, nonce=NONCE).welcome()))
    with pytest.raises(p.RemoteRefused, match="wrong network key"):
        client.on_auth_reply(body(p.encode_error("wrong network key")))
    assert client.stage is Stage.AUTH


def test_garbage_instead_of_a_welcome_is_a_protocol_error() -> None:
    for junk in (b"", b"not json", b'{"op": "ok"}', b'{"p2p": 1, "op": "welcome"}'):
        with pytest.raises(p.ProtocolError):
            ClientHandshake(key=None, can_encrypt=False).on_welcome(junk)
