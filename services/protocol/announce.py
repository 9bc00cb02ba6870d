"""UDP announcements, the HMAC that authenticates them on a keyed network, and the
signature by the node's certificate key that proves which identity sent one."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pshare.services.protocol.fields import _bool, _check_version, _hex, _int, _num, _obj, _str
from p2pshare.services.protocol.limits import (
    CATALOG_EPOCH_HEX,
    FINGERPRINT_HEX,
    MAX_DATAGRAM,
    MAX_USERNAME_BYTES,
    NODE_ID_HEX,
    PROTOCOL_VERSION,
    MalformedMessage,
    MessageTooLarge,
    WrongNetworkKey,
)

# ---------------------------------------------------------------- HMAC

OLD_VERSION_KEY = (
    "a node of an older p2pshare: it uses the network key without derivation; "
    "upgrade it to talk to this one"
)


def _mac(key: str, message: bytes) -> str:
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _canonical(raw: dict[str, Any]) -> bytes:
    try:
        return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate from JSON escapes
        raise MalformedMessage("text that is not valid Unicode") from None


# ---------------------------------------------------------------- UDP announce

MAX_SIGNATURE_BYTES = 160  # an ECDSA signature in DER is at most about 140
# Signatures checked and remembered: the listener checks a batch's before its writer asks
# about them (MAX_BATCH datagrams, 256, at most), with room for a few batches.
MAX_PROOFS_CACHED = 1024


def _with_signature(ann: Announce, raw: dict[str, Any]) -> Announce:
    """The announcement with its certificate and signature, as they came (unchecked)."""
    sig_text, cert_text = raw.pop("sig"), raw.get("cert")
    if not isinstance(sig_text, str) or not isinstance(cert_text, str):
        raise MalformedMessage("a signature needs 'sig' and 'cert' as base64 text")
    if ann.fingerprint is None:
        raise MalformedMessage("a signed announcement names no certificate fingerprint")
    try:
        signature = base64.b64decode(sig_text, validate=True)
        certificate = base64.b64decode(cert_text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("'sig' or 'cert' is not base64") from None
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise MalformedMessage("a signature longer than any ECDSA one")
    return Announce(
        ann.node_id,
        ann.username,
        ann.tcp_port,
        ann.catalog_version,
        ann.seq,
        ann.sent_at,
        ann.fingerprint,
        ann.tls,
        ann.catalog_epoch,
        certificate,
        signature,
        _canonical(raw),
    )


@dataclass(frozen=True)
class Announce:
    node_id: str
    username: str
    tcp_port: int
    catalog_version: int
    seq: int
    sent_at: float
    # SHA-256 of the node's certificate: its identity, which a client pins when it speaks
    # TLS to it (inside the HMAC when a network key is set). None from 0.1 nodes.
    fingerprint: str | None = None
    tls: bool = False  # it accepts TLS connections only
    # The name of its catalog log (`cv` counts in it): peers ask it for changes since the
    # version they hold. None from a node before catalogs by change (fetched whole).
    catalog_epoch: str | None = None
    # Its certificate (DER), and a signature by that certificate's key over the rest of
    # the announcement (`signed`): proof that the holder of `fingerprint` sent it. Absent
    # from nodes that predate signed announcements; checked only when a decision needs it
    # (proves_identity).
    certificate: bytes | None = field(default=None, compare=False, repr=False)
    signature: bytes | None = field(default=None, compare=False, repr=False)
    signed: bytes = field(default=b"", compare=False, repr=False)

    def proves_identity(self) -> bool:
        """Whether the announcement is signed by the key of the certificate it names."""
        if self.certificate is None or self.signature is None or self.fingerprint is None:
            return False
        return _signed_by(self.certificate, self.fingerprint, self.signature, self.signed)


@dataclass(frozen=True)
class AnnounceSigner:
    """What the announcer signs with: its certificate (DER) and its key's signing call."""

    certificate: bytes
    sign: Callable[[bytes], bytes]


