"""p2pctl's reports: status, peers, files, history, uploads."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import click
from sqlalchemy.orm import Session

from p2pshare.cli.context import Ctl, NodeNotRunning, pass_ctl
from p2pshare.cli.render import ago, duration, emit_json, emit_table, human_bytes, rate, when
from p2pshare.db import node as dbnode
from p2pshare.db import reports

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
T = TypeVar("T")


def fetch_report(ctl: Ctl, query: Callable[[Session], list[T]], as_json: bool) -> list[T] | None:
    """Rows of a report from a running node; None when they were printed as JSON already."""
    ctl.require_running()
    with ctl.database.read() as s:
        rows = query(s)
    if as_json:
        emit_json(rows)
        return None
    return rows


@click.command()
@json_option
@pass_ctl
def status(ctl: Ctl, as_json: bool) -> None:
    """This node: name, address, ports, which roles are alive, counts."""
    settings = ctl.settings
    now = time.time()
    with ctl.database.read() as s:
        roles = dbnode.role_statuses(s, now=now)
        state = dbnode.node_state(s) if s.get(dbnode.NodeState, 1) else None
        counts = reports.counts(s)
    info = {
        "username": settings.username,
        "home": str(settings.home),
        "bind": settings.bind,
        "tcp_port": state.tcp_port if state else None,
        "udp_port": settings.udp_port,
        "broadcast": list(settings.broadcast) if settings.broadcast else "interfaces",
        "node_id": state.node_id if state else None,
        "catalog_version": state.catalog_version if state else 0,
        "roles": {
            r.role: {"alive": r.alive, "pid": r.pid, "beat_at": r.beat_at, "detail": r.detail}
            for r in roles
        },
        "counts": counts.__dict__,
    }
    if as_json:
        emit_json(info)
    else:
        click.echo(f"node      {settings.username}  ({settings.home})")
        click.echo(
            f"address   {settings.bind}  tcp {info['tcp_port'] or '-'}  udp {settings.udp_port}"
        )
        targets = ", ".join(settings.broadcast or ()) or "every interface broadcast address"
        click.echo(f"announce  to {targets} every {settings.announce_interval:g} s")
        click.echo(f"shared    {counts.shared_files} files, {human_bytes(counts.shared_bytes)}")
        click.echo(f"network   {counts.peers} peers, {counts.network_files} files")
        click.echo(f"downloads {counts.downloads_running} running, {counts.downloads_done} done")
        click.echo(f"uploads   {counts.uploads} chunks, {human_bytes(counts.uploaded_bytes)}")
        click.echo()
        emit_table(
            ["role", "state", "pid", "heartbeat", "detail"],
            [
                [
                    r.role,
                    "alive" if r.alive else "DOWN",
                    r.pid or "-",
                    ago(r.beat_at, now=now),
                    r.detail,
                ]
                for r in roles
            ],
            "",
        )
    if not any(r.alive for r in roles):
        raise NodeNotRunning(
            "no role of this node is running; start it with supervisord -c supervisord.conf"
        )


@click.command()
@json_option
@pass_ctl
def peers(ctl: Ctl, as_json: bool) -> None:
    """Peers heard on the network."""
    rows = fetch_report(ctl, reports.list_peers, as_json)
    if rows is None:
        return
    now = time.time()
    emit_table(
        ["username", "address", "port", "files", "last seen", "bad"],
        [
            [
                p.username,
                p.address,
                p.tcp_port,
                p.files,
                ago(p.last_seen, now=now),
                f"yes ({p.bad_files} files)" if p.bad_files else "no",
            ]
            for p in rows
        ],
        "No peers heard yet; other nodes appear here once their announcements arrive.",
    )


@click.command()
@click.argument("pattern", required=False)
@json_option
@pass_ctl
def files(ctl: Ctl, pattern: str | None, as_json: bool) -> None:
    """Files shared here and on the network; PATTERN is a substring or a glob."""
    rows = fetch_report(ctl, lambda s: reports.list_files(s, pattern), as_json)
    if rows is None:
        return
    emit_table(
        ["name", "size", "chunks", "sha256", "here", "peers"],
        [
            [
                f.name,
                human_bytes(f.size),
                f.chunks,
                f.sha256[:12],
                "yes" if f.here else "",
                f"{f.peers} ({f.complete_peers} whole)" if f.peers else "0",
            ]
            for f in rows
        ],
        f"No files match {pattern!r}."
        if pattern
        else "No files yet: put some in the share folder, or wait for peers to announce theirs.",
    )


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N.")
@json_option
@pass_ctl
def history(ctl: Ctl, limit: int | None, as_json: bool) -> None:
    """Every download: name, size, status, when, how fast, from whom."""
    rows = fetch_report(ctl, lambda s: reports.list_downloads(s, limit), as_json)
    if rows is None:
        return
    table = []
    for d in rows:
        took = (d.finished_at - d.started_at) if d.finished_at and d.started_at else None
        status = d.status if not d.reason else f"{d.status}: {d.reason}"
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
                ", ".join(d.peers) or "-",
                d.bad_chunks,
            ]
        )
    emit_table(
        ["id", "name", "size", "status", "started (UTC)", "took", "rate", "peers", "bad"],
        table,
        "No downloads yet; start one with: p2pctl download NAME",
    )


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, help="How many (newest first).")
@json_option
@pass_ctl
def uploads(ctl: Ctl, limit: int, as_json: bool) -> None:
    """Chunks this node served to others, newest first."""
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
