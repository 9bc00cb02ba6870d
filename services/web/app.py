"""The Starlette app: dashboard, JSON state, actions, the browser share and static files."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from p2pshare.db import reports
from p2pshare.services.web import dashboard, guard, share
from p2pshare.services.web import token as webtoken
from p2pshare.services.web.context import (
    HERE,
    Web,
    client_of,
    error_response,
    make_env,
    small_form,
    wants_json,
)
from p2pshare.services.web.guard import Guard

log = logging.getLogger("p2p.web")
LIVE_SECTIONS = ("node", "downloads", "chart", "files", "peers", "history", "uploads")
KEEP_NOTES = 64


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
        log.info("%s %r from %s: %s", verb, value, client_of(request), action.message)
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
        return share.file_response(request, web.settings, row)

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
        middleware=[Middleware(Guard, bind=web.bind, token=web.token, env=env)],
        exception_handlers={HTTPException: not_found, Exception: crashed},
    )


async def _in_thread(fn: Any, *args: Any) -> dashboard.Action:
    result: dashboard.Action = await run_in_threadpool(fn, *args)
    return result