# Verifying costs many times what decoding does: only announcements that would retire or
# move a node id are checked, and each at most once.
@functools.lru_cache(maxsize=MAX_PROOFS_CACHED)
def _signed_by(certificate: bytes, fingerprint: str, signature: bytes, signed: bytes) -> bool:
    # Here, not at the top: the listener's other work and p2pctl never need x509.
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not hmac.compare_digest(hashlib.sha256(certificate).hexdigest(), fingerprint):
        return False
    try:
        public = x509.load_der_x509_certificate(certificate).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            return False
        public.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        return False
    return True


def encode_announce(
    ann: Announce, *, key: str | None, signer: AnnounceSigner | None = None
) -> bytes:
    """One datagram; raises MessageTooLarge if it would not fit (it always should)."""
    raw: dict[str, Any] = {
        "p2p": PROTOCOL_VERSION,
        "t": "announce",
        "node": ann.node_id,
        "user": ann.username,
        "port": ann.tcp_port,
        "cv": ann.catalog_version,
        "seq": ann.seq,
        "ts": round(ann.sent_at, 3),
    }
    if ann.fingerprint is not None:
        raw["fp"] = ann.fingerprint
    if ann.tls:
        raw["tls"] = True
    if ann.catalog_epoch is not None:
        raw["ce"] = ann.catalog_epoch
    if signer is not None:
        raw["cert"] = base64.b64encode(signer.certificate).decode()
        raw["sig"] = base64.b64encode(signer.sign(_canonical(raw))).decode()
    if key is not None:
        raw["mac"] = _mac(key, _canonical(raw))
    data = _canonical(raw)
    if len(data) > MAX_DATAGRAM:
        raise MessageTooLarge(f"announcement of {len(data)} bytes")
    return data


def decode_announce(
    data: bytes, *, key: str | None, now: float, max_age: float, old_key: str | None = None
) -> Announce:
    """Parse and validate one datagram. Raises ProtocolError, nothing else.

    With a key, the datagram must carry a valid HMAC and a timestamp within
    `max_age` seconds of `now`; replays inside that window are the caller's
    to refuse by `seq`. `old_key` is the network key as set, which p2pshare before
    key derivation used raw: a datagram signed with it is named for what it is.
    """
    raw = _obj(data, MAX_DATAGRAM)
    _check_version(raw, "the announcement")
    if raw.get("t") != "announce":
        raise MalformedMessage("not an announcement")
    mac = raw.pop("mac", None)
    if key is None and mac is not None:
        # A keyed network is not ours: we could never fetch its catalog or chunks.
        raise WrongNetworkKey("announcement carries a network key HMAC and we have no network key")
    if key is not None:
        if not isinstance(mac, str) or not re.fullmatch(r"[0-9a-f]{64}", mac):
            raise WrongNetworkKey("announcement carries no valid network key HMAC")
        signed = _canonical(raw)
        if not hmac.compare_digest(mac, _mac(key, signed)):
            if old_key is not None and hmac.compare_digest(mac, _mac(old_key, signed)):
                raise WrongNetworkKey(OLD_VERSION_KEY)
            raise WrongNetworkKey("announcement HMAC does not match our network key")
    ann = Announce(
        node_id=_hex(raw, "node", NODE_ID_HEX),
        username=_str(raw, "user", MAX_USERNAME_BYTES),
        tcp_port=_int(raw, "port", 1, 65535),
        catalog_version=_int(raw, "cv", 0, 2**62),
        seq=_int(raw, "seq", 0, 2**62),
        sent_at=_num(raw, "ts"),
        fingerprint=_hex(raw, "fp", FINGERPRINT_HEX) if "fp" in raw else None,
        tls=_bool(raw, "tls") if "tls" in raw else False,
        catalog_epoch=_hex(raw, "ce", CATALOG_EPOCH_HEX) if "ce" in raw else None,
    )
    if ann.tls and ann.fingerprint is None:
        raise MalformedMessage("announces TLS without a certificate fingerprint")
    if "sig" in raw:
        ann = _with_signature(ann, raw)
    if key is not None and abs(now - ann.sent_at) > max_age:
        raise WrongNetworkKey(f"announcement timestamp is {now - ann.sent_at:.0f} s off")
    return ann
