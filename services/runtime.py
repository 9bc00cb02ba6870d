"""What every role process shares: start-up, logging, SIGTERM, heartbeats, recorded settings.

A role is a function `body(ctx)` that loops until `ctx.stop` is set. `run_role`
turns a start-up failure into one sentence and a non-zero exit, and a clean
SIGTERM into exit 0.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from p2pshare.db import node as dbnode
from p2pshare.db.engine import Database, SchemaError
from p2pshare.db.wal import Checkpointer
from p2pshare.db.watch import ChangeWatch
from p2pshare.services.hashing.chain import ChainUnavailable, check_available
from p2pshare.services.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from p2pshare.services.net.tls import NodeTls

log = logging.getLogger("p2p")


# What a role may record: plain values, written as text (`role_settings.value`).
SettingValue = str | int | float | bool | Path


class StartupError(Exception):
    """A role cannot start (port taken, folder unusable); the message is one sentence."""


@dataclass
class RoleContext:
    role: str
    settings: Settings
    database: Database
    stop: threading.Event
    # None in a role that speaks to no peer (the web program): it never loads the key.
    node_tls: NodeTls | None
    started_at: float = field(default_factory=time.time)
    # What `p2pctl status` shows beside the role, e.g. "tcp 127.0.0.1:40123".
    detail: str = ""

    @property
    def tls(self) -> NodeTls:
        """The node's TLS identity and contexts, loaded at start-up."""
        if self.node_tls is None:
            raise RuntimeError(f"the {self.role} role runs without the node's TLS identity")
        return self.node_tls

    def beat(self) -> None:
        """Write this role's heartbeat now."""
        with self.database.write() as s:
            dbnode.record_heartbeat(
                s,
                self.role,
                pid=os.getpid(),
                started_at=self.started_at,
                now=time.time(),
                detail=self.detail,
            )

    def watch_until_stop(self) -> ChangeWatch:
        """A watch for other processes' commits whose `wait_changed` also ends at SIGTERM,
        so a loop can sleep on it until its next deadline instead of polling `stop`."""
        watch = self.database.watch()
        watch.enable_poke()
        threading.Thread(
            target=_poke_on_stop, args=(self.stop, watch), name="stop-poke", daemon=True
        ).start()
        return watch

    def record_settings(self, values: Mapping[str, SettingValue]) -> None:
        """Replace this role's rows in `role_settings` with `values` and the installed version.

        So `p2pctl status`, run from a shell whose environment may differ, reports what
        this process resolved and runs with.
        """
        text = {name: setting_text(value) for name, value in values.items()}
        text["version"] = installed_version()
        with self.database.write() as s:
            dbnode.record_role_settings(s, self.role, text, now=time.time())


def _poke_on_stop(stop: threading.Event, watch: ChangeWatch) -> None:
    stop.wait()
    watch.poke()


def setting_text(value: SettingValue) -> str:
    """A recorded value as text: booleans as yes/no, whole seconds without a trailing `.0`."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@cache
def installed_version() -> str:
    """The installed p2pshare's version, or `unknown` when run from an uninstalled tree."""
    try:
        return metadata.version("p2pshare")
    except metadata.PackageNotFoundError:
        return "unknown"


