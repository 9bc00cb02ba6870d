"""p2p-torrent: one libtorrent session that seeds every torrent `p2pctl torrent` made,
from the share and download folders as they are (no copies), and fetches the magnet
links and .torrent files `p2pctl download` queued (fetch.py).

It listens on P2P_BIND:P2P_TORRENT_PORT (0: any free port, recorded in role_settings).
Local Service Discovery is on unless P2P_BIND is a loopback address (its multicast would
leave loopback); DHT, UPnP and NAT-PMP only with P2P_BITTORRENT_DHT=on. With a network
key it serves nothing unless P2P_BITTORRENT=on: BitTorrent peers cannot prove the key.
Without libtorrent it says so in one line and idles, beating like the other roles.
What it serves goes into `uploads`, per peer and file, from libtorrent's upload alerts.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import ModuleType
from typing import Any

from p2pshare.db import serving
from p2pshare.db import torrents as dbt
from p2pshare.services.runtime import RoleContext, StartupError, run_role, start_heartbeat
from p2pshare.services.torrent import NOT_INSTALLED, load_libtorrent
from p2pshare.services.torrent.fetch import Fetcher
from p2pshare.services.torrent.make import layout

log = logging.getLogger("p2p.torrent")

ALERT_WAIT_MS = 500
# The torrents table and the index are read again this often even without a commit.
RESYNC_SECONDS = 10.0
SYNC_MIN_SECONDS = 1.0
FLUSH_SECONDS = 1.0
# Downloads' progress reaches the database this often (what `p2pctl download` follows).
PROGRESS_SECONDS = 0.5
# libtorrent's blocks: an upload alert stands for this many bytes (less at the very end).
BLOCK_SIZE = 16 * 1024
# One alert per 16 KiB block sent: a fast peer makes tens of thousands a second.
ALERT_QUEUE = 200_000


@dataclass
class Seeded:
    """A torrent in the session: its handle and which local file each of its files is."""

    row: dbt.TorrentRow
    handle: Any
    info: Any
    files: dict[int, tuple[str, str]]  # file index -> (name under root, sha256)


@dataclass
class Served:
    bytes: int = 0
    first_piece: int = -1
    since: float = field(default_factory=time.time)


def idle(ctx: RoleContext, detail: str, values: dict[str, str | bool]) -> None:
    """Beat, serve nothing, stop on SIGTERM."""
    ctx.record_settings({"serving": False, **values})
    ctx.detail = detail
    start_heartbeat(ctx)
    ctx.stop.wait()


def session_settings(lt: ModuleType, bind: str, port: int, dht: bool) -> dict[str, Any]:
    cat = lt.alert.category_t
    return {
        "listen_interfaces": f"{bind}:{port}",
        "enable_dht": dht,
        "enable_upnp": dht,
        "enable_natpmp": dht,
        # uTP (LEDBAT: it yields to other traffic, for the internet) only with the DHT: between
        # two libtorrent sessions on loopback it held a download to 12-16 MB/s where TCP
        # alone ran 190 MB/s (256 MiB, measured beside bench/torrent_transfer.py), and a
        # LAN peer or aria2c speaks TCP anyway.
        "enable_outgoing_utp": dht,
        "enable_incoming_utp": dht,
        "enable_lsd": not ipaddress.IPv4Address(bind).is_loopback,
        # No DNS lookups of the public DHT's routers unless the DHT is on.
        **({} if dht else {"dht_bootstrap_nodes": ""}),
        "alert_mask": cat.error_notification
        | cat.status_notification
        | cat.storage_notification
        | cat.upload_notification
        # block_finished_alert: who sent each block of a download (download_sources).
        | cat.block_progress_notification,
        "alert_queue_size": ALERT_QUEUE,
        # Peers on one host (and NATed LANs) share an address.
        "allow_multiple_connections_per_ip": True,
        "user_agent": "p2pshare",
    }


class Seeder:
    """The session and what it seeds, kept in step with the database."""

    def __init__(self, lt: ModuleType, ctx: RoleContext) -> None:
        self.lt, self.ctx = lt, ctx
        s = ctx.settings
        self.session = lt.session(session_settings(lt, s.bind, s.torrent_port, s.bittorrent_dht))
        self.port = int(self.session.listen_port())
        if not self.port:
            raise StartupError(
                f"cannot listen for BitTorrent on {s.bind}:{s.torrent_port} "
                "(P2P_BIND, P2P_TORRENT_PORT); is the port taken?"
            )
        self.seeded: dict[str, Seeded] = {}
        self.refused: set[str] = set()  # info-hashes already logged as not seedable
        self.served: dict[tuple[str, str, str], Served] = {}
        self.detail = ""

    def sync(self) -> None:
        """Seed every torrent whose files hold their content; drop the others."""
        with self.ctx.database.read() as s:
            rows = dbt.torrents(s)
            held = dbt.held_by_name(s) if rows else {}
        wanted = {}
        for row in rows:
            ok = all(held.get((row.root, n)) and held[(row.root, n)].sha256 == sha
                     for n, sha in row.files)  # fmt: skip
            if ok:
                wanted[row.info_hash] = row
            elif row.info_hash not in self.refused:
                self.refused.add(row.info_hash)
                log.info("not seeding %s: its files changed or went since it was made", row.name)
        for info_hash in set(self.seeded) - set(wanted):
            gone = self.seeded.pop(info_hash)
            self.session.remove_torrent(gone.handle)  # keeps the files, of course
            log.info("stopped seeding %s", gone.row.name)
        for info_hash, row in wanted.items():
            if info_hash not in self.seeded:
                self.refused.discard(info_hash)
                self.add(row, [held[(row.root, n)] for n, _ in row.files])
        bind = self.ctx.settings.bind
        self.detail = f"bittorrent {bind}:{self.port}, seeding {len(self.seeded)}"

    def add(self, row: dbt.TorrentRow, files: list[dbt.HeldFile]) -> None:
        lt = self.lt
        lay = layout(self.ctx.settings, row.name, files)
        info = lt.torrent_info(lt.bdecode(row.metainfo))
        params = lt.add_torrent_params()
        params.ti = info
        params.save_path = str(lay.save_dir)
        # Seed mode: no hash check of every byte at start; libtorrent verifies each piece
        # the first time it sends it, so a file changed on disk is never served as good.
        params.flags = lt.torrent_flags.seed_mode | lt.torrent_flags.upload_mode
        handle = self.session.add_torrent(params)
        self.seeded[row.info_hash] = Seeded(row, handle, info, file_map(info, row))
        log.info("seeding %s (%s, %s) from %s", row.name, row.format, row.info_hash, lay.save_dir)

    def handle_alerts(self, other: Callable[[Any], bool] = lambda _alert: False) -> None:
        """Count uploads from the alerts; those `other` takes are about downloads."""
        lt = self.lt
        for alert in self.session.pop_alerts():
            if isinstance(alert, lt.block_uploaded_alert):
                self.count_upload(alert)
            elif other(alert):
                continue
            elif isinstance(alert, lt.alerts_dropped_alert):
                log.warning("libtorrent dropped alerts; uploads may be undercounted")
            elif alert.category() & lt.alert.category_t.error_notification:
                log.warning("%s", alert.message())

    def count_upload(self, alert: Any) -> None:
        seeded = self.by_handle(alert.handle)
        if seeded is None:
            return
        ip = alert.ip[0] if isinstance(alert.ip, tuple) else str(alert.ip)
        piece, block = int(alert.piece_index), int(alert.block_index)
        size = min(BLOCK_SIZE, seeded.info.piece_size(piece) - block * BLOCK_SIZE)
        for part in seeded.info.map_block(piece, block * BLOCK_SIZE, size):
            local = seeded.files.get(int(part.file_index))
            if local is None:  # a pad file
                continue
            served = self.served.setdefault((ip, *local), Served())
            if served.first_piece < 0:
                served.first_piece = piece
            served.bytes += int(part.size)

    def by_handle(self, handle: Any) -> Seeded | None:
        for seeded in self.seeded.values():
            if seeded.handle == handle:
                return seeded
        return None

    def flush(self, now: float) -> None:
        """Write what was served since the last flush: one `uploads` row per peer and file."""
        if not self.served:
            return
        rows = [
            serving.ServedChunk(now, ip, sha, name, s.first_piece, 0, s.bytes, now - s.since)
            for (ip, name, sha), s in self.served.items()
        ]
        self.served = {}
        with self.ctx.database.write() as s:
            serving.record_uploads(s, rows)

    def close(self) -> None:
        self.session.pause()
        self.handle_alerts()
        self.flush(time.time())


def file_map(info: Any, row: dbt.TorrentRow) -> dict[int, tuple[str, str]]:
    """Torrent file index -> (name under root, sha256), matching paths (libtorrent orders
    v2 files its own way and adds pad files, which map to nothing)."""
    sha_of = dict(row.files)
    fs = info.files()
    out = {}
    for i in range(fs.num_files()):
        parts = PurePosixPath(fs.file_path(i)).parts
        if row.name.endswith("/"):
            name = row.name + "/".join(parts[1:])
        else:
            name = str(PurePosixPath(row.files[0][0]))
        if name in sha_of:
            out[i] = (name, sha_of[name])
    return out


def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    lt = load_libtorrent()
    if lt is None:
        log.info("%s; idling", NOT_INSTALLED)
        idle(ctx, "idle: libtorrent is not installed", {"available": False})
        return
    if not settings.bittorrent_serves:
        why = "P2P_BITTORRENT=off" if settings.bittorrent is False else (
            "a network key is set, which BitTorrent peers cannot prove (P2P_BITTORRENT=on serves)"
        )  # fmt: skip
        log.info("serving nothing: %s", why)
        idle(ctx, f"off: {why}", {"available": True})
        return
    seeder = Seeder(lt, ctx)
    ctx.record_settings(
        {
            "bind": settings.bind,
            "port": seeder.port,
            "serving": True,
            "dht": settings.bittorrent_dht,
            "lsd": not ipaddress.IPv4Address(settings.bind).is_loopback,
            "libtorrent": str(lt.__version__),
        }
    )
    log.info("libtorrent %s listening on %s:%d", lt.__version__, settings.bind, seeder.port)
    fetcher = Fetcher(lt, settings, ctx.database, seeder.session, stop=ctx.stop, tls=ctx.tls)
    watch = ctx.database.watch()
    try:
        seeder.sync()
        fetcher.sync()
        start_heartbeat(ctx)
        synced = flushed = progressed = time.monotonic()
        while not ctx.stop.is_set():
            if seeder.session.wait_for_alert(ALERT_WAIT_MS) is not None:
                seeder.handle_alerts(fetcher.on_alert)
            now = time.monotonic()
            # Every role commits a heartbeat every 2 s, so a commit alone is no reason to
            # read the index more often than that; a download queued waits as long at most.
            due = now - synced > SYNC_MIN_SECONDS and watch.changed()
            # p2pshare peers sent a torrent's files: publish it (or start libtorrent) now.
            if due or now - synced > RESYNC_SECONDS or fetcher.lan.ended():
                seeder.sync()
                fetcher.sync()
                synced = now
            if now - progressed > PROGRESS_SECONDS:
                fetcher.flush()
                progressed = now
            if now - flushed > FLUSH_SECONDS:
                seeder.flush(time.time())
                flushed = now
            ctx.detail = f"{seeder.detail}, fetching {len(fetcher.fetching)}" + (
                f", {len(fetcher.lan.runs)} from p2pshare peers" if fetcher.lan.runs else ""
            )
    finally:
        watch.close()
        fetcher.close()
        seeder.close()


def main() -> None:
    run_role("torrent", run)


if __name__ == "__main__":
    main()
