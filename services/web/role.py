"""p2p-web: the fifth supervised program. One socket, uvicorn in a thread, a rate sampler.

P2P_WEB_PORT=off: the program records `port off` and idles until SIGTERM (exit 0), so
supervisord sees it RUNNING and `supervisorctl status` stays plain; nothing listens.
"""

from __future__ import annotations

import logging
import threading
import time

from p2pshare.db import reports
from p2pshare.services.net.listen import open_listener
from p2pshare.services.runtime import RoleContext, StartupError, run_role, start_heartbeat
from p2pshare.services.web import guard
from p2pshare.services.web import token as webtoken
from p2pshare.services.web.sampler import SAMPLE_SECONDS, RateSampler

log = logging.getLogger("p2p.web")
# Enough for open browser tabs to finish; supervisord waits 10 s before it kills.
GRACEFUL_SECONDS = 3.0


def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    if settings.web_port is None:
        ctx.record_settings({"bind": settings.web_bind, "port": "off", "share": False})
        ctx.detail = "off (P2P_WEB_PORT=off)"
        start_heartbeat(ctx)
        log.info("P2P_WEB_PORT=off: not listening; idling until stopped")
        ctx.stop.wait()
        return
    try:
        token = webtoken.ensure_token(settings.home)
    except webtoken.TokenError as exc:
        raise StartupError(str(exc)) from None
    sock = open_listener(
        settings.web_bind, settings.web_port, setting="P2P_WEB_BIND, P2P_WEB_PORT", backlog=128
    )
    sock.setblocking(False)
    port = int(sock.getsockname()[1])
    # Imported here: the web stack costs start-up time the idle case does not need.
    import uvicorn

    from p2pshare.services.web.app import make_app
    from p2pshare.services.web.context import Web
    from p2pshare.services.web.quiet import QuietServer

    sampler = RateSampler()
    web = Web(settings, ctx.database, token, sampler, settings.web_bind)
    config = uvicorn.Config(
        make_app(web),
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(GRACEFUL_SECONDS),
    )
    server = QuietServer(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    ctx.record_settings(
        {
            "bind": settings.web_bind,
            "port": port,
            "share": settings.web_share,
            "token_required": not guard.is_loopback(settings.web_bind),
        }
    )
    ctx.detail = f"http {settings.web_bind}:{port}" + (", share on" if settings.web_share else "")
    start_heartbeat(ctx)
    thread.start()
    log.info(
        "dashboard at http://%s:%d/ (share %s)",
        settings.web_bind,
        port,
        "on" if settings.web_share else "off",
    )
    try:
        while not ctx.stop.wait(SAMPLE_SECONDS):
            if not thread.is_alive():
                raise StartupError("the web server stopped unexpectedly")
            try:
                with ctx.database.read() as s:
                    received = reports.received_bytes(s)
            except Exception:  # a busy moment must not kill the page; the next sample retries
                log.exception("could not sample download progress")
                continue
            sampler.add(received, now=time.time())
    finally:
        server.stop()
        thread.join(GRACEFUL_SECONDS + 3)
        sock.close()


def main() -> None:
    run_role("web", run, uses_tls=False)


if __name__ == "__main__":
    main()