def setup_logging(role: str) -> None:
    # Line-buffered stdout: supervisord captures it, one line per event, no delay.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format=f"%(asctime)s {role} %(levelname)s %(message)s",
        force=True,
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT; loops poll it between short socket timeouts.

    The handler runs in the main thread between two bytecodes, possibly inside that
    thread's own `stop.wait()` just after it took the event's lock, or inside logging or
    Thread.start holding theirs: setting the event, logging or starting a thread there
    can deadlock the thread with itself, and the role then ignores SIGTERM until it is
    killed (seen: the downloader, which waits on `stop` a hundred times a second). So
    the handler only notes the signal and writes a byte to a pipe, which take no lock
    Python code can hold, and a thread of its own, asleep on the pipe, sets the event.
    (It used to look every 50 ms instead: twenty wakeups a second in every role, a
    visible share of an idle node's CPU.)"""
    stop = threading.Event()
    received: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)  # a storm of signals must never block the handler

    def _handler(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(BlockingIOError):  # full: the watcher is awake already
            os.write(wake_w, b"\0")

    def _watch() -> None:
        os.read(wake_r, 1)
        log.info("received %s, stopping", signal.Signals(received[0]).name)
        stop.set()

    threading.Thread(target=_watch, name="signals", daemon=True).start()
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def _heartbeat_loop(ctx: RoleContext) -> None:
    # Every role checkpoints beside its beat, so the WAL stays bounded whichever roles
    # run; only one checkpoint runs at a time and a PASSIVE one never waits.
    checkpointer = Checkpointer(ctx.settings.db_path)
    try:
        while not ctx.stop.wait(dbnode.HEARTBEAT_SECONDS):
            try:
                ctx.beat()
            except Exception:  # a failed beat must not kill the role; the next one retries
                log.exception("heartbeat failed")
            try:
                checkpointer.step()
            except Exception:
                log.exception("checkpoint failed")
    finally:
        checkpointer.close()


def run_role(role: str, body: Callable[[RoleContext], None], *, uses_tls: bool = True) -> None:
    """Start a role and run it until SIGTERM; exits the process with its status.

    uses_tls=False: the role never talks to a peer, so it loads no key (nor the
    cryptography package, a few MB in every process that imports it)."""
    setup_logging(role)
    database: Database | None = None
    try:
        check_available()  # every role hashes or serves chained manifests
        settings = load_settings()
        settings.make_dirs()
        opened = database = Database.open(settings.db_path)
        tls = load_tls(settings) if uses_tls else None
    except (SettingsError, SchemaError, StartupError, ChainUnavailable) as exc:
        cannot_start(role, str(exc), database)
    except OSError as exc:
        cannot_start(role, f"cannot start: {exc}", database)
    ctx = RoleContext(role, settings, opened, stop_on_signals(), tls)
    log.info("starting (pid %d, home %s)", os.getpid(), settings.home)
    # What start-up made (modules, classes, the engine) lives as long as the role: out of
    # the collector's sight, so the full collections that a catalog page's thousands of
    # new objects set off look only at what is new, not at the whole process.
    gc.freeze()
    try:
        body(ctx)
    except StartupError as exc:
        cannot_start(role, str(exc), opened)
    finally:
        try:
            with opened.write() as s:
                dbnode.clear_heartbeat(s, role, pid=os.getpid())
        except Exception:
            log.exception("could not clear the heartbeat")
        opened.close()
    log.info("stopped")
    sys.exit(0)


def load_tls(settings: Settings) -> NodeTls:
    """The node's identity (made on first use) and its TLS contexts; raises StartupError."""
    from p2pshare.services.net import identity
    from p2pshare.services.net.tls import NodeTls

    try:
        return NodeTls(identity.load_or_create(settings.identity_dir), settings.encrypt)
    except identity.IdentityError as exc:
        raise StartupError(str(exc)) from None


def cannot_start(role: str, reason: str, database: Database | None) -> NoReturn:
    """Say why in one sentence, note it in the database when there is one (so `p2pctl
    start` and `status` can say it too, not only this log), and exit 2."""
    print(f"p2p-{role}: {reason}", file=sys.stderr, flush=True)
    if database is not None:
        try:
            with database.write() as s:
                dbnode.record_start_error(s, role, reason, now=time.time())
        except Exception:  # the sentence above is in the log whatever happens here
            log.exception("could not record why this role cannot start")
    sys.exit(2)


def start_heartbeat(ctx: RoleContext) -> threading.Thread:
    """Beat once now (so `p2pctl status` sees the role at once), then every few seconds."""
    ctx.beat()
    thread = threading.Thread(target=_heartbeat_loop, args=(ctx,), name="heartbeat", daemon=True)
    thread.start()
    return thread
