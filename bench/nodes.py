"""Real p2pshare nodes under supervisord for the benchmark, on loopback only."""

from __future__ import annotations

import compileall
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procstat import cpu_seconds, peak_rss_mb

from p2pshare.cli.supervise import wake_supervisord
from p2pshare.services.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "supervisord.conf"
LOOPBACK = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"
ROLES = ("server", "announcer", "listener", "downloader")


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll until pred() is truthy; raise after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
        except (sqlite3.Error, OSError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port nothing on this host holds now, random so parallel runs do not cross
    (below the ephemeral range, so no outgoing socket holds it by chance)."""
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")


def start_nodes(*nodes: BenchNode) -> None:
    """Start every node, then wait until each is ready: they start side by side."""
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_ready()


def beside_python(name: str) -> str:
    """A console script installed with the Python running the benchmark (else on PATH)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


def supervisord_bin() -> str:
    return beside_python("supervisord")


def compile_bytecode() -> None:
    """Write the package's .pyc files, as `pip install .` does for a user. This checkout
    is installed editable, and where PYTHONDONTWRITEBYTECODE is set (as on these machines)
    every role and every p2pctl would compile its modules again: 40 ms of the 0.5 s a
    folder of 1,000 small files takes (py-spy of p2pctl)."""
    for folder in ("services", "db", "cli"):
        compileall.compile_dir(str(REPO / folder), quiet=1)


class BenchNode:
    """A node with its own P2P_HOME, run by its own supervisord in the foreground.

    With cpus set (e.g. "0"), supervisord, so every role, and each p2pctl run
    under `taskset -c cpus`.
    """

    def __init__(
        self,
        root: Path,
        label: str,
        udp_port: int,
        cpus: str | None = None,
        netns: tuple[str, str, str] | None = None,
        **settings: object,
    ) -> None:
        """netns: (namespace, address, broadcast) to run the node in a network namespace
        the caller made (bench/bigshare.py --vpn), bound to that address."""
        self.home = root / label
        self.label = label
        self.pin = ["taskset", "-c", cpus] if cpus is not None else []
        if netns is not None:
            self.pin = ["ip", "netns", "exec", netns[0], *self.pin]
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        (self.home / "shared").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        env.update(
            P2P_HOME=str(self.home),
            P2P_BIND=LOOPBACK,
            P2P_BROADCAST=LOOPBACK_BROADCAST,
            P2P_TCP_PORT="0",
            P2P_UDP_PORT=str(udp_port),
            P2P_USERNAME=label,
            # Otherwise the node's defaults, as a user runs it: the announce interval (60 s)
            # and the web program, on a port of its own (several nodes share this host).
            P2P_WEB_PORT=str(free_tcp_port()),
        )
        if netns is not None:
            env.update(P2P_BIND=netns[1], P2P_BROADCAST=netns[2])
        env.update({k: str(v) for k, v in settings.items()})
        self.env = env
        # Where the roles will keep things, as they will resolve it from this environment.
        self.settings = load_settings(env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def share(self) -> Path:
        return self.settings.share_dir

    @property
    def downloads(self) -> Path:
        return self.settings.download_dir

    def start(self) -> float:
        """Start supervisord; returns the wall-clock time it was launched."""
        compile_bytecode()
        started = time.time()
        self.proc = subprocess.Popen(
            [*self.pin, supervisord_bin(), "-c", str(CONF), "-n"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # As `p2pctl start` does: supervisord spawns its programs at once, not after a
        # second's wait for a first event (cli/supervise.py).
        wake_supervisord(self.home / "supervisor.sock")
        return started

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            now = time.time()
            rows = self.sql("SELECT role FROM heartbeats WHERE beat_at > ?", (now - 5,))
            port = self.sql("SELECT tcp_port FROM node")
            beating = {role for (role,) in rows}
            return beating >= set(ROLES) and bool(port) and port[0][0] is not None

        wait_for(ready, timeout, f"{self.label} to start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        db = self.settings.db_path
        if not db.exists():
            raise FileNotFoundError(db)
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            return conn.execute(query, params).fetchall()

    def scalar(self, query: str, params: tuple[object, ...] = ()) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def p2pctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.pin, sys.executable, "-m", "p2pshare.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def role_pid(self, role: str) -> int:
        return int(self.scalar("SELECT pid FROM heartbeats WHERE role = ?", (role,)))

    def peak_rss_mb(self, role: str) -> float:
        """VmHWM of a role: the most resident memory it ever had, in MB."""
        return peak_rss_mb(self.role_pid(role))

    def cpu_seconds(self, role: str, *, waited_children: bool = False) -> float:
        """CPU-seconds the role's process has used since it started (with waited_children,
        its children's it has waited for too)."""
        return cpu_seconds(self.role_pid(role), waited_children=waited_children)

    def db_writes(self) -> int:
        detail = str(self.scalar("SELECT detail FROM heartbeats WHERE role = 'downloader'"))
        return int(detail.split(",")[-1].split()[0])

    def knows(self, name: str, peers: int = 1) -> bool:
        n = self.scalar(
            "SELECT count(DISTINCT peer_id) FROM holdings WHERE name = ? AND bitfield IS NULL",
            (name,),
        )
        return bool(n and n >= peers)

    def forget_download(self, name: str) -> None:
        """Remove a finished download so the same file can be fetched again."""
        for path in self.downloads.glob(f"{Path(name).stem}*"):
            path.unlink()
        wait_for(
            lambda: not self.sql("SELECT 1 FROM local_files WHERE root = 'download'"),
            30,
            "the indexer to notice the removed download",
        )
