"""Server role: indexes the shared folders and serves catalogs and chunks over TCP."""

from __future__ import annotations

import asyncio
import logging
import resource
import select
import socket
import threading
import time

from p2pshare.db import node as dbnode
from p2pshare.services.net.listen import open_listener
from p2pshare.services.runtime import RoleContext, run_role, start_heartbeat
from p2pshare.services.server.chunkserver import ChunkServer
from p2pshare.services.server.housekeeping import Housekeeping, housekeeping_loop
from p2pshare.services.server.indexer import ShareIndexer
from p2pshare.services.server.watch import Changes, remote_file_system

log = logging.getLogger("p2p.server")

SCAN_INTERVAL = 1.0
# Without a watch (not Linux, or past the inotify watch limit) the share is rescanned: every
# SCAN_INTERVAL, and a share so large that its rescan (a stat per file) takes longer less
# often, so rescanning takes at most this share of a core (and of the GIL the chunk
# server's loop needs) whatever the share's size.
SCAN_CPU_SHARE = 0.05
# With a watch, changes are seen as they happen (their names looked at, nothing else) and
# the whole share is rescanned only as a safety net, for what inotify cannot see (another
# host writing to a network file system): every WATCHED_RESCAN_INTERVAL, or less often for
# a share whose rescan would otherwise take more than WATCHED_CPU_SHARE of a core.
WATCHED_RESCAN_INTERVAL = 600.0
WATCHED_CPU_SHARE = 0.01
# Events are gathered this long after the first: a folder copied in is one look and one
# batch, not one per file (files are hashed only once settled anyway).
GATHER_SECONDS = 0.05


def index_loop(ctx: RoleContext, indexer: ShareIndexer, address: str) -> None:
    """Index the shared folders until stopped: a whole scan at start, then the changes a
    watch reports (or, without one, whole rescans paced to SCAN_CPU_SHARE).

    An error in one scan is logged, not fatal.
    """
    watch = indexer.start_watching()
    remote = sorted({kind for root in indexer.roots() if (kind := remote_file_system(root.path))})
    if watch is not None and remote:
        log.info(
            "a shared folder is on %s: changes other hosts make raise no event there, so "
            "it is rescanned as without a watch",
            " and ".join(remote),
        )
    changes = Changes()
    rescan_at = 0.0  # monotonic time of the next whole rescan
    while not ctx.stop.is_set():
        # The write transactions so far ride on the heartbeat, as the downloader's do:
        # the benchmark reads them to show the server's bookkeeping is batched.
        ctx.detail = f"{address}, {ctx.database.write_count} db writes"
        watched = watch is not None and not watch.full and not remote
        settles_at = None
        try:
            if changes.lost or time.monotonic() >= rescan_at:
                changes = Changes()  # events read so far: this scan sees what they name
                stats = indexer.step()
                share = WATCHED_CPU_SHARE if watched else SCAN_CPU_SHARE
                floor = WATCHED_RESCAN_INTERVAL if watched else SCAN_INTERVAL
                rescan_at = time.monotonic() + max(floor, stats.looked_seconds / share)
                settles_at = stats.settles_at
            elif changes or indexer.pending:
                names, changes = changes.names, Changes()
                settles_at = indexer.step_changes(names).settles_at
        except Exception:
            # A whole rescan in a second: it sees what the failed look was to record.
            log.exception("index scan failed; retrying")
            rescan_at = time.monotonic() + SCAN_INTERVAL
        pause = rescan_at - time.monotonic()
        if indexer.pending:  # a file settling, or one that changed while it was hashed
            wait = SCAN_INTERVAL if settles_at is None else settles_at - time.time() + 0.01
            pause = min(pause, max(0.05, wait))
        # Wake at least every SCAN_INTERVAL to see the stop flag.
        pause = max(0.0, min(pause, SCAN_INTERVAL))
        if watch is None:
            ctx.stop.wait(pause)
            continue
        if select.select([watch.fd], [], [], pause)[0]:
            ctx.stop.wait(GATHER_SECONDS)
            watch.read(changes)


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
