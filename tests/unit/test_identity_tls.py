"""A node's identity (key, certificate, fingerprint), the TLS links between nodes, and the
wire fields they add: fingerprints in announcements, key proofs bound to both ends."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from p2pshare.services import protocol as p
from p2pshare.services.net import identity
from p2pshare.services.net.tls import CannotTalk, NodeTls, WrongCertificate, check_server
from p2pshare.services.protocol.announce import _canonical as canonical

KEY = "k"
FP_A, FP_B = "a" * 64, "b" * 64


def test_identity_is_made_once_and_kept(tmp_path: Path) -> None:
    first = identity.load_or_create(tmp_path / "id")
    again = identity.load_or_create(tmp_path / "id")
    assert first == again and len(first.fingerprint) == 64
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o700
    # The fingerprint is the SHA-256 of the DER certificate, what a TLS peer presents.
    pem = first.path.read_bytes()
    cert_pem = pem[pem.index(identity.CERT_BEGIN) :].decode()
    assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest() == first.fingerprint


CREATE = """
import sys
from pathlib import Path
from p2pshare.services.net import identity
sys.stdin.readline()  # the parent releases every process at once
print(identity.load_or_create(Path(sys.argv[1])).fingerprint)
"""


def test_four_roles_starting_at_once_agree_on_one_identity(tmp_path: Path) -> None:
    folder = tmp_path / "id"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    prints = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(prints) == 1 and prints == {identity.load(folder / "identity.pem").fingerprint}
    assert [f.name for f in folder.iterdir()] == ["identity.pem"]  # no temp file left


def test_a_broken_identity_file_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    path.write_bytes(b"not a key")
    with pytest.raises(identity.IdentityError, match="is not a p2pshare identity"):
        identity.load(path)


def test_a_copied_identity_is_made_private_again(tmp_path: Path) -> None:
    made = identity.load_or_create(tmp_path / "id")
    made.path.chmod(0o644)
    assert identity.load(made.path) == made
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- who can talk to whom


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[NodeTls, NodeTls]:
    root = tmp_path_factory.mktemp("ids")
    a = identity.load_or_create(root / "a")
    b = identity.load_or_create(root / "b")
    return NodeTls(a, True), NodeTls(b, True)


@pytest.mark.parametrize(
    ("ours", "theirs", "result"),
    [
        (True, True, "tls"),
        (False, False, "clear"),
        (True, False, "it does not encrypt and this node does"),
        (False, True, "it encrypts"),
    ],
)
def test_link_decides_or_says_why_not(
    nodes: tuple[NodeTls, NodeTls], ours: bool, theirs: bool, result: str
) -> None:
    node = NodeTls(nodes[0].identity, ours)
    if result in ("tls", "clear"):
        link = node.link(theirs, FP_B)
        assert (link.context is not None) == (result == "tls")
        assert link.own_fingerprint == node.identity.fingerprint
    else:
        with pytest.raises(CannotTalk, match=result):
            node.link(theirs, FP_B)


def serve_once(server: NodeTls) -> tuple[int, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        with server.server_context.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(10)
            with contextlib.suppress(OSError):
                tls.recv(1)
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread


@pytest.mark.parametrize("pinned", ["right", "other"])
def test_a_client_accepts_only_the_announced_certificate(
    nodes: tuple[NodeTls, NodeTls], pinned: str
) -> None:
    server, client = nodes
    port, thread = serve_once(server)
    expected = server.identity.fingerprint if pinned == "right" else client.identity.fingerprint
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.client_context.wrap_socket(raw) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        if pinned == "right":
            check_server(tls, expected)
        else:
            with pytest.raises(WrongCertificate, match="is not the one it announced"):
                check_server(tls, expected)
    thread.join(10)


# ---------------------------------------------------------------- wire fields


def test_announce_carries_fingerprint_and_tls_inside_the_hmac() -> None:
    ann = p.Announce("ab" * 16, "alice", 4000, 3, 7, round(time.time(), 3), FP_A, True)
    data = p.encode_announce(ann, key=KEY)
    assert p.decode_announce(data, key=KEY, now=time.time(), max_age=30) == ann
    # Changing the fingerprint breaks the HMAC: it cannot be swapped in transit.
    forged = data.replace(FP_A.encode(), FP_B.encode())
    with pytest.raises(p.WrongNetworkKey):
        p.decode_announce(forged, key=KEY, now=time.time(), max_age=30)


def test_an_announcement_without_fingerprint_is_a_clear_01_node() -> None:
    ann = p.Announce("ab" * 16, "bob", 4000, 3, 7, time.time())
    got = p.decode_announce(p.encode_announce(ann, key=None), key=None, now=0, max_age=30)
    assert (got.fingerprint, got.tls) == (None, False)


@pytest.mark.parametrize(
    "extra",
    [
        {"tls": True},  # TLS without a fingerprint to pin
        {"fp": "A" * 64},  # not lowercase hex
        {"fp": "a" * 63},
        {"fp": "a" * 64, "tls": "yes"},
    ],
)
def test_bad_identity_fields_are_refused(extra: dict[str, object]) -> None:
    raw = {
        "p2p": p.PROTOCOL_VERSION,
        "t": "announce",
        "node": "ab" * 16,
        "user": "x",
        "port": 1,
        "cv": 0,
        "seq": 1,
        "ts": 1.0,
        **extra,
    }
    with pytest.raises(p.MalformedMessage):
        p.decode_announce(canonical(raw), key=None, now=1.0, max_age=30)


def test_the_key_proof_is_bound_to_both_fingerprints_and_the_nonce() -> None:
    nonce, cn = "ab" * 16, "ef" * 16
    mac = p.auth_mac(KEY, nonce, (FP_A, FP_B))
    p.check_auth(p.AuthRequest(mac, FP_B, cn), key=KEY, nonce=nonce, server_fingerprint=FP_A)
    for req, server, why in [
        (p.AuthRequest(mac, FP_B, cn), FP_B, "relayed to another server"),
        (p.AuthRequest(mac, FP_A, cn), FP_A, "another client named"),
        (p.AuthRequest(mac, None, cn), FP_A, "no client fingerprint under TLS"),
        (p.AuthRequest(p.auth_mac(KEY, nonce), None, cn), FP_A, "a clear proof under TLS"),
    ]:
        with pytest.raises(p.WrongNetworkKey):
            p.check_auth(req, key=KEY, nonce=nonce, server_fingerprint=server)
            pytest.fail(why)
    with pytest.raises(p.WrongNetworkKey):
        p.check_auth(
            p.AuthRequest(mac, FP_B, cn), key=KEY, nonce="cd" * 16, server_fingerprint=FP_A
        )
    # In clear the proof covers the nonce alone.
    clear = p.auth_mac(KEY, nonce)
    p.check_auth(p.AuthRequest(clear, None, cn), key=KEY, nonce=nonce)
    assert clear != mac


def test_auth_and_welcome_round_trip_their_new_fields() -> None:
    req = p.AuthRequest("0" * 64, FP_A, "ef" * 16)
    assert p.decode_request(p.encode_request(req)[4:]) == req
    w = p.Welcome("ab" * 16, True, True)
    assert p.decode_welcome(p.encode_welcome(w)[4:]) == w
    assert p.short_fingerprint("3f2a9c1b77e04d21" + "0" * 48) == "3F2A-9C1B-77E0-4D21"


def test_an_announcement_signed_by_its_certificate_proves_it(tmp_path: Path) -> None:
    """The signature proves the holder of the fingerprint's key sent the announcement;
    anything else (no signature, another's, a changed field) proves nothing."""
    me = identity.load_or_create(tmp_path / "me")
    other = identity.load_or_create(tmp_path / "other")
    signer, theirs = identity.signer(me), identity.signer(other)
    now = round(time.time(), 3)
    ann = p.Announce("1" * 32, "x" * 64, 40000, 7, 3, now, me.fingerprint, True)
    wire = p.derive_network_key("a network key 0123456789")
    for key in (None, wire):
        data = p.encode_announce(ann, key=key, signer=signer)
        assert len(data) <= p.MAX_DATAGRAM
        got = p.decode_announce(data, key=key, now=now, max_age=30)
        assert got == ann and got.proves_identity()
    assert not p.decode_announce(
        p.encode_announce(ann, key=None), key=None, now=0, max_age=0
    ).proves_identity()
    # Signed by another key, under our fingerprint: it proves nothing.
    forged = p.encode_announce(
        ann, key=None, signer=p.AnnounceSigner(signer.certificate, theirs.sign)
    )
    assert not p.decode_announce(forged, key=None, now=0, max_age=0).proves_identity()
    # Our certificate and signature copied onto another node id.
    raw = json.loads(p.encode_announce(ann, key=None, signer=signer))
    raw["node"] = "2" * 32
    assert not p.decode_announce(canonical(raw), key=None, now=0, max_age=0).proves_identity()
    # Another's certificate under our fingerprint: it does not hash to it.
    raw = json.loads(p.encode_announce(ann, key=None, signer=theirs))
    assert not p.decode_announce(canonical(raw), key=None, now=0, max_age=0).proves_identity()
    for bad in ({"sig": "not base64!"}, {"sig": "AAAA"}, {"cert": 5}):
        raw = json.loads(p.encode_announce(ann, key=None, signer=signer))
        raw.update(bad)
        if bad == {"sig": "AAAA"}:
            assert not p.decode_announce(
                canonical(raw), key=None, now=0, max_age=0
            ).proves_identity()
            continue
        with pytest.raises(p.MalformedMessage):
            p.decode_announce(canonical(raw), key=None, now=0, max_age=0)


def test_the_listener_checks_a_signature_once_per_node_id_and_address(tmp_path: Path) -> None:
    """Outside the writer's transaction: a new node id's first announcement, and one from
    another address; its next ones from the same address are not checked again."""
    from p2pshare.services.listener.role import ProofWarmer
    from p2pshare.services.protocol.announce import _signed_by

    me = identity.load_or_create(tmp_path / "me")
    signer = identity.signer(me)
    warmer = ProofWarmer()
    _signed_by.cache_clear()

    def heard(seq: int, ip: str, *, signed: bool = True) -> None:
        ann = p.Announce("1" * 32, "alice", 40000, 7, seq, 1.0, me.fingerprint)
        data = p.encode_announce(ann, key=None, signer=signer if signed else None)
        warmer.warm(p.decode_announce(data, key=None, now=1.0, max_age=30), ip)

    heard(1, "127.0.0.1")
    heard(2, "127.0.0.1")
    heard(3, "127.0.0.1", signed=False)
    assert _signed_by.cache_info().misses == 1
    heard(4, "127.0.0.9")
    assert _signed_by.cache_info().misses == 2
