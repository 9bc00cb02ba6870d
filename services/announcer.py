"""Announcer role."""

from __future__ import annotations

from p2pshare.services.runtime import RoleContext, run_role, start_heartbeat


def run(ctx: RoleContext) -> None:
    start_heartbeat(ctx)
    while not ctx.stop.wait(1.0):
        pass


def main() -> None:
    run_role("announcer", run)


if __name__ == "__main__":
    main()
