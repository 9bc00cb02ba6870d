"""Who may talk to the web program: the Host check, the token and the CSRF token.

- Host: a page on another site can point a DNS name it controls at 127.0.0.1 (DNS
  rebinding) and then read our pages as its own origin. Syncthing's GUI answers that by
  refusing any Host that is not the GUI's address or localhost; so do we. On loopback
  the Host must be `localhost` or a loopback address; off loopback an IP address or
  `localhost` (a rebinding attack needs a DNS name, and the token guards the rest).
- Token: `/share/` always needs the node's web token; the dashboard needs it when the
  program listens off loopback. Given once as `?token=`, an HttpOnly, SameSite=Strict
  cookie named for this port stands for it, holding not the token but a value derived
  from it for this port that expires (token.cookie_value): every other port of the
  host receives the cookie too.
- CSRF: every state-changing request is a POST carrying the CSRF token (a form field
  or the X-CSRF-Token header); an Origin header, when sent, must match the Host.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from p2pshare.services.web import token as webtoken
from p2pshare.services.web.context import client_of, error_response

log = logging.getLogger("p2p.web")

CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str | None:
    """The name part of a Host header (`[::1]:8080` -> `::1`), lowercased; None if malformed."""
    host = host_header.strip().lower()
    if not host or any(c in host for c in "/@?# "):
        return None
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    return name


def host_allowed(host_header: str | None, bind: str) -> bool:
    """Whether a request's Host header may reach a program bound to `bind`."""
    if host_header is None:
        return False
    name = host_name(host_header)
    if name is None:
        return False
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a DNS name: what a rebinding attack sends
    if is_loopback(bind):
        return address.is_loopback
    return True


def origin_matches(origin: str | None, host_header: str | None) -> bool:
    """A cross-site POST carries another site's Origin; ours carries our own Host."""
    if origin is None:
        return True
    if origin == "null" or host_header is None:
        return False
    return urlsplit(origin).netloc.lower() == host_header.strip().lower()


def local_port(request: Request) -> int:
    """The port this request came in on (the listening socket's, not the Host header's)."""
    server = request.scope.get("server")
    return int(server[1]) if server and server[1] is not None else 0


def needs_token(path: str, bind: str) -> bool:
    """The share always needs the token; everything else only off loopback."""
    if path == "/share" or path.startswith("/share/"):
        return True
    if path.startswith("/static/"):
        return False
    return not is_loopback(bind)


# What a page may load: only this origin's own script and style, no frames around it.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # a token in the address bar never leaves in a Referer
    "cache-control": "no-store",
}


class Guard(BaseHTTPMiddleware):
    """Host check, token, security headers; every refusal a sentence."""

    def __init__(self, app: Any, *, bind: str, token: str, env: jinja2.Environment) -> None:
        super().__init__(app)
        self.bind, self.token, self.env = bind, token, env

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await self._checked(request, call_next)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _checked(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        host = request.headers.get("host")
        if not host_allowed(host, self.bind):
            log.warning("refused a request for Host %r from %s", host, client_of(request))
            return self._refuse(
                request,
                403,
                "This address is not one p2p-web answers to; open it by its IP address "
                "or as localhost.",
            )
        given = request.query_params.get("token")
        port = local_port(request)
        if needs_token(request.url.path, self.bind):
            cookie = request.cookies.get(webtoken.cookie_name(port))
            if not (
                webtoken.same(given, self.token)
                or webtoken.cookie_valid(cookie, self.token, port, time.time())
            ):
                return self._refuse(
                    request,
                    403,
                    "This page needs the node's web token: open the link that "
                    "p2pctl share-link prints.",
                )
        if request.method not in SAFE_METHODS and not origin_matches(
            request.headers.get("origin"), host
        ):
            return self._refuse(request, 403, "A page from another site cannot change this node.")
        response = await call_next(request)
        if webtoken.same(given, self.token):
            response.set_cookie(
                webtoken.cookie_name(port),
                webtoken.cookie_value(self.token, port, time.time()),
                max_age=webtoken.COOKIE_SECONDS,
                httponly=True,
                samesite="strict",
                path="/",
            )
        return response

    def _refuse(self, request: Request, status: int, message: str) -> Response:
        return error_response(self.env, request, status, message)
