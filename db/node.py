"""This node's own state: role heartbeats, the settings each role runs with, the `node` row."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from p2pshare.db.models import Heartbeat, NodeState, RoleSetting

# Re-exported: the roles and p2pctl take them from here.
from p2pshare.db.roles import ALIVE_WITHIN_SECONDS as ALIVE_WITHIN_SECONDS
from p2pshare.db.roles import HEARTBEAT_SECONDS as HEARTBEAT_SECONDS
from p2pshare.db.roles import ROLES as ROLES
from p2pshare.db.roles import START_ERROR as START_ERROR
from p2pshare.db.roles import RoleStatus as RoleStatus
from p2pshare.db.roles import statuses


def node_state(session: Session) -> NodeState:
    """The single `node` row, created on first use."""
    state = session.get(NodeState, 1)
    if state is None:
        state = NodeState(id=1, catalog_version=0, tcp_port=None, node_id=None, updated_at=0.0)
        session.add(state)
        session.flush()
    return state


def catalog_version(session: Session) -> int:
    """What this node offers, as a version number; 0 before the `node` row exists."""
    state = session.get(NodeState, 1)
    return state.catalog_version if state is not None else 0


def bump_catalog_version(session: Session, *, now: float) -> int:
    """Mark that what this node offers changed; returns the new version."""
    state = node_state(session)
    state.catalog_version += 1
    state.updated_at = now
    return state.catalog_version


def touch(session: Session, *, now: float) -> None:
    """A real write to the node's row (its `updated_at`), for a durable commit to fsync."""
    node_state(session).updated_at = now


def set_tcp_port(session: Session, port: int | None, *, now: float) -> None:
    state = node_state(session)
    state.tcp_port = port
    state.updated_at = now


def set_node_id(session: Session, node_id: str | None, *, now: float) -> None:
    state = node_state(session)
    state.node_id = node_id
    state.updated_at = now


def record_heartbeat(
    session: Session, role: str, *, pid: int, started_at: float, now: float, detail: str = ""
) -> None:
    """Upsert a role's heartbeat row."""
    beat = session.get(Heartbeat, role)
    if beat is None:
        session.add(
            Heartbeat(role=role, pid=pid, started_at=started_at, beat_at=now, detail=detail)
        )
        return
    beat.pid, beat.started_at, beat.beat_at, beat.detail = pid, started_at, now, detail


def clear_heartbeat(session: Session, role: str, *, pid: int) -> None:
    """Remove a role's heartbeat on a clean exit, unless another process has taken it over."""
    beat = session.get(Heartbeat, role)
    if beat is not None and beat.pid == pid:
        session.delete(beat)


def role_statuses(
    session: Session, *, now: float, roles: tuple[str, ...] = ROLES
) -> list[RoleStatus]:
    """Every known role (or those asked for, such as `web`), alive or not, in that order."""
    beats = session.scalars(select(Heartbeat))
    rows = ((b.role, b.pid, b.started_at, b.beat_at, b.detail) for b in beats)
    return statuses(rows, now=now, roles=roles)


def record_role_settings(
    session: Session, role: str, values: dict[str, str], *, now: float
) -> None:
    """Replace what `role` recorded about the settings it runs with by `values`."""
    session.execute(delete(RoleSetting).where(RoleSetting.role == role))
    session.add_all(
        RoleSetting(role=role, name=name, value=value, recorded_at=now)
        for name, value in values.items()
    )


def record_start_error(session: Session, role: str, error: str, *, now: float) -> None:
    """Note beside what `role` last ran with why it cannot start now."""
    session.merge(RoleSetting(role=role, name=START_ERROR, value=error, recorded_at=now))


def role_settings(session: Session) -> dict[str, dict[str, str]]:
    """What each role recorded: role -> setting name -> value; empty if none has."""
    out: dict[str, dict[str, str]] = {}
    rows = session.scalars(select(RoleSetting).order_by(RoleSetting.role, RoleSetting.name))
    for row in rows:
        out.setdefault(row.role, {})[row.name] = row.value
    return out
