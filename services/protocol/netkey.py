"""The network key as the wire uses it: never the words a user typed, but a key derived
from them with scrypt, so every broadcast announcement (an HMAC anyone on the LAN can
capture) costs a guesser one scrypt per guess rather than one HMAC.

Every node derives with the same parameters and the same fixed salt, so nodes of one
network agree without exchanging anything; the salt names the protocol, which keeps a
table made for another program's keys useless here.
"""

from __future__ import annotations

import hashlib

# scrypt's cost: 2^15 x 8 x 128 bytes = 32 MiB of memory and its time, paid once by each
# role that speaks to peers, and by a guesser for every guess.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT = b"p2pshare network key v1"
# A key shorter than this, or made of fewer different characters, is refused at start:
# scrypt slows guessing down, it does not make "secret" a secret.
MIN_KEY_CHARS = 16
MIN_DISTINCT_CHARS = 8


class WeakNetworkKey(ValueError):
    """The key is too easy to guess; the message is one sentence saying how to fix it."""


def check_key_strength(raw: str) -> None:
    """Raises WeakNetworkKey unless `raw` is long and varied enough to be a network key."""
    if len(raw) < MIN_KEY_CHARS or len(set(raw)) < MIN_DISTINCT_CHARS:
        raise WeakNetworkKey(
            f"P2P_NETWORK_KEY must be at least {MIN_KEY_CHARS} characters with at least "
            f"{MIN_DISTINCT_CHARS} different ones (for example the output of "
            "`openssl rand -base64 24`); every node of the network needs the new key"
        )


def derive_network_key(raw: str) -> str:
    """The key every HMAC of the network uses (hex), derived from what the user set."""
    return hashlib.scrypt(
        raw.encode("utf-8"),
        salt=SALT,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=32,
    ).hex()
