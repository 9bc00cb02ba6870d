"""The web token: one secret per node, in `$P2P_HOME/web-token`, created 0600 atomically.

The browser share always needs it; the dashboard needs it too when the web program
listens off loopback. `p2pctl share-link` prints it inside the share URL. Removing the
file and restarting the node (`p2pctl restart`) revokes every link.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_NAME = "web-token"
TOKEN_BYTES = 24  # 192 bits, 32 URL-safe characters
# A browser sends a host's cookies to every port of that host (RFC 6265 scopes them by
# host alone), so any other web service on this address receives ours. So the cookie is
# named for this port (two nodes' pages on one host keep theirs apart) and never holds
# the token: it holds a value derived from it for this port, good for COOKIE_SECONDS, so
# what another port receives opens this share alone, for a while, and reveals no token.
COOKIE_PREFIX = "p2p_share_"
COOKIE_SECONDS = 12 * 3600


class TokenError(Exception):
    """The token file cannot be read or made; the message is one sentence."""


def token_path(home: Path) -> Path:
    return home / TOKEN_NAME


def ensure_token(home: Path) -> str:
    """The node's web token, made on first use. Raises TokenError.

    Written to a private temp file first and linked into place, so a reader never
    sees half a token and two processes racing both end up with the first one.
    """
    path = token_path(home)
    existing = _read(path)
    if existing is not None:
        return existing
    tmp = home / f".{TOKEN_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use its token
            os.link(tmp, path)
    except OSError as exc:
        raise TokenError(f"cannot create the web token file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    token = _read(path)
    if token is None:
        raise TokenError(f"the web token file {path} vanished while it was being made")
    return token


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenError(f"cannot read the web token file {path}: {exc.strerror}") from None
    if len(text) < 16 or not text.isascii() or not text.isprintable():
        raise TokenError(f"the web token file {path} is damaged; remove it to make a new one")
    return text


def same(given: str | None, token: str) -> bool:
    """Whether `given` is the token, in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def csrf_token(token: str) -> str:
    """The CSRF token every form of the dashboard carries, derived from the web token.

    Stable across restarts of the web program, so an open page keeps working; a
    page on another site cannot read it (the Host check and same-origin keep it out).
    """
    return hmac.new(token.encode(), b"p2pshare csrf", hashlib.sha256).hexdigest()[:32]


def cookie_name(port: int) -> str:
    return f"{COOKIE_PREFIX}{port}"


def _cookie_mac(token: str, port: int, expires: int) -> str:
    message = f"p2pshare cookie {port} {expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]


def cookie_value(token: str, port: int, now: float) -> str:
    """What the cookie of the web program on `port` holds: when it expires, and a MAC of
    that and the port under the token."""
    expires = int(now) + COOKIE_SECONDS
    return f"{expires}.{_cookie_mac(token, port, expires)}"


def cookie_valid(value: str | None, token: str, port: int, now: float) -> bool:
    """Whether a cookie's value is one this port made, and has not expired."""
    if value is None:
        return False
    expires, dot, mac = value.partition(".")
    if not dot or not expires.isdigit() or int(expires) <= now:
        return False
    return hmac.compare_digest(mac.encode(), _cookie_mac(token, port, int(expires)).encode())
