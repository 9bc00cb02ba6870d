"""p2pctl's reports of what happened: history, uploads. They read the database alone, so
they work on a stopped node too (saying so in one line). `files` and `peers` are in
`cli.listings`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import click
from sqlalchemy import Connection

from p2pshare.cli.context import Ctl, pass_ctl
from p2pshare.cli.render import emit_json, emit_table
from p2pshare.db import history as history_db
from p2pshare.db import ledger, reports
from p2pshare.db.queueing import PAUSED_BY_USER
from p2pshare.db.status import KEEPING_TEMP, Status
from p2pshare.services.units import duration, human_bytes, rate, when

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
T = TypeVar("T")


def fetch_report(ctl: Ctl, query: Callable[[Connection], list[T]], as_json: bool) -> list[T] | None:
    """Rows of a report; None when they were printed as JSON already."""
    ctl.note_if_stopped()
    with ctl.database.read() as s:
        rows = query(s)
    if as_json:
        emit_json(rows)
        return None
    return rows


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N.")
@click.option(
    "--addresses", is_flag=True, help="Name the peers by address:port rather than username."
)
@json_option
@pass_ctl
def history(ctl: Ctl, limit: int | None, addresses: bool, as_json: bool) -> None:
    """Every download: name, size, status, when, how fast, from whom."""
    ctl.note_if_stopped()
    with ctl.database.read() as s:
        rows = reports.list_downloads(s, limit)
        older = history_db.rolled_up(s)
    if as_json:
        emit_json(rows)
        if older:  # scripts read stdout; the person running one learns it too
            click.echo(f"note: {rolled_up_words(older)}", err=True)
        return
    table = []
    for d in rows:
        took = (d.finished_at - d.started_at) if d.finished_at and d.started_at else None
        status = status_words(d)
        if d.switched and d.switched != d.reason:
            status += f" ({d.switched})"
        table.append(
            [
                d.id,
                d.saved_as or d.name,
                human_bytes(d.size),
                status,
                when(d.started_at or d.requested_at),
                duration(took),
                rate(d.bytes_done, took),
                ", ".join(d.peers if addresses else source_names(d)) or "-",
                d.bad_chunks,
            ]
        )
    emit_table(
        ["id", "name", "size", "status", "started (UTC)", "took", "rate", "peers", "bad"],
        table,
        "No downloads listed; start one with: p2pctl download NAME"
        if older
        else "No downloads yet; start one with: p2pctl download NAME",
    )
    if older:
        click.echo(rolled_up_words(older))


def status_words(d: reports.DownloadRow) -> str:
    """`active 42%: why`: how far an unfinished download is, and its reason unless it
    only repeats the status (`paused: paused by the user`)."""
    words = d.status
    if d.status in KEEPING_TEMP and d.size:
        words += f" {100 * d.bytes_done // d.size}%"
    if d.reason and d.reason != PAUSED_BY_USER:
        words += f": {d.reason}"
    return words


def rolled_up_words(older: list[history_db.RolledUp]) -> str:
    """One sentence on the downloads rolled up past the horizon: how many, which days."""
    total = sum(r.downloads for r in older)
    first = min(r.first_day for r in older)
    last = max(r.last_day for r in older) + ledger.DAY_SECONDS
    parts = [
        f"{r.status} {r.downloads}"
        + (f" ({human_bytes(r.bytes)})" if r.status == Status.DONE else "")
        for r in older
    ]
    return (
        f"Not listed: {total} older downloads that ended {when(first)[:10]} to "
        f"{when(last - 1)[:10]}, rolled up per day into download_days "
        f"(P2P_HISTORY_DAYS): {', '.join(parts)}."
    )


def source_names(d: reports.DownloadRow) -> list[str]:
    """Each source by the name it announced, once; by address:port when it announced none,
    and with its address when machines at several addresses announced that name."""
    hosts: dict[str, set[str]] = {}
    for name, peer in zip(d.peer_names, d.peers, strict=True):
        hosts.setdefault(name, set()).add(peer.rpartition(":")[0])
    names = [
        (f"{name} ({peer.rpartition(':')[0]})" if len(hosts[name]) > 1 else name) if name else peer
        for name, peer in zip(d.peer_names, d.peers, strict=True)
    ]
    return list(dict.fromkeys(names))


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, help="How many (newest first).")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=None,
    help="Totals per peer and file over the last N UTC days (today is one), rolled-up days too.",
)
@json_option
@pass_ctl
def uploads(ctl: Ctl, limit: int, days: int | None, as_json: bool) -> None:
    """Chunks this node served to others, newest first; --days N: totals per peer and file."""
    if days is not None:
        upload_totals(ctl, days, as_json)
        return
    rows = fetch_report(ctl, lambda s: reports.list_uploads(s, limit), as_json)
    if rows is None:
        return
    emit_table(
        ["at (UTC)", "peer", "name", "chunk", "bytes", "rate"],
        [
            [
                when(u.at),
                u.peer_address,
                u.name,
                u.chunk_index,
                human_bytes(u.bytes),
                rate(u.bytes, u.seconds),
            ]
            for u in rows
        ],
        "Nothing uploaded yet.",
    )


def upload_totals(ctl: Ctl, days: int, as_json: bool) -> None:
    """`uploads --days N`: per peer and file, from `uploads` and `upload_days` together."""
    since = ledger.day_start(time.time()) - (days - 1) * ledger.DAY_SECONDS
    rows = fetch_report(ctl, lambda s: ledger.uploads_since(s, since), as_json)
    if rows is None:
        return
    emit_table(
        ["peer", "name", "sha256", "chunks", "bytes", "rate", "from (UTC)", "last (UTC)"],
        [
            [
                u.peer_address,
                u.name,
                u.sha256[:12],
                u.chunks,
                human_bytes(u.bytes),
                rate(u.bytes, u.seconds),
                when(u.first_day)[:10],
                when(u.last_at),
            ]
            for u in rows
        ],
        f"Nothing uploaded in the last {days} days.",
    )
