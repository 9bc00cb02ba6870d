"""p2pctl's reports: status, peers, files, history, uploads."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import click
from sqlalchemy.orm import Session

from p2pshare.cli import node_settings
from p2pshare.cli.context import Ctl, NodeNotRunning, pass_ctl
from p2pshare.cli.render import ago, duration, emit_json, emit_table, human_bytes, rate, when
from p2pshare.db import node as dbnode
from p2pshare.db import reports
from p2pshare.services.protocol import short_fingerprint

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
T = TypeVar("T")
KEY_WORDS = {True: "network key set", False: "no network key", None: "-"}


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
    """This node: name, address, ports, folders, which roles are alive, counts."""
    shell = ctl.settings
    now = time.time()
    with ctl.database.read() as s:
        roles = dbnode.role_statuses(s, now=now)
        state = dbnode.node_state(s) if s.get(dbnode.NodeState, 1) else None
        recorded = dbnode.role_settings(s)
        counts = reports.counts(s)
    node = node_settings.from_recorded(recorded) if recorded else node_settings.from_shell(shell)
    # The live port while the server runs; what it last recorded once it stopped.
    tcp_port = (state.tcp_port if state else None) or node.tcp_port
    differs = node_settings.shell_differs(shell, node)
    if as_json:
        emit_json(
            {
                **status_info(node, tcp_port, roles),
                "home": str(shell.home),
                "node_id": state.node_id if state else None,
                "catalog_version": state.catalog_version if state else 0,
                "counts": counts.__dict__,
                "recorded": recorded,
                "shell_differs": differs,
            }
        )
    else:
        click.echo(f"node      {node.username or '-'}  ({shell.home})")
        for line in settings_lines(node, tcp_port, differs):
            click.echo(line)
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


def status_info(
    node: node_settings.NodeSettings, tcp_port: int | None, roles: list[dbnode.RoleStatus]
) -> dict[str, object]:
    """The settings part of `status --json`."""
    return {
        "settings_from": node.source,
        "username": node.username,
        "bind": node.bind,
        "tcp_port": tcp_port,
        "udp_port": node.udp_port,
        "broadcast": node.broadcast,
        "broadcast_from": node.broadcast_from,
        "announce_interval": node.announce_interval,
        "share_dir": node.share_dir,
        "download_dir": node.download_dir,
        "network_key": node.network_key,
        "encrypt": node.encrypt,
        "fingerprint": node.fingerprint,
        "versions": node.versions,
        "roles": {
            r.role: {"alive": r.alive, "pid": r.pid, "beat_at": r.beat_at, "detail": r.detail}
            for r in roles
        },
    }


def settings_lines(
    node: node_settings.NodeSettings, tcp_port: int | None, differs: list[str]
) -> list[str]:
    """Status lines on how the node runs, and where status learned it."""
    lines = [
        f"address   {node.bind or '-'}  tcp {tcp_port or '-'}  udp {node.udp_port or '-'}",
        f"announce  to {announce_targets(node)} every {seconds(node.announce_interval)}",
        f"folders   share {node.share_dir or '-'}, downloads {node.download_dir or '-'}",
        f"key       {KEY_WORDS[node.network_key]}",
        f"identity  {identity_words(node)}",
    ]
    if node.versions:
        lines.append(f"version   {versions(node.versions)}")
    if node.source == "shell":
        lines.append(
            "settings  this shell's own: no role of this node has recorded what it runs with"
        )
    if differs:
        lines.append(
            f"note      this shell's {', '.join(differs)} differ; above is what the node runs with"
        )
    return lines


def identity_words(node: node_settings.NodeSettings) -> str:
    """The fingerprint peers know this node by (its short form is what people compare)."""
    link = {True: "TLS on every connection", False: "connections in clear", None: "-"}
    if node.fingerprint is None:
        return link[node.encrypt]
    return (
        f"{short_fingerprint(node.fingerprint)}, {link[node.encrypt]} (sha256 {node.fingerprint})"
    )


def announce_targets(node: node_settings.NodeSettings) -> str:
    if node.broadcast is None:
        return "every interface broadcast address"
    targets = ", ".join(node.broadcast) or "nobody (no interface has a broadcast address)"
    if node.broadcast_from == node_settings.FROM_INTERFACES:
        return f"{targets} (every interface broadcast address)"
    return targets


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def versions(by_role: dict[str, str]) -> str:
    """`0.1.0`, or which role runs which version while a restart is half done."""
    if len(set(by_role.values())) == 1:
        return next(iter(by_role.values()))
    roles: dict[str, list[str]] = {}
    for role, version in by_role.items():
        roles.setdefault(version, []).append(role)
    return ", ".join(f"{v} ({', '.join(r)})" for v, r in sorted(roles.items()))


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
        ["username", "address", "port", "fingerprint", "link", "files", "last seen", "bad"],
        [
            [
                p.username,
                p.address,
                p.tcp_port,
                short_fingerprint(p.fingerprint) if p.fingerprint else "-",
                p.link,
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
@click.option(
    "--addresses", is_flag=True, help="Name the peers by address:port rather than username."
)
@json_option
@pass_ctl
def history(ctl: Ctl, limit: int | None, addresses: bool, as_json: bool) -> None:
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
                ", ".join(d.peers if addresses else source_names(d)) or "-",
                d.bad_chunks,
            ]
        )
    emit_table(
        ["id", "name", "size", "status", "started (UTC)", "took", "rate", "peers", "bad"],
        table,
        "No downloads yet; start one with: p2pctl download NAME",
    )


def source_names(d: reports.DownloadRow) -> list[str]:
    """Each source by the name it announced, once; by address:port when it announced none."""
    names = [name or address for name, address in zip(d.peer_names, d.peers, strict=True)]
    return list(dict.fromkeys(names))


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
