"""Real p2pshare nodes on loopback, for the integration and reliability tests and the
benchmarks that reuse them: `Node` (a temp P2P_HOME, its environment, its processes),
`wait_until`, ports, and `seed`.

THE NETWORK RULE: every node here announces to 127.255.255.255 only, binds
127.0.0.1, takes a free TCP port (P2P_TCP_PORT=0), and uses a UDP port picked
for the one test so runs on the same host never hear each other.

Waiting is always polling (`wait_until`) with a bound; processes are stopped
with SIGTERM by PID and must exit 0 within 10 s; at teardown no role log may
contain a traceback or "database is locked".
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SUPERVISORD_CONF = REPO / "supervisord.conf"
ROLES = ("server", "announcer", "listener", "downloader")
# Logs checked at teardown: the roles and the web program supervisord runs beside them.
LOG_NAMES = (*ROLES, "web", "torrent")
LOOPBACK_BROADCAST = "127.255.255.255"
LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 10.0
# supervisord stops its programs one after another, each within stopwaitsecs=10.
SUPERVISORD_STOP_TIMEOUT = 45.0
# A bound, not an expectation: a node starts in about a second, but a test starting
# three nodes (twelve Pythons) on a busy 2-core machine may wait tens of seconds.
START_TIMEOUT = 90.0
# Log text that must never appear in a role log.
FORBIDDEN_LOG_TEXT = ("Traceback", "database is locked")
# Below the Linux ephemeral range (32768+), so no outgoing socket holds it by chance.
UDP_PORT_RANGE = (20000, 32000)


# ---------------------------------------------------------------- waiting


def wait_until(
    pred: Callable[[], Any],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (sqlite3.Error, FileNotFoundError),
) -> Any:
    """Poll `pred` until it returns something truthy, and return that; fail after `timeout` s.

    Exceptions in `ignore` (the database not created yet, a table not there yet)
    count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = pred()
        except ignore as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for "
                f"{what or getattr(pred, '__name__', 'condition')}{detail}"
            )
        time.sleep(interval)


# ---------------------------------------------------------------- ports


def pick_udp_port() -> int:
    """A UDP port nothing on this host holds now, random so parallel runs do not cross."""
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randint(*UDP_PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))  # no SO_REUSEPORT: fails if anyone holds it
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port found")


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 free at this moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def umask() -> int:
    """This process's umask, which the roles it starts inherit."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------- nodes


def _supervisor_bin(name: str) -> str:
    """supervisord/supervisorctl installed beside this Python (so run-role.sh finds p2pshare)."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


