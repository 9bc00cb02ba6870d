"""The Starlette app: dashboard, JSON state, actions, the browser share and static files."""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from p2pshare.db import reports
from p2pshare.db.engine import Database
from p2pshare.services.settings import Settings
from p2pshare.services.web import dashboard, guard, ranges, share
from p2pshare.services.web import token as webtoken
from p2pshare.services.web.sampler import RateSampler

log = logging.getLogger("p2p.web")
HERE = Path(__file__).parent
LIVE_SECTIONS = ("node", "downloads", "chart", "files", "peers", "history", "uploads")
KEEP_NOTES = 64
# A form holds a CSRF token and a file name or download id.
MAX_FORM_BYTES = 16 * 1024
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


@dataclass
class Web:
    """What every handler needs."""

    settings: Settings
    database: Database
    token: str
    sampler: RateSampler
    bind: str
    notes: OrderedDict[str, dashboard.Action] = field(default_factory=OrderedDict)

    @property
    def csrf(self) -> str:
        return webtoken.csrf_token(self.token)


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every name from the network is escaped, in text and attributes
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(bytes=human_bytes, rate=human_rate, eta=human_eta, ago=ago, when=when)
    return env


# ------------------------------------------------------------ formatting


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{human_bytes(rate)}/s"


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    return human_eta(max(0.0, now - at)) + " ago"


def when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


# ------------------------------------------------------------ guard


