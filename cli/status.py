"""p2pctl status: the node's settings, roles, counts and database sizes.

Every count is a single row or an index lookup (`db.reports.status_facts`), so the
command most often run stays quick however large the node's history.
"""

from __future__ import annotations

import time
from dataclasses import replace

import click

from p2pshare.cli import node_settings
from p2pshare.cli.context import START_HINT, Ctl, NodeNotRunning, pass_ctl
from p2pshare.cli.render import emit_json, emit_table
from p2pshare.db import reports
from p2pshare.db.roles import OPTIONAL_ROLES, ROLES, START_ERROR, RoleStatus
from p2pshare.services.node_config import record_path
from p2pshare.services.protocol import short_fingerprint
from p2pshare.services.units import ago, human_bytes, plural

KEY_WORDS = {True: "network key set", False: "no network key", None: "-"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctl
def status(ctl: Ctl, as_json: bool) -> None:
    """This node: name, address, ports, folders, which roles are alive, counts."""
    ctl.note_shell = False  # the note line below says it
    shell = ctl.settings
    now = time.time()
    with ctl.database.read() as conn:
        facts = reports.status_facts(conn, shell.db_path, now=now)
    state, recorded, counts = facts.node, facts.recorded, facts.counts
    roles = every_program(facts.roles, recorded)
    node = node_settings.from_recorded(recorded) if recorded else node_settings.from_shell(shell)
    if not recorded and record_path(shell.home).is_file():
        node = replace(node, source="record")  # the fallback is the node's p2p.toml
    # The live port while the server runs; what it last recorded once it stopped.
    tcp_port = (state.tcp_port if state else None) or node.tcp_port
    differs = node_settings.shell_differs(ctl.shell_settings(), node)
    differs += [name for name in ctl.shell_differs if name not in differs]
    if as_json:
        emit_json(
            {
                **status_info(node, tcp_port, roles, recorded),
                "home": str(shell.home),
                "node_id": state.node_id if state else None,
                "catalog_version": state.catalog_version if state else 0,
                "counts": counts.__dict__,
                "database_bytes": facts.sizes.database,
                "wal_bytes": facts.sizes.wal,
                "recorded": recorded,
                "shell_differs": differs,
            }
        )
    else:
        click.echo(f"node      {node.username or '-'}  ({shell.home})")
        for line in settings_lines(node, tcp_port, differs):
            click.echo(line)
        click.echo(
            f"shared    {plural(counts.shared_files, 'file')}, {human_bytes(counts.shared_bytes)}"
        )
        click.echo(
            f"network   {plural(counts.peers, 'peer')}, {plural(counts.network_files, 'file')}"
        )
        click.echo(f"downloads {counts.downloads_running} running, {counts.downloads_done} done")
        click.echo(
            f"uploads   {plural(counts.uploads, 'chunk')}, {human_bytes(counts.uploaded_bytes)}"
        )
        click.echo(
            f"database  {human_bytes(facts.sizes.database)}, "
            f"WAL {human_bytes(facts.sizes.wal)}  ({shell.db_path})"
        )
        click.echo()
        emit_table(
            ["role", "state", "pid", "heartbeat", "detail"],
            [
                [
                    r.role,
                    state_word(r, recorded),
                    r.pid or "-",
                    ago(r.beat_at, now=now),
                    last_error(r, recorded) or r.detail,
                ]
                for r in roles
            ],
            "",
        )
    if not any(r.alive for r in roles if r.role in ROLES):  # p2p-web alone is no node
        raise NodeNotRunning(f"no role of this node is running; {START_HINT}")


def status_info(
    node: node_settings.NodeSettings,
    tcp_port: int | None,
    roles: list[RoleStatus],
    recorded: dict[str, dict[str, str]],
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
            r.role: {
                "alive": r.alive,
                "pid": r.pid,
                "beat_at": r.beat_at,
                "detail": r.detail,
                "error": last_error(r, recorded),
            }
            for r in roles
        },
    }


def every_program(roles: list[RoleStatus], recorded: dict[str, dict[str, str]]) -> list[RoleStatus]:
    """The four roles, and web and torrent when they beat or ever started (or tried):
    a program that cannot start has no heartbeat, only the sentence it recorded."""
    listed = {r.role for r in roles}
    extra = [
        RoleStatus(role, False, None, None, None, "")
        for role in OPTIONAL_ROLES
        if role not in listed and role in recorded
    ]
    return [*roles, *extra]


def last_error(role: RoleStatus, recorded: dict[str, dict[str, str]]) -> str | None:
    """Why the program's last start failed, unless it runs now."""
    error = recorded.get(role.role, {}).get(START_ERROR)
    return None if error is None or role.alive else f"cannot start: {error}"


def state_word(role: RoleStatus, recorded: dict[str, dict[str, str]]) -> str:
    if role.alive:
        return "alive"
    return "FAILED" if last_error(role, recorded) else "DOWN"


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
    if node.source == "record":
        lines.append(
            "settings  the node's p2p.toml: no role of this node has recorded what it runs with"
        )
    if differs:
        lines.append(
            f"note      this shell's {', '.join(differs)} "
            f"{'differs' if len(differs) == 1 else 'differ'}; above is what the node runs with"
        )
    return lines


def identity_words(node: node_settings.NodeSettings) -> str:
    """The fingerprint peers know this node by (its short form is what people compare)."""
    link = {True: "TLS on every connection", False: "connections in clear", None: "-"}
    if node.fingerprint is None:
        return link[node.encrypt]
    short = short_fingerprint(node.fingerprint)
    return f"{short}, {link[node.encrypt]} (sha256 {node.fingerprint})"


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
