"""This node's identity: a private key and a self-signed certificate under $P2P_HOME, made
once and kept, named by its fingerprint (the SHA-256 of the certificate, as Syncthing
names a device by its certificate's hash).

Four roles start at once and each may find no identity yet; each writes a candidate
to a private temp file and hard-links it into place, which fails when another was
first, so all four end up using the one that won.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pshare.services.protocol.announce import AnnounceSigner

IDENTITY_FILE = "identity.pem"  # the key, then the certificate: one file, one atomic link
# No certificate authority ever checks it; the fingerprint is what peers pin.
VALID_DAYS = 100 * 365
CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"


class IdentityError(Exception):
    """The identity file exists but cannot be used; the message is one sentence."""


@dataclass(frozen=True)
class Identity:
    path: Path  # PEM with the private key and the certificate, mode 0600
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex


def load_or_create(folder: Path) -> Identity:
    """This node's identity, created at first use. Raises IdentityError."""
    path = folder / IDENTITY_FILE
    if not path.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create(path)
    return load(path)


def load(path: Path) -> Identity:
    """Raises IdentityError when the file is not a key and certificate."""
    try:
        data = path.read_bytes()
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # a copied file: the key is nobody else's business
    except OSError as exc:
        raise IdentityError(f"cannot read the node identity {path}: {exc.strerror}") from None
    at = data.find(CERT_BEGIN)
    try:
        cert = x509.load_pem_x509_certificate(data[at:]) if at >= 0 else None
        serialization.load_pem_private_key(data[:at] if at > 0 else data, password=None)
    except ValueError:
        cert = None
    if cert is None:
        raise IdentityError(
            f"{path} is not a p2pshare identity (a key and certificate); move it away "
            "and a new identity (a new fingerprint) is made at the next start"
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(path, hashlib.sha256(der).hexdigest())


def signer(identity: Identity) -> AnnounceSigner:
    """What signs this node's announcements: its certificate and its key. Raises
    IdentityError as `load` does."""
    path = identity.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read the node identity {path}: {exc.strerror}") from None
    at = data.find(CERT_BEGIN)
    try:
        key = serialization.load_pem_private_key(data[:at], password=None) if at > 0 else None
        der = x509.load_pem_x509_certificate(data[at:]).public_bytes(serialization.Encoding.DER)
    except ValueError:
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{path} holds no EC key and certificate to sign announcements with")

    def sign(message: bytes) -> bytes:
        return key.sign(message, ec.ECDSA(hashes.SHA256()))

    return AnnounceSigner(der, sign)


def _create(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())  # fast handshakes, in every OpenSSL
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2pshare node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # never replaces: a role that was first keeps its identity
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
