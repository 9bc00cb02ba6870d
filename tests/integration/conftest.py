"""Real p2pshare nodes on loopback for the integration tests.

THE NETWORK RULE: every node here announces to 127.255.255.255 only, binds
127.0.0.1, takes a free TCP port (P2P_TCP_PORT=0), and uses a UDP port picked
for the one test so runs on the same host never hear each other. Fake peers
listen on 127.0.0.1; forged datagrams go to 127.255.255.255 or 127.0.0.1.

Waiting is always polling (`wait_until`) with a bound; processes are stopped
with SIGTERM by PID and must exit 0 within 10 s; at teardown no role log may
contain a traceback or "database is locked".
"""

from __future__ import annotations

import contextlib
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2pshare.services import protocol

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


# ---------------------------------------------------------------- fake peers


@dataclass
class FakePeer:
    """A TCP server on 127.0.0.1 that speaks the p2pshare protocol and says what it is told.

    `catalog` is the raw reply payload (build it with protocol.encode_catalog, which
    does not check names, or by hand to lie about anything); `manifests` answers a
    manifest request with raw payload bytes.
    """

    catalog: bytes
    manifests: Callable[[protocol.ManifestRequest], bytes] = field(
        default=lambda req: protocol.encode_manifests({})
    )
    node_id: str = field(default_factory=lambda: secrets.token_hex(16))
    username: str = field(default_factory=lambda: f"fake-{secrets.token_hex(3)}")
    # A peer that holds a catalog fetch open: "silent" answers nothing after the first
    # request; "trickle" promises a 1 MB catalog and sends one byte of it per second.
    stall: str | None = None
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()

    def count(self, op: str) -> int:
        return self.requests.count(op)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn, contextlib.suppress(OSError, protocol.ProtocolError):
            conn.sendall(protocol.encode_welcome(protocol.Welcome(secrets.token_hex(16), False)))
            for _ in range(10_000):  # bounded: a real client sends a few dozen requests
                header = _recv_exact(conn, 4)
                if header is None:
                    return
                body = _recv_exact(conn, protocol.frame_length(header))
                if body is None:
                    return
                req = protocol.decode_request(body)
                if self.stall:
                    self.requests.append("stalled")
                    if self.stall == "trickle":
                        conn.sendall(protocol.encode_ok(len=1_000_000))
                    for _ in range(120):  # bounded; the fixture's teardown ends it sooner
                        if self.stopping.wait(1.0):
                            return
                        if self.stall == "trickle":
                            conn.sendall(b" ")
                    return
                if isinstance(req, protocol.CatalogRequest):
                    self.requests.append("catalog")
                    payload = self.catalog
                elif isinstance(req, protocol.ManifestRequest):
                    self.requests.append("manifest")
                    payload = self.manifests(req)
                else:
                    self.requests.append(type(req).__name__)
                    conn.sendall(protocol.encode_error("fake peer"))
                    continue
                conn.sendall(protocol.encode_ok(len=len(payload)) + payload)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)


def send_datagram(data: bytes, port: int, target: str = LOOPBACK_BROADCAST) -> None:
    """One UDP datagram from 127.0.0.1 to a loopback target (never anything else)."""
    assert target in (LOOPBACK_BROADCAST, LOOPBACK), target
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind((LOOPBACK, 0))
        sock.sendto(data, (target, port))


def announce(
    port: int,
    *,
    node_id: str,
    username: str,
    tcp_port: int,
    catalog_version: int = 1,
    seq: int = 1,
    key: str | None = None,
    target: str = LOOPBACK_BROADCAST,
) -> bytes:
    """Forge one announcement with protocol.encode_announce and send it; returns the bytes."""
    data = protocol.encode_announce(
        protocol.Announce(node_id, username, tcp_port, catalog_version, seq, time.time()), key=key
    )
    send_datagram(data, port, target)
    return data


