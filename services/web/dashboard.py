"""What the dashboard shows and does: views read with the db/ report functions p2pctl
--json uses, actions written with the db/ calls p2pctl makes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from p2pshare.db import downloads as dbdl
from p2pshare.db import listing, reports
from p2pshare.db import node as dbnode
from p2pshare.db import requests as dbreq
from p2pshare.db.engine import Database
from p2pshare.db.status import Status
from p2pshare.services.web import chart
from p2pshare.services.web.sampler import RateSampler

# Shown as running (with controls) rather than as history: unfinished or paused.
RUNNING = dbdl.KEEPING_TEMP
# A finished download stays among the progress bars, at 100 %, for this long.
RECENT_SECONDS = 120.0
HISTORY_ROWS = 30
UPLOAD_ROWS = 30
# The first page of each listing, and its total: the page refreshes every second, so
# its cost must follow what it shows, not how many peers and offers the network has.
FILE_ROWS = 100
PEER_ROWS = 100


@dataclass(frozen=True)
class Progress:
    """One unfinished download as the page shows it."""

    id: int
    name: str
    size: int
    status: str
    reason: str | None
    bytes_done: int
    percent: int
    rate: float | None  # bytes per second, None until two samples
    eta: float | None  # seconds
    peers: int
    sources: list[str]  # usernames of the peers it got bytes from
    saved_as: str | None


@dataclass(frozen=True)
class Action:
    """What a POST did: one sentence for the page, and whether it worked."""

    ok: bool
    message: str


def view(
    database: Database, sampler: RateSampler, query: str | None, *, now: float
) -> dict[str, Any]:
    """Everything the page shows, read in one short transaction."""
    with database.read() as s:
        roles = dbnode.role_statuses(s, now=now)
        recorded = dbnode.role_settings(s)
        counts = reports.counts(s)
        conn = s
        peers = list(listing.iter_peers(conn, limit=PEER_ROWS))
        peers_total = listing.count_peers(conn)
        files, files_total = listing.files_page(conn, query or None, limit=FILE_ROWS)
        versions = listing.name_versions(conn, [f.name for f in files])
        downloads = reports.list_downloads(s, HISTORY_ROWS + 20)
        shown = [
            d
            for d in downloads
            if d.status in RUNNING or (d.finished_at or 0) >= now - RECENT_SECONDS
        ]
        follow = {f.id: f for f in dbreq.follow_states(s, [d.id for d in shown])}
        uploads = reports.list_uploads(s, UPLOAD_ROWS)
        since = now - chart.WINDOW_SECONDS
        up = reports.upload_buckets(s, since=since, bucket_seconds=chart.BUCKET_SECONDS)
    progress = [
        _progress(d, follow[d.id].peers if d.id in follow else 0, sampler, now) for d in shown
    ]
    down = chart.bucket_rates(
        (
            (int((x.at - since) // chart.BUCKET_SECONDS), x.received)
            for x in sampler.samples(since=since)
        ),
        chart.BUCKETS,
    )
    announcer = recorded.get("announcer", {})
    server = recorded.get("server", {})
    return {
        "node": {
            "username": announcer.get("username", "-"),
            "address": server.get("bind", "-"),
            "tcp_port": server.get("tcp_port", "-"),
            "version": announcer.get("version") or server.get("version", "-"),
        },
        "roles": roles,
        "counts": counts,
        "peers": peers,
        "peers_total": peers_total,
        "files": files,
        "files_total": files_total,
        "files_more": max(0, files_total - len(files)),
        "pick": {
            (f.name, f.sha256): f.name
            if versions.get(f.name, 1) == 1
            else f"{f.name}@{f.sha256[:16]}"
            for f in files
        },
        "query": query or "",
        "progress": progress,
        "history": [d for d in downloads if d.status not in RUNNING][:HISTORY_ROWS],
        "uploads": uploads,
        "chart": chart.make_chart(down, chart.bucket_rates(up.items(), chart.BUCKETS)),
        "now": now,
    }


def _progress(d: reports.DownloadRow, peers: int, sampler: RateSampler, now: float) -> Progress:
    rate = sampler.rate(d.id, now=now) if d.status == Status.ACTIVE else None
    left = max(0, d.size - d.bytes_done)
    eta = left / rate if rate else None
    percent = (
        100 if d.size == 0 or d.status == Status.DONE else min(100, d.bytes_done * 100 // d.size)
    )
    sources = list(dict.fromkeys(n or a for n, a in zip(d.peer_names, d.peers, strict=True)))
    return Progress(
        d.id,
        d.name,
        d.size,
        d.status,
        d.reason,
        d.bytes_done,
        percent,
        rate,
        eta,
        peers,
        sources,
        d.saved_as,
    )


def state_json(v: dict[str, Any]) -> dict[str, Any]:
    """The view as plain JSON (the same dataclasses `p2pctl --json` prints)."""
    c: chart.Chart = v["chart"]
    return {
        "node": v["node"],
        "roles": [asdict(r) for r in v["roles"]],
        "counts": asdict(v["counts"]),
        "peers": [asdict(p) for p in v["peers"]],
        "peers_total": v["peers_total"],
        "files": [asdict(f) for f in v["files"]],
        "files_total": v["files_total"],
        "downloads": [asdict(p) for p in v["progress"]],
        "history": [asdict(d) for d in v["history"]],
        "uploads": [asdict(u) for u in v["uploads"]],
        "chart": {
            "bucket_seconds": chart.BUCKET_SECONDS,
            "series": {s.label: s.rates for s in c.series},
        },
    }


# ------------------------------------------------------------ actions


def queue(database: Database, pattern: str) -> Action:
    """Queue a download as `p2pctl download PATTERN --no-wait` does."""
    pattern = pattern.strip()
    if not pattern:
        return Action(False, "Say which file to download.")
    with database.read() as s:
        roles = {r.role: r for r in dbnode.role_statuses(s, now=time.time())}
    if not roles["downloader"].alive:
        return Action(
            False,
            "The downloader of this node is not running, so nothing was queued; "
            "p2pctl status says why.",
        )
    every = pattern.endswith("/")
    try:
        with database.write(durable=True) as s:
            q = dbreq.queue_request(s, pattern, every=every, now=time.time())
    except dbdl.AlreadyHere as exc:
        return Action(True, f"{exc.name} is already here.")
    except (dbdl.UnknownName, dbdl.AmbiguousName, dbreq.SeveralVersions) as exc:
        return Action(False, _sentence(str(exc)))
    if q.kind == "file":
        c = q.candidates[0]
        verb = "Queued" if q.new else "Already downloading"
        return Action(True, f"{verb} {c.name} (download {q.downloads[0]}).")
    return Action(True, f"Queued {len(q.downloads)} files of {pattern} (request {q.request_id}).")


def change(database: Database, verb: str, download_id: str) -> Action:
    """Pause, resume or cancel one download by id, as p2pctl does."""
    if not (download_id.isascii() and download_id.isdecimal()):
        return Action(False, "That is not a download number.")
    with database.write(durable=True) as s:
        if verb == "pause":
            names = dbreq.pause_downloads(s, download_id)
        elif verb == "resume":
            names = dbreq.resume_downloads(s, download_id)
        else:
            names = dbreq.cancel_downloads(s, download_id, now=time.time())
    done = {"pause": "Paused", "resume": "Resumed", "cancel": "Cancelled"}[verb]
    if not names:
        state = "paused" if verb == "resume" else "unfinished"
        return Action(False, f"No {state} download has number {download_id}.")
    return Action(True, f"{done} {', '.join(names)}.")


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
