"""Fixtures for the integration tests (and, through tests/reliability/conftest.py, the
reliability tests): nodes that are stopped and checked at teardown, fake peers, a
datagram capture. What they hand out lives in importable modules: node.py (`Node`,
`wait_until`, ports, `seed`) and fakepeer.py (`FakePeer`, forged announcements).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakepeer import DatagramCapture, FakePeer, announce, catalog_entry, send_datagram
from node import Node, free_tcp_port, pick_udp_port, wait_until

from p2pshare.services import protocol

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
    """Factory: fake_peer(files=[...], udp_port=P, ...) -> a FakePeer, started (announcing
    when it has a UDP port), closed at teardown."""
    peers: list[FakePeer] = []

    def factory(**kwargs: Any) -> FakePeer:
        peer = FakePeer(**kwargs).start()
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
