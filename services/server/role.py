"""Server role: indexes the shared folders and serves catalogs and chunks over TCP."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import threading
import time

from p2pshare.db import node as dbnode
from p2pshare.services.net.listen import open_listener
from p2pshare.services.runtime import RoleContext, run_role, start_heartbeat
from p2pshare.services.server.chunkserver import ChunkServer
from p2pshare.services.server.housekeeping import Housekeeping, housekeeping_loop
from p2pshare.services.server.indexer import ShareIndexer

log = logging.getLogger("p2p.server")

SCAN_INTERVAL = 1.0
# A rescan stats every shared file (10,000 unchanged ones take about 0.15 s): a large
# share is rescanned less often, so looking for changes takes at most this share of a
# core (and of the GIL the chunk server's loop needs), and waits at most SCAN_MAX_INTERVAL.
SCAN_CPU_SHARE = 0.05
SCAN_MAX_INTERVAL = 10.0


def index_loop(ctx: RoleContext, indexer: ShareIndexer, address: str) -> None:
    """Rescan every SCAN_INTERVAL (longer for a large share), or as soon as a new file has
    settled, until stopped.

    An error in one scan is logged, not fatal.
    """
    while not ctx.stop.is_set():
        # The write transactions so far ride on the heartbeat, as the downloader's do:
        # the benchmark reads them to show the server's bookkeeping is batched.
        ctx.detail = f"{address}, {ctx.database.write_count} db writes"
        pause = SCAN_INTERVAL
        try:
            started = time.monotonic()
            stats = indexer.step()
            took = time.monotonic() - started
            if not stats.touched:  # a step that hashed files says nothing of a rescan's cost
                pause = min(SCAN_MAX_INTERVAL, max(SCAN_INTERVAL, took / SCAN_CPU_SHARE))
            if stats.settles_at is not None:
                pause = min(pause, max(0.05, stats.settles_at - time.time() + 0.01))
        except Exception:
            log.exception("index scan failed; retrying")
        ctx.stop.wait(pause)


def serve(ctx: RoleContext) -> None:
    raise_fd_limit()
    listener = open_listener(ctx.settings.bind, ctx.settings.tcp_port)
    port = listener.getsockname()[1]
    address = f"tcp {ctx.settings.bind}:{port}"
    ctx.detail = f"{address}, 0 db writes"
    with ctx.database.write() as s:
        dbnode.set_tcp_port(s, port, now=time.time())
    record_settings(ctx, port)
    log.info("listening on %s:%d", ctx.settings.bind, port)
    start_heartbeat(ctx)
    indexer = ShareIndexer(ctx.database, ctx.settings)
    indexing = threading.Thread(
        target=index_loop, args=(ctx, indexer, address), name="index", daemon=True
    )
    indexing.start()
    keeper = Housekeeping(ctx.database, ctx.settings.history_days, ctx.stop)
    housekeeping = threading.Thread(
        target=housekeeping_loop, args=(keeper,), name="housekeeping", daemon=True
    )
    housekeeping.start()
    try:
        asyncio.run(_serve_tcp(ctx, listener))
    finally:
        listener.close()
        with ctx.database.write() as s:
            dbnode.set_tcp_port(s, None, now=time.time())
        indexing.join(timeout=5)
        housekeeping.join(timeout=5)


def record_settings(ctx: RoleContext, port: int) -> None:
    """What the server runs with, for `p2pctl status`: the real port, not P2P_TCP_PORT=0."""
    settings = ctx.settings
    ctx.record_settings(
        {
            "bind": settings.bind,
            "tcp_port": port,
            "share_dir": settings.share_dir,
            "download_dir": settings.download_dir,
            "upload_limit": settings.upload_limit,
            "chunk_size": settings.chunk_size or "auto",
            "encrypt": ctx.tls.encrypt,
            "history_days": settings.history_days,
        }
    )


async def _serve_tcp(ctx: RoleContext, listener: socket.socket) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def relay_stop() -> None:
        ctx.stop.wait()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=relay_stop, name="stop-relay", daemon=True).start()
    await ChunkServer(ctx.settings, ctx.database, stop, ctx.tls).run(listener)


def raise_fd_limit() -> None:
    """Many idle peers cost a descriptor each; take the hard limit we are allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    run_role("server", serve)


if __name__ == "__main__":
    main()
