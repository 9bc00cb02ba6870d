"""Which roles are alive, from their heartbeats: pure code, shared by `db.node` (the roles)
and `db.reports` (p2pctl status, the web page)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# A role beats every HEARTBEAT_SECONDS; one missing several beats is not alive.
HEARTBEAT_SECONDS = 2.0
ALIVE_WITHIN_SECONDS = 10.0
ROLES = ("server", "announcer", "listener", "downloader")
# Programs a node may run beside them; listed when they have a heartbeat row.
OPTIONAL_ROLES = ("web", "torrent")
# The `role_settings` row a program writes when it cannot start (its one sentence); the
# next start that succeeds replaces the program's rows, and with them this one.
START_ERROR = "start_error"


@dataclass(frozen=True)
class RoleStatus:
    role: str
    alive: bool
    pid: int | None
    started_at: float | None
    beat_at: float | None
    detail: str


def statuses(
    beats: Iterable[tuple[str, int, float, float, str]],
    *,
    now: float,
    roles: tuple[str, ...] = ROLES,
) -> list[RoleStatus]:
    """Every known role (or those asked for, such as `web`), alive or not, in that order,
    from (role, pid, started_at, beat_at, detail) rows."""
    by_role = {b[0]: b for b in beats}
    out = []
    for role in roles:
        b = by_role.get(role)
        if b is None:
            out.append(RoleStatus(role, False, None, None, None, ""))
        else:
            _, pid, started_at, beat_at, detail = b
            alive = now - beat_at <= ALIVE_WITHIN_SECONDS
            out.append(RoleStatus(role, alive, pid, started_at, beat_at, detail))
    return out
