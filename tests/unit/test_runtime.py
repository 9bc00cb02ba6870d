"""What a role records about the settings it runs with (RoleContext.record_settings)."""

from __future__ import annotations

import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

from p2pshare.db.engine import Database
from p2pshare.db.node import role_settings
from p2pshare.services.net import identity
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.runtime import RoleContext, setting_text
from p2pshare.services.settings import load_settings


def test_values_are_recorded_as_text_with_the_installed_version(tmp_path: Path) -> None:
    settings = load_settings({"P2P_HOME": str(tmp_path), "P2P_BROADCAST": "127.255.255.255"})
    database = Database.open(settings.db_path)
    try:
        tls = NodeTls(identity.load_or_create(settings.identity_dir), settings.encrypt)
        ctx = RoleContext("listener", settings, database, threading.Event(), tls)
        ctx.record_settings(
            {"udp_port": 47474, "peer_ttl": 180.0, "network_key": False, "dir": tmp_path}
        )
        with database.read() as s:
            recorded = role_settings(s)
    finally:
        database.close()
    assert recorded == {
        "listener": {
            "udp_port": "47474",
            "peer_ttl": "180",
            "network_key": "no",
            "dir": str(tmp_path),
            "version": metadata.version("p2pshare"),
        }
    }


def test_setting_text_keeps_fractions_and_large_whole_seconds() -> None:
    assert [setting_text(v) for v in (0.5, 2592000.0, True, "auto")] == [
        "0.5",
        "2592000",
        "yes",
        "auto",
    ]


# A process whose main thread waits on its stop event in a tight loop (as the downloader
# does, a hundred times a second) while SIGTERMs keep arriving. A handler that logged and
# set the event itself either deadlocked that thread on the event's own lock (the role
# then ignored SIGTERM until killed: seen in the suite) or, signals landing inside the
# handler's own logging, died of a RecursionError; this one must finish.
SIGNAL_STORM = """
import os, signal, threading, time
from p2pshare.services.runtime import stop_on_signals

stop = stop_on_signals()
sent = threading.Event()

def pester():
    for _ in range(3000):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.0002)
    sent.set()

threading.Thread(target=pester, daemon=True).start()
while not sent.is_set():
    stop.wait(0.00001)
print("stopped" if stop.wait(10) else "never stopped", flush=True)
"""


def test_sigterms_while_waiting_on_stop_neither_deadlock_nor_break_the_role(tmp_path: Path) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SIGNAL_STORM],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the main thread deadlocked in a SIGTERM handler") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"