class DatagramCapture:
    """Every datagram arriving on the announcement port, received beside the nodes' listeners.

    Bound to 0.0.0.0 with SO_REUSEADDR and SO_REUSEPORT, so it gets a copy of each
    broadcast to 127.255.255.255 (unicast would go to one socket only).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("0.0.0.0", port))
        self.sock.settimeout(0.2)
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((data, addr))

    def from_node(self, node_id: str) -> list[bytes]:
        """Datagrams whose JSON says they come from `node_id`."""
        out = []
        for data, _ in list(self.received):
            with contextlib.suppress(ValueError):
                raw = json.loads(data)
                if isinstance(raw, dict) and raw.get("node") == node_id:
                    out.append(data)
        return out

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


# ---------------------------------------------------------------- fixtures


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def udp_port() -> int:
    """The announcement port shared by the nodes of one test."""
    return pick_udp_port()


@pytest.fixture
def make_node(request: pytest.FixtureRequest, udp_port: int) -> Iterator[Callable[..., Node]]:
    """Factory: make_node("a", P2P_PEER_TTL=3) -> a Node (not started) on this test's UDP port.

    Teardown stops every node (SIGTERM, exit 0 within 10 s) and checks every role
    log for tracebacks and "database is locked". Homes are removed when all is well.
    """
    nodes: list[Node] = []

    def factory(label: str, **settings: object) -> Node:
        node = Node(label, int(settings.pop("udp_port", udp_port)), **settings)  # type: ignore[call-overload]
        nodes.append(node)
        return node

    yield factory

    for node in nodes:
        node.terminate()
    problems: list[str] = []
    for node in nodes:
        codes = node.wait_stopped()
        problems += [
            f"{node}: {who} exited with {code} on SIGTERM"
            for who, code in codes.items()
            if code != 0
        ]
        problems += node.log_problems()
    call = getattr(request.node, "rep_call", None)
    failed = call is None or call.failed  # an expected failure (xfail) cleans up too
    keep = os.environ.get("P2P_TEST_KEEP") == "1"  # to read the logs of a passing test
    if keep or problems or failed:
        for node in nodes:
            print(f"kept {node.home} for inspection")
    else:
        for node in nodes:
            shutil.rmtree(node.home, ignore_errors=True)
    assert not problems, "\n".join(problems)


@pytest.fixture
def fake_peer() -> Iterator[Callable[..., FakePeer]]:
    """Factory for FakePeer servers, closed at teardown."""
    peers: list[FakePeer] = []

    def factory(**kwargs: Any) -> FakePeer:
        peer = FakePeer(**kwargs)
        peers.append(peer)
        return peer

    yield factory
    for peer in peers:
        peer.close()


@pytest.fixture
def capture(udp_port: int) -> Iterator[DatagramCapture]:
    cap = DatagramCapture(udp_port)
    yield cap
    cap.close()


@pytest.fixture(name="free_tcp_port")
def free_tcp_port_fixture() -> Callable[[], int]:
    return free_tcp_port


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    return wait_until


def catalog_entry(
    name: str, content: bytes, chunk_size: int = protocol.MIN_CHUNK
) -> tuple[protocol.CatalogEntry, list[str]]:
    """A true catalog entry for `content` under `name` (not checked), and its manifest."""
    import hashlib

    from p2pshare.services.hashing.chain import manifest_entries

    hashes = manifest_entries(content, chunk_size)
    key = protocol.FileKey(
        hashlib.sha256(content).hexdigest(), chunk_size, protocol.manifest_root(hashes)
    )
    return protocol.CatalogEntry(name, key, len(content), None), hashes


@pytest.fixture(name="catalog_entry")
def catalog_entry_fixture() -> Callable[..., tuple[protocol.CatalogEntry, list[str]]]:
    return catalog_entry


@pytest.fixture(name="announce")
def announce_fixture() -> Callable[..., bytes]:
    return announce


@pytest.fixture(name="send_datagram")
def send_datagram_fixture() -> Callable[..., None]:
    return send_datagram


@pytest.fixture
def chunk_gate() -> Iterator[Callable[..., Any]]:
    """Factory: chunk_gate(seeder, to_udp_port, budget=N) -> a ChunkGate, closed at
    teardown (see chunkgate.py; the seeder must announce on a UDP port of its own)."""
    from chunkgate import ChunkGate

    gates: list[ChunkGate] = []

    def factory(seeder: Node, to_udp_port: int, *, budget: int, per_file: bool = True) -> ChunkGate:
        gate = ChunkGate(seeder, to_udp_port, budget=budget, per_file=per_file)
        gates.append(gate)
        return gate

    yield factory
    for gate in gates:
        gate.close()