class Guard(BaseHTTPMiddleware):
    """Host check, token, security headers; every refusal a sentence."""

    def __init__(self, app: Any, web: Web, env: jinja2.Environment) -> None:
        super().__init__(app)
        self.web, self.env = web, env

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await self._checked(request, call_next)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _checked(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        host = request.headers.get("host")
        if not guard.host_allowed(host, self.web.bind):
            log.warning("refused a request for Host %r from %s", host, _client(request))
            return self._refuse(
                request,
                403,
                "This address is not one p2p-web answers to; open it by its IP address "
                "or as localhost.",
            )
        given = request.query_params.get("token")
        if guard.needs_token(request.url.path, self.web.bind):
            cookie = request.cookies.get(guard.TOKEN_COOKIE)
            if not (webtoken.same(given, self.web.token) or webtoken.same(cookie, self.web.token)):
                return self._refuse(
                    request,
                    403,
                    "This page needs the node's web token: open the link that "
                    "p2pctl share-link prints.",
                )
        if request.method not in guard.SAFE_METHODS and not guard.origin_matches(
            request.headers.get("origin"), host
        ):
            return self._refuse(request, 403, "A page from another site cannot change this node.")
        response = await call_next(request)
        if webtoken.same(given, self.web.token):
            response.set_cookie(
                guard.TOKEN_COOKIE, self.web.token, httponly=True, samesite="strict", path="/"
            )
        return response

    def _refuse(self, request: Request, status: int, message: str) -> Response:
        return error_response(self.env, request, status, message)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def error_response(
    env: jinja2.Environment, request: Request, status: int, message: str
) -> Response:
    if wants_json(request) or request.url.path.startswith("/api/"):
        return JSONResponse({"ok": False, "message": message}, status_code=status)
    html = env.get_template("error.html").render(status=status, message=message)
    return HTMLResponse(html, status_code=status)


# ------------------------------------------------------------ the app


def make_app(web: Web) -> Starlette:
    env = make_env()

    def page(name: str, **context: Any) -> str:
        return env.get_template(name).render(
            csrf=web.csrf, share_on=web.settings.web_share, **context
        )

    def index(request: Request) -> Response:
        now = time.time()
        v = dashboard.view(web.database, web.sampler, request.query_params.get("q"), now=now)
        note = web.notes.get(request.query_params.get("note", ""))
        return HTMLResponse(page("index.html", v=v, note=note))

    def live(request: Request) -> Response:
        now = time.time()
        v = dashboard.view(web.database, web.sampler, request.query_params.get("q"), now=now)
        sections = {name: page(f"live_{name}.html", v=v) for name in LIVE_SECTIONS}
        return JSONResponse({"sections": sections})

    def state(request: Request) -> Response:
        now = time.time()
        v = dashboard.view(web.database, web.sampler, request.query_params.get("q"), now=now)
        return JSONResponse(dashboard.state_json(v))

    def action_route(verb: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return await act(request, verb)

        return Route(f"/{verb}", endpoint, methods=["POST"])

    async def act(request: Request, verb: str) -> Response:
        form = await small_form(request)
        if form is None:
            action = dashboard.Action(False, "That request was not a form this page sends.")
            return _answer(request, action, 400)
        sent = form.get(guard.CSRF_FIELD) or request.headers.get(guard.CSRF_HEADER)
        if not isinstance(sent, str) or not webtoken.same(sent, web.csrf):
            action = dashboard.Action(
                False, "This page is out of date or came from elsewhere; reload it and try again."
            )
            return _answer(request, action, 403)
        value = form.get("name") if verb == "download" else form.get("id")
        value = value if isinstance(value, str) else ""
        if verb == "download":
            action = await _in_thread(dashboard.queue, web.database, value)
        else:
            action = await _in_thread(dashboard.change, web.database, verb, value)
        log.info("%s %r from %s: %s", verb, value, _client(request), action.message)
        return _answer(request, action, 200 if action.ok else 409)

    def _answer(request: Request, action: dashboard.Action, status: int) -> Response:
        if wants_json(request):
            return JSONResponse({"ok": action.ok, "message": action.message}, status_code=status)
        if status in (400, 403):  # refused outright: no note on the dashboard for it
            return error_response(env, request, status, action.message)
        key = secrets.token_hex(8)
        web.notes[key] = action
        while len(web.notes) > KEEP_NOTES:
            web.notes.popitem(last=False)
        return RedirectResponse(f"/?note={key}", status_code=303)

    def share_page(request: Request) -> Response:
        if not web.settings.web_share:
            raise HTTPException(404, "The browser share is off; set P2P_WEB_SHARE=1 to turn it on.")
        segment = request.path_params.get("root", "")
        rest = request.path_params.get("path", "")
        with web.database.read() as s:
            files = reports.list_local_files(s)
        if not segment:
            roots = [(label, share.listing(files, root, "")) for label, root in share.ROOTS.items()]
            return HTMLResponse(
                page("share.html", roots=roots, crumbs=[], entries=None, base="/share/")
            )
        root = share.ROOTS.get(segment)
        if root is None:
            raise HTTPException(404, "No shared folder has that name.")
        if rest == "" or rest.endswith("/"):
            try:
                entries = share.listing(files, root, rest)
            except share.NotShared as exc:
                raise HTTPException(404, str(exc)) from None
            crumbs = [segment, *[p for p in rest.split("/") if p]]
            base = "/share/" + "".join(quote(c, safe="") + "/" for c in crumbs)
            return HTMLResponse(
                page("share.html", roots=None, crumbs=crumbs, entries=entries, base=base)
            )
        with web.database.read() as s:
            row = reports.local_file(s, root, rest)
        if row is None:
            raise HTTPException(404, "This node shares no file by that name.")
        return _send(request, row)

    def _send(request: Request, row: reports.LocalFileRow) -> Response:
        try:
            fd, st = share.open_verified(web.settings, row)
        except share.NotShared as exc:
            raise HTTPException(404, str(exc)) from None
        except share.Changed as exc:
            raise HTTPException(409, str(exc)) from None
        etag = f'"{row.sha256}"'
        headers = {
            "accept-ranges": "bytes",
            "etag": etag,
            "content-disposition": share.content_disposition(row.name),
            "content-type": mimetypes.guess_type(row.name)[0] or "application/octet-stream",
        }
        if_range = request.headers.get("if-range")
        header = request.headers.get("range") if if_range in (None, etag) else None
        try:
            span = ranges.parse_range(header, st.st_size)
        except ranges.Unsatisfiable:
            _close(fd)
            return Response(
                b"", status_code=416, headers={"content-range": f"bytes */{st.st_size}"}
            )
        status = 200 if span is None else 206
        start, length = (0, st.st_size) if span is None else (span.start, span.length)
        if span is not None:
            headers["content-range"] = span.content_range(st.st_size)
        headers["content-length"] = str(length)
        if request.method == "HEAD":
            _close(fd)
            return Response(b"", status_code=status, headers=headers)
        log.info(
            "share: %s %s (%d bytes from %d) to %s",
            row.root,
            row.name,
            length,
            start,
            _client(request),
        )
        return StreamingResponse(
            share.read_span(fd, start, length), status_code=status, headers=headers
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if exc.detail and exc.detail[-1:] in ".!?" else None
        generic = {
            404: "There is no such page.",
            405: "That page does not take that kind of request.",
        }
        message = detail or generic.get(exc.status_code, "That request was refused.")
        return error_response(env, request, exc.status_code, message)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("error answering %s %s", request.method, request.url.path)
        return error_response(
            env,
            request,
            500,
            "Something went wrong inside p2p-web; its log (logs/web.log in the node's home) "
            "says what.",
        )

    routes = [
        Route("/", index),
        Route("/live", live),
        Route("/api/state", state),
        *(action_route(verb) for verb in ("download", "pause", "resume", "cancel")),
        Route("/share/", share_page),
        Route("/share", lambda r: RedirectResponse("/share/", status_code=307)),
        Route("/share/{root:str}/", share_page),
        Route("/share/{root:str}/{path:path}", share_page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, web=web, env=env)],
        exception_handlers={HTTPException: not_found, Exception: crashed},
    )


async def small_form(request: Request) -> dict[str, str] | None:
    """An urlencoded form of at most MAX_FORM_BYTES (all the page ever sends); else None."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


async def _in_thread(fn: Any, *args: Any) -> dashboard.Action:
    result: dashboard.Action = await run_in_threadpool(fn, *args)
    return result


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