class Node:
    """One p2pshare node: a temp P2P_HOME, its environment, and its processes."""

    def __init__(
        self, label: str, udp_port: int, *, home: Path | None = None, **settings: object
    ) -> None:
        # mkdtemp under /tmp: the supervisor socket path must stay under 107 bytes.
        self.home = Path(tempfile.mkdtemp(prefix="p2p")) if home is None else home
        self.home.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.username = f"{label}-{secrets.token_hex(3)}"
        self.udp_port = udp_port
        (self.home / "logs").mkdir()
        (self.home / "shared").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        env.update(
            P2P_HOME=str(self.home),
            P2P_BIND=LOOPBACK,
            P2P_TCP_PORT="0",
            P2P_UDP_PORT=str(udp_port),
            P2P_BROADCAST=LOOPBACK_BROADCAST,
            P2P_ANNOUNCE_INTERVAL="2",
            P2P_USERNAME=self.username,
            # Several nodes on one host: each web program takes a free loopback port.
            P2P_WEB_BIND=LOOPBACK,
            P2P_WEB_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        for key, value in settings.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exit_codes: dict[str, int | None] = {}
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.supervisord_exit: int | None = None
        self.prefix: list[str] = []  # e.g. ["ip", "netns", "exec", NS]

    def __repr__(self) -> str:
        return f"Node({self.username}, {self.home})"

    # ------------------------------------------------------------ paths

    @property
    def share(self) -> Path:
        return Path(self.env.get("P2P_SHARE_DIR", self.home / "shared"))

    @property
    def db_path(self) -> Path:
        return self.home / "p2p.db"

    # ------------------------------------------------------------ starting

    def start(self, roles: tuple[str, ...] = ROLES, *, wait: bool = True) -> None:
        """Start roles directly, each `python -m p2pshare.services.<role>`."""
        for role in roles:
            assert role not in self.procs or self.procs[role].poll() is not None, role
            with open(self.home / "logs" / f"{role}.log", "ab") as log:
                self.procs[role] = subprocess.Popen(
                    [*self.prefix, sys.executable, "-m", f"p2pshare.services.{role}"],
                    env=self.env,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.exit_codes.pop(role, None)
        if wait:
            self.wait_alive(roles)

    def start_supervised(self, *, wait: bool = True) -> None:
        """Start `supervisord -c supervisord.conf -n` (foreground, so we hold its PID)."""
        assert self.supervisord is None
        with open(self.home / "logs" / "supervisord.out", "ab") as out:
            self.supervisord = subprocess.Popen(
                [_supervisor_bin("supervisord"), "-c", str(SUPERVISORD_CONF), "-n"],
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_alive()

    def heartbeats(self) -> dict[str, tuple[int, float]]:
        return {
            role: (pid, beat)
            for role, pid, beat in self.sql("SELECT role, pid, beat_at FROM heartbeats")
        }

    def wait_alive(self, roles: tuple[str, ...] = ROLES, timeout: float = START_TIMEOUT) -> None:
        """Wait until each role has written a heartbeat (from the process we started)."""

        def alive() -> bool:
            for role, proc in self.procs.items():
                if role in roles and proc.poll() is not None:
                    raise AssertionError(
                        f"{self}: {role} exited with {proc.returncode}:\n{self.log(role)[-3000:]}"
                    )
            if self.supervisord is not None and self.supervisord.poll() is not None:
                raise AssertionError(
                    f"{self}: supervisord exited with {self.supervisord.returncode}"
                )
            beats = self.heartbeats()
            return all(
                role in beats and (role not in self.procs or beats[role][0] == self.procs[role].pid)
                for role in roles
            )

        wait_until(alive, timeout, what=f"{self} roles {', '.join(roles)} to be alive")

    # ------------------------------------------------------------ stopping

    def terminate(self, roles: tuple[str, ...] | None = None) -> None:
        """Send SIGTERM to our running role processes (or supervisord), by PID."""
        if self.supervisord is not None and roles is None:
            if self.supervisord.poll() is None:
                self.supervisord.send_signal(signal.SIGTERM)
            return
        for role, proc in self.procs.items():
            if (roles is None or role in roles) and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, roles: tuple[str, ...] | None = None) -> dict[str, int | None]:
        """Wait for processes sent SIGTERM; kill (by PID) any that overstay. Returns exit codes."""
        if self.supervisord is not None and roles is None:
            try:
                self.supervisord_exit = self.supervisord.wait(SUPERVISORD_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.supervisord.kill()
                self.supervisord.wait(5)
                self.supervisord_exit = None
            return {"supervisord": self.supervisord_exit}
        deadline = time.monotonic() + STOP_TIMEOUT
        for role, proc in self.procs.items():
            if roles is not None and role not in roles:
                continue
            if role in self.exit_codes:
                continue
            try:
                self.exit_codes[role] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                self.exit_codes[role] = None  # did not stop in time
        return {r: self.exit_codes[r] for r in self.procs if roles is None or r in roles}

    def stop(self, roles: tuple[str, ...] | None = None) -> None:
        """SIGTERM, then require exit 0 within 10 s."""
        self.terminate(roles)
        codes = self.wait_stopped(roles)
        assert all(code == 0 for code in codes.values()), f"{self}: exit codes {codes}"

    def restart(self, roles: tuple[str, ...] = ROLES) -> None:
        self.stop(roles)
        self.start(roles)

    # ------------------------------------------------------------ looking

    def p2pctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run p2pctl with this node's environment, from a folder that is not the home."""
        return subprocess.run(
            [sys.executable, "-m", "p2pshare.cli.main", *args],
            env=self.env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def p2pctl_json(self, *args: str) -> Any:
        done = self.p2pctl(*args, "--json")
        assert done.returncode == 0, f"p2pctl {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return json.loads(done.stdout)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_supervisor_bin("supervisorctl"), "-c", str(SUPERVISORD_CONF), *args],
            env=self.env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
        )

    def sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on the node's database, opened read-only."""
        if not self.db_path.exists():
            raise FileNotFoundError(self.db_path)
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def scalar(self, query: str, params: tuple[object, ...] = ()) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def node_id(self) -> str | None:
        return self.scalar("SELECT node_id FROM node WHERE id = 1")

    def tcp_port(self) -> int | None:
        return self.scalar("SELECT tcp_port FROM node WHERE id = 1")

    def peers(self) -> dict[str, tuple[Any, ...]]:
        """username -> (node_id, address, tcp_port, catalog_version, catalog_synced)."""
        return {
            row[0]: row[1:]
            for row in self.sql(
                "SELECT username, node_id, address, tcp_port, catalog_version, catalog_synced "
                "FROM peers"
            )
        }

    def sees(self, *others: Node) -> bool:
        """Every other node is in our peers table, under its current node id."""
        peers = self.peers()
        return all(o.username in peers and peers[o.username][0] == o.node_id() for o in others)

    def holdings_of(self, peer_username: str) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM holdings h JOIN peers p ON p.id = h.peer_id "
                "WHERE p.username = ?",
                (peer_username,),
            )
            or 0
        )

    def log(self, role: str) -> str:
        path = self.home / "logs" / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> dict[str, str]:
        """Role log text by role (those that exist)."""
        return {
            role: self.log(role)
            for role in LOG_NAMES
            if (self.home / "logs" / f"{role}.log").exists()
        }

    def log_problems(self) -> list[str]:
        return [
            f"{self}: {role}.log contains {bad!r}"
            for role, text in self.logs().items()
            for bad in FORBIDDEN_LOG_TEXT
            if bad in text
        ]


def seed(node: Node, name: str, data: bytes, *, folder: Path | None = None) -> Path:
    """Put a file in the node's share folder (or `folder`), already settled (mtime in the past)."""
    path = (folder or node.share) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    past = time.time() - 30
    os.utime(path, (past, past))
    return path
