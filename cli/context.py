"""What every p2pctl command needs: settings, the node's database, typed user errors.

Imports stay light: SQLAlchemy is imported only by a command that opens the database
(`Ctl.database`), never for `--help`.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from p2pshare.db.roles import ALIVE_WITHIN_SECONDS, RoleStatus
from p2pshare.db.version import SchemaError
from p2pshare.services import node_config
from p2pshare.services.node_config import record_path
from p2pshare.services.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from p2pshare.db.engine import Database

START_HINT = "start it with p2pctl start"


class UserError(click.ClickException):
    """A mistake or situation the user can fix; printed as `error: <sentence>`, exit 1."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class NodeNotRunning(UserError):
    exit_code = 3


def no_database(exc: SchemaError) -> UserError:
    return UserError(f"{exc}; is P2P_HOME right and has the node been started (p2pctl start)?")


@dataclass
class Ctl:
    _settings: Settings | None = None
    _database: Database | None = None
    _reading: Connection | None = None
    _open: ExitStack = field(default_factory=ExitStack)
    # The variables this shell sets differently from the node's record.
    shell_differs: list[str] = field(default_factory=list)
    # Whether resolving the settings says so on stderr (status shows it its own way).
    note_shell: bool = True

    @property
    def settings(self) -> Settings:
        """The node's settings: what `p2pctl start` recorded in its home, else this
        shell's. A variable of this shell that differs gets one note line."""
        if self._settings is None:
            try:
                self._settings, self.shell_differs = node_config.node_settings(os.environ)
            except SettingsError as exc:
                raise UserError(str(exc)) from None
            if self.shell_differs and self.note_shell:
                click.echo(
                    f"note: this shell's {', '.join(self.shell_differs)} "
                    f"{'differs' if len(self.shell_differs) == 1 else 'differ'} from the "
                    f"node's ({record_path(self._settings.home)}); "
                    f"p2pctl restart from this shell applies "
                    f"{'it' if len(self.shell_differs) == 1 else 'them'}",
                    err=True,
                )
        return self._settings

    def use_settings(self, settings: Settings) -> Settings:
        """Act on the node with `settings` (a start's own), not resolving them again."""
        self._settings = settings
        return settings

    def shell_settings(self) -> Settings:
        """This shell's own settings (environment over config file), for comparing."""
        try:
            return load_settings()
        except SettingsError as exc:
            raise UserError(str(exc)) from None

    @property
    def database(self) -> Database:
        if self._database is None:
            from p2pshare.db.engine import Database

            try:
                self._database = Database.open_existing(self.settings.db_path)
            except SchemaError as exc:
                raise no_database(exc) from None
        return self._database

    def reading(self) -> Connection:
        """A read transaction that lasts until the command ends: a report that prints its
        rows as SQLite gives them reads them all from one snapshot."""
        if self._reading is None:
            self._reading = self._open.enter_context(self.database.read())
        return self._reading

    def role_statuses(self) -> list[RoleStatus]:
        from p2pshare.db import reports

        with self.database.read() as conn:
            return reports.role_statuses(conn, now=time.time())

    def not_running(self) -> str:
        return (
            f"the node at {self.settings.home} is not running (no role has a heartbeat "
            f"in the last {ALIVE_WITHIN_SECONDS:.0f} s)"
        )

    def require_running(self) -> list[RoleStatus]:
        """The role statuses; raises NodeNotRunning when no role has a fresh heartbeat."""
        roles = self.role_statuses()
        if not any(r.alive for r in roles):
            raise NodeNotRunning(f"{self.not_running()}; {START_HINT}")
        return roles

    def note_if_stopped(self) -> None:
        """One line on stderr when no role runs: a report then shows what the database
        holds, which is all true but not being updated."""
        if not any(r.alive for r in self.role_statuses()):
            click.echo(f"note: {self.not_running()}; showing what its database holds", err=True)

    def close(self) -> None:
        self._open.close()
        if self._database is not None:
            self._database.close()


pass_ctl = click.make_pass_decorator(Ctl)
