"""p2pctl start, stop, restart: the node in P2P_HOME under supervisord.

The home is resolved as every role resolves it (`load_settings`), its folders are made,
and supervisord runs the project's one configuration file with P2P_HOME set: the
`supervisord.conf` beside the installed packages (p2pshare/supervisord.conf in an
installed wheel, the checkout's own file in a checkout or an editable install).
The settings a start is given are recorded in the home first (`services.node_config`),
and supervisord gets none from this shell: the node runs as its record says.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from p2pshare.cli.context import Ctl, NodeNotRunning, UserError, pass_ctl
from p2pshare.db.roles import OPTIONAL_ROLES, ROLES
from p2pshare.db.version import SchemaError
from p2pshare.services import node_config
from p2pshare.services.settings import Settings, SettingsError

CONF_NAME = "supervisord.conf"
# Every program of supervisord.conf: a start waits until each runs or says why not.
PROGRAMS = (*ROLES, *OPTIONAL_ROLES)
# Roles need a second or two to open the database and beat; a busy machine more.
START_WAIT_SECONDS = 30.0
# supervisord gives each role stopwaitsecs=10 after SIGTERM, then kills it.
STOP_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.1
WAKE_WAIT_SECONDS = 5.0
WAKE_POLL_SECONDS = 0.005


def conf_path() -> Path:
    """The supervisord configuration, found beside the `services` package (whose
    run-role.sh it starts). Raises UserError when the installation lacks it."""
    import p2pshare.services

    base = Path(p2pshare.services.__file__).resolve().parent.parent
    path = base / CONF_NAME
    if not path.is_file() or not (base / "services" / "run-role.sh").is_file():
        raise UserError(
            f"this p2pshare installation has no {CONF_NAME} beside {base / 'services'}; "
            "reinstall it with pip install ."
        )
    return path


def wake_supervisord(sock: Path, seconds: float = WAKE_WAIT_SECONDS) -> bool:
    """Connect once to a just-started supervisord's control socket (waiting for it to
    appear), so it starts its programs now; True if it was reached.

    supervisord spawns its programs only after its event loop's first poll, which waits
    up to a second for an event on its sockets: without one, every node start takes a
    second longer before a role even begins, and discovery waits for the roles.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(sock))
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAKE_POLL_SECONDS)


def supervisord_command() -> str:
    """supervisord beside this Python first (an unactivated virtualenv), else on PATH."""
    beside = Path(sys.executable).parent / "supervisord"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("supervisord")
    if found is None:
        raise UserError("supervisord is not installed; reinstall p2pshare with pip install .")
    return found


