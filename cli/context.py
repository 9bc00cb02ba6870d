"""What every p2pctl command needs: settings, the node's database, typed user errors."""

from __future__ import annotations

import time
from dataclasses import dataclass

import click

from p2pshare.db import node as dbnode
from p2pshare.db.engine import Database, SchemaError
from p2pshare.services.settings import Settings, SettingsError, load_settings


class UserError(click.ClickException):
    """A mistake or situation the user can fix; printed as `error: <sentence>`, exit 1."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class NodeNotRunning(UserError):
    exit_code = 3


@dataclass
class Ctl:
    _settings: Settings | None = None
    _database: Database | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except SettingsError as exc:
                raise UserError(str(exc)) from None
        return self._settings

    @property
    def database(self) -> Database:
        if self._database is None:
            try:
                self._database = Database.open_existing(self.settings.db_path)
            except SchemaError as exc:
                raise UserError(
                    f"{exc}; is P2P_HOME right and has the node been started "
                    "(supervisord -c supervisord.conf)?"
                ) from None
        return self._database

    def require_running(self) -> list[dbnode.RoleStatus]:
        """The role statuses; raises NodeNotRunning when no role has a fresh heartbeat."""
        with self.database.read() as s:
            roles = dbnode.role_statuses(s, now=time.time())
        if not any(r.alive for r in roles):
            raise NodeNotRunning(
                f"the node at {self.settings.home} is not running (no role has a heartbeat "
                f"in the last {dbnode.ALIVE_WITHIN_SECONDS:.0f} s); start it with "
                "supervisord -c supervisord.conf"
            )
        return roles

    def close(self) -> None:
        if self._database is not None:
            self._database.close()


pass_ctl = click.make_pass_decorator(Ctl)
