"""What every handler of p2p-web shares: the `Web` state, the template environment, and
reading a small form or answering with an error page (or JSON) in one sentence."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from p2pshare.db.engine import Database
from p2pshare.services.settings import Settings
from p2pshare.services.units import ago, human_bytes, human_eta, human_rate, when
from p2pshare.services.web import dashboard
from p2pshare.services.web import token as webtoken
from p2pshare.services.web.sampler import RateSampler

HERE = Path(__file__).parent
# A form holds a CSRF token and a file name or download id.
MAX_FORM_BYTES = 16 * 1024


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


def client_of(request: Request) -> str:
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