def supervisord_pid(settings: Settings) -> int | None:
    """The pid of this home's supervisord when it runs, from its pidfile."""
    try:
        pid = int((settings.home / "supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    # A stale pidfile may name a pid now used by something else.
    return pid if supervisord_alive(pid) else None


def supervisord_alive(pid: int) -> bool:
    """True while `pid` is still a supervisord that has not exited. The pidfile goes
    before the process does (supervisord removes it while it shuts down), and a zombie
    has an empty cmdline, so this looks at the process itself."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"supervisord" in cmdline


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_SECONDS)
    return bool(condition())


def alive_roles(ctl: Ctl) -> list[str]:
    if not ctl.settings.db_path.is_file():
        return []
    try:
        return [r.role for r in ctl.role_statuses() if r.alive]
    except Exception:  # the database is being created by the roles right now
        return []


def plan_start() -> node_config.StartPlan:
    """What a start will run the node with; raises UserError for a bad value."""
    try:
        return node_config.plan_start(os.environ, last_run())
    except SettingsError as exc:
        raise UserError(str(exc)) from None


def last_run() -> dict[str, dict[str, str]]:
    """What the roles of a node without a record last ran with (nothing for a new node,
    or one that has its record)."""
    home = node_config.home_of(os.environ)
    if node_config.record_path(home).is_file():
        return {}
    from p2pshare.db import node as dbnode
    from p2pshare.db.engine import Database  # SQLAlchemy: only for a node without a record

    try:
        database = Database.open_existing(home / "p2p.db")
    except SchemaError:  # no database yet, or another version's: nothing to carry over
        return {}
    try:
        with database.read() as s:
            return dbnode.role_settings(s)
    finally:
        database.close()


def start_node(ctl: Ctl, plan: node_config.StartPlan) -> None:
    settings = ctl.use_settings(plan.settings)
    pid = supervisord_pid(settings)
    if pid is not None:
        click.echo(f"the node at {settings.home} is already running (supervisord pid {pid})")
        if plan.changes:
            one = len(plan.changes) == 1
            click.echo(
                f"note: this shell's {', '.join(c.variable for c in plan.changes)} "
                f"{'differs' if one else 'differ'} from the node's; p2pctl restart from this "
                f"shell applies {'it' if one else 'them'}",
                err=True,
            )
        return
    try:
        settings.make_dirs()
        plan.save()
    except OSError as exc:
        raise UserError(
            f"cannot create the node's folders or {plan.record.name} under {settings.home}: {exc}"
        ) from None
    if plan.inherited:
        click.echo(
            f"recorded the node's settings in {plan.record}: what it last ran with, "
            "where this shell gives none"
        )
    elif plan.first:
        click.echo(f"recorded the node's settings in {plan.record}")
    elif plan.changes:
        changed = ", ".join(change.words() for change in plan.changes)
        click.echo(f"applied from this shell: {changed} (recorded in {plan.record})")
    started_at = time.time()
    # Only the record reaches the programs: a variable of this shell is either in it
    # (given to this start) or not the node's.
    env = {
        **node_config.without_settings(os.environ),
        "P2P_HOME": str(settings.home),
        "P2P_USER_UMASK": f"{current_umask():03o}",  # see services/run-role.sh
    }
    result = subprocess.run(
        [supervisord_command(), "-c", str(conf_path())],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"supervisord did not start: {reason[-1] if reason else result.returncode}")
    wake_supervisord(settings.home / "supervisor.sock")

    failed: dict[str, str] = {}

    def settled() -> bool:
        if not settings.db_path.is_file():
            return False
        from p2pshare.db import reports

        with ctl.database.read() as conn:
            running, failures = reports.started_since(conn, started_at - 1)
        failed.update(failures)
        return bool(failed) or set(PROGRAMS) <= running

    settled_in_time = wait_for(lambda: _quietly(settled), START_WAIT_SECONDS)
    if failed:
        # A program that cannot start is retried by supervisord every few seconds for
        # ever; a node half up is worse than one that is plainly stopped.
        program, reason = sorted(failed.items())[0]
        stop_node(ctl)
        raise UserError(f"p2p-{program} cannot start: {reason}; the node is stopped")
    if not settled_in_time:
        raise UserError(
            f"the node's programs did not all start within {START_WAIT_SECONDS:.0f} s "
            f"(running: {', '.join(alive_roles(ctl)) or 'none'}); see {settings.log_dir}"
        )
    click.echo(
        f"started the node at {settings.home} (supervisord pid {supervisord_pid(settings)}); "
        f"logs in {settings.log_dir}"
    )


def current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # the roles are creating the database; ask again
        return False


def stop_node(ctl: Ctl) -> bool:
    """Stop this home's supervisord and its roles; False when it was not running."""
    settings = ctl.settings
    pid = supervisord_pid(settings)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if not wait_for(lambda: not supervisord_alive(pid), STOP_WAIT_SECONDS):
        raise UserError(
            f"supervisord (pid {pid}) did not stop within {STOP_WAIT_SECONDS:.0f} s; "
            f"see {settings.log_dir / 'supervisord.log'}"
        )
    return True


@click.command()
@pass_ctl
def start(ctl: Ctl) -> None:
    """Start the node in P2P_HOME under supervisord."""
    start_node(ctl, plan_start())


@click.command()
@pass_ctl
def stop(ctl: Ctl) -> None:
    """Stop the node in P2P_HOME."""
    if not stop_node(ctl):
        raise NodeNotRunning(f"the node at {ctl.settings.home} is not running")
    click.echo(f"stopped the node at {ctl.settings.home}")


@click.command()
@pass_ctl
def restart(ctl: Ctl) -> None:
    """Stop the node if it runs, then start it."""
    plan = plan_start()  # a bad value stops nothing
    ctl.use_settings(plan.settings)
    if stop_node(ctl):
        click.echo(f"stopped the node at {plan.home}")
    start_node(ctl, plan)
