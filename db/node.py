"""This node's own state: role heartbeats, the settings each role runs with, the `node` row."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, select, update
from sqlalchemy.dialects.sqlite import insert

# Re-exported: the roles and p2pctl take them from here.
from .roles import ALIVE_WITHIN_SECONDS as ALIVE_WITHIN_SECONDS
from .roles import HEARTBEAT_SECONDS as HEARTBEAT_SECONDS
from .roles import ROLES as ROLES
from .roles import START_ERROR as START_ERROR
from .roles import RoleStatus as RoleStatus
from .roles import statuses
from .schema import heartbeats, node
from .schema import role_settings as settings_table

_NEW_NODE = {"id": 1, "catalog_version": 0, "announce_wanted_at": 0.0, "updated_at": 0.0}


def node_state(conn: Connection) -> Row[Any]:
    """The single `node` row (made with the schema; made here if it went)."""
    row = conn.execute(select(node).where(node.c.id == 1)).one_or_none()
    if row is None:
        _update(conn)
        row = conn.execute(select(node).where(node.c.id == 1)).one()
    return row


def node_state_if_any(conn: Connection) -> Row[Any] | None:
    """The `node` row, or None before it exists (a read never writes it)."""
    return conn.execute(select(node).where(node.c.id == 1)).one_or_none()


def _update(conn: Connection, **values: Any) -> None:
    """Set these columns of the `node` row, making the row first if it is missing."""
    conn.execute(insert(node).values(_NEW_NODE).on_conflict_do_nothing())
    if values:
        conn.execute(update(node).where(node.c.id == 1).values(**values))


def catalog_version(conn: Connection) -> int:
    """What this node offers, as a version number; 0 before the `node` row exists."""
    version = conn.scalar(select(node.c.catalog_version).where(node.c.id == 1))
    return int(version or 0)


def bump_catalog_version(conn: Connection, *, now: float) -> int:
    """Mark that what this node offers changed; returns the new version."""
    _update(conn, catalog_version=node.c.catalog_version + 1, updated_at=now)
    return catalog_version(conn)


def touch(conn: Connection, *, now: float) -> None:
    """A real write to the node's row (its `updated_at`), for a durable commit to fsync."""
    _update(conn, updated_at=now)


def set_tcp_port(conn: Connection, port: int | None, *, now: float) -> None:
    _update(conn, tcp_port=port, updated_at=now)


def set_node_id(conn: Connection, node_id: str | None, *, now: float) -> None:
    _update(conn, node_id=node_id, updated_at=now)


def want_announcement(conn: Connection, *, now: float) -> None:
    """Ask the announcer to answer at once (a newcomer need not wait a whole interval)."""
    _update(conn, announce_wanted_at=now)


def record_heartbeat(
    conn: Connection, role: str, *, pid: int, started_at: float, now: float, detail: str = ""
) -> None:
    """Upsert a role's heartbeat row."""
    values = {"pid": pid, "started_at": started_at, "beat_at": now, "detail": detail}
    conn.execute(
        insert(heartbeats)
        .values(role=role, **values)
        .on_conflict_do_update(index_elements=[heartbeats.c.role], set_=values)
    )


def clear_heartbeat(conn: Connection, role: str, *, pid: int) -> None:
    """Remove a role's heartbeat on a clean exit, unless another process has taken it over."""
    conn.execute(delete(heartbeats).where(heartbeats.c.role == role, heartbeats.c.pid == pid))


def role_statuses(
    conn: Connection, *, now: float, roles: tuple[str, ...] = ROLES
) -> list[RoleStatus]:
    """Every known role (or those asked for, such as `web`), alive or not, in that order."""
    rows = conn.execute(
        select(
            heartbeats.c.role,
            heartbeats.c.pid,
            heartbeats.c.started_at,
            heartbeats.c.beat_at,
            heartbeats.c.detail,
        )
    )
    return statuses((tuple(r) for r in rows), now=now, roles=roles)


def record_role_settings(
    conn: Connection, role: str, values: dict[str, str], *, now: float
) -> None:
    """Replace what `role` recorded about the settings it runs with by `values`."""
    conn.execute(delete(settings_table).where(settings_table.c.role == role))
    if values:
        conn.execute(
            insert(settings_table),
            [
                {"role": role, "name": name, "value": value, "recorded_at": now}
                for name, value in values.items()
            ],
        )


def record_start_error(conn: Connection, role: str, error: str, *, now: float) -> None:
    """Note beside what `role` last ran with why it cannot start now."""
    values = {"value": error, "recorded_at": now}
    conn.execute(
        insert(settings_table)
        .values(role=role, name=START_ERROR, **values)
        .on_conflict_do_update(
            index_elements=[settings_table.c.role, settings_table.c.name], set_=values
        )
    )


def role_settings(conn: Connection) -> dict[str, dict[str, str]]:
    """What each role recorded: role -> setting name -> value; empty if none has."""
    out: dict[str, dict[str, str]] = {}
    rows = conn.execute(
        select(settings_table.c.role, settings_table.c.name, settings_table.c.value).order_by(
            settings_table.c.role, settings_table.c.name
        )
    )
    for role, name, value in rows:
        out.setdefault(role, {})[name] = value
    return out
