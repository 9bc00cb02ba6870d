"""Case 1: four hosts on one switch, one seeder's cable pulled mid-transfer and put back.

Four network namespaces play four machines; a fifth holds the switch (a Linux
bridge) that their veth cables plug into. Every address (10.77.1.0/24) exists
only inside these namespaces, which the test creates and deletes. Each node is
run as a user runs it, `supervisord -c supervisord.conf -n`, inside its
namespace, with P2P_BROADCAST unset (so it announces to its interface's
broadcast address, which here is 10.77.1.255 and nothing else) and
P2P_BIND=0.0.0.0.

Three nodes seed the same file, rate-limited so a transfer lasts several
seconds; the fourth downloads it from all three. Once all three have delivered
chunks, one seeder's cable is pulled at the switch, then plugged back. The file
must arrive byte-identical from the others.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
from dataclasses import dataclass

import pytest
from netns import ip, ip_ok, require_netns
from node import ROLES

pytestmark = pytest.mark.reliability

SUBNET = "10.77.1"
LABELS = ("a", "b", "c", "d")  # a downloads; b, c, d seed
CHUNK = 64 * 1024
SIZE = 16 * 1024 * 1024 + 12_345  # 257 chunks, the last one short
UPLOAD_LIMIT = 1024 * 1024  # bytes per second per seeder
CUT_SECONDS = 3.0


@dataclass
class Lan:
    switch: str  # the namespace holding the bridge
    hosts: dict[str, str]  # label -> namespace
    ports: dict[str, str]  # label -> bridge-side veth (in the switch namespace)
    addresses: dict[str, str]  # label -> IPv4 address inside its namespace

    def cable(self, label: str, up: bool) -> None:
        ip_ok("-n", self.switch, "link", "set", self.ports[label], "up" if up else "down")


@pytest.fixture
def lan():
    """Four host namespaces cabled to a bridge in a fifth; all deleted at teardown."""
    require_netns()
    tag = secrets.token_hex(3)
    switch = f"p2pr-{tag}-sw"
    hosts = {label: f"p2pr-{tag}-{label}" for label in LABELS}
    made: list[str] = []
    try:
        for ns in (switch, *hosts.values()):
            done = ip("netns", "add", ns)
            if done.returncode != 0:
                pytest.skip(f"`ip netns add` is not allowed here: {done.stderr.strip()}")
            made.append(ns)
        ip_ok("-n", switch, "link", "set", "lo", "up")
        ip_ok("-n", switch, "link", "add", "br0", "type", "bridge")
        ip_ok("-n", switch, "link", "set", "br0", "up")
        ports, addresses = {}, {}
        for n, (label, ns) in enumerate(hosts.items(), start=1):
            port, nic = f"sw{tag}{label}", f"eth{tag}{label}"
            # Made in the switch namespace, one end moved to the host: nothing in ours.
            ip_ok(
                "-n", switch, "link", "add", port, "type", "veth", "peer", "name", nic,
                "netns", ns,
            )  # fmt: skip
            ip_ok("-n", switch, "link", "set", port, "master", "br0")
            ip_ok("-n", switch, "link", "set", port, "up")
            addresses[label] = f"{SUBNET}.{n}"
            ip_ok("-n", ns, "link", "set", "lo", "up")
            ip_ok("-n", ns, "addr", "add", f"{addresses[label]}/24", "brd", "+", "dev", nic)
            ip_ok("-n", ns, "link", "set", nic, "up")
            ports[label] = port
        yield Lan(switch, hosts, ports, addresses)
    finally:
        for ns in reversed(made):
            ip("netns", "delete", ns)  # the veth cables and the bridge go with them


def start_in_namespace(node, ns: str) -> None:
    """`supervisord -c <repo>/supervisord.conf -n` inside `ns`; `ip netns exec` execs it,
    so the PID we hold is supervisord's own (SIGTERM at teardown, exit 0)."""
    from node import SUPERVISORD_CONF, _supervisor_bin

    with open(node.home / "logs" / "supervisord.out", "ab") as out:
        node.supervisord = subprocess.Popen(
            ["ip", "netns", "exec", ns, _supervisor_bin("supervisord"), "-c"]
            + [str(SUPERVISORD_CONF), "-n"],
            env=node.env,
            cwd=node.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_four_hosts_download_from_three_and_survive_a_pulled_cable(make_node, wait_until, lan):
    data = os.urandom(SIZE)
    sha = hashlib.sha256(data).hexdigest()
    nodes = {}
    for label in LABELS:
        nodes[label] = make_node(
            label,
            P2P_BROADCAST=None,  # the default: every interface's broadcast address
            P2P_BIND="0.0.0.0",
            P2P_ANNOUNCE_INTERVAL=1,
            P2P_CHUNK_SIZE=CHUNK,
            P2P_UPLOAD_LIMIT=UPLOAD_LIMIT if label != "a" else 0,
        )
    a = nodes["a"]
    seeders = [nodes[label] for label in ("b", "c", "d")]
    for s in seeders:
        (s.share / "big.bin").write_bytes(data)
    try:
        for label, node in nodes.items():
            start_in_namespace(node, lan.hosts[label])
        for node in nodes.values():
            node.wait_alive()
        status = a.p2pctl_json("status")
        assert status["broadcast_from"] == "interfaces" and status["broadcast"]
        pids = {label: node.heartbeats() for label, node in nodes.items()}

        # Discovery over the bridge: everyone sees everyone, by its address on the LAN.
        others = {x: [n for n in nodes.values() if n is not x] for x in nodes.values()}
        wait_until(
            lambda: all(x.sees(*others[x]) for x in nodes.values()),
            20,
            interval=0.2,
            what="all four nodes to see each other",
        )
        for label, node in nodes.items():
            for other in others[node]:
                assert other.peers()[node.username][1] == lan.addresses[label]
        wait_until(
            lambda: (
                a.scalar(
                    "SELECT count(DISTINCT h.peer_id) FROM holdings h "
                    "JOIN files f ON f.id = h.file_id WHERE f.sha256 = ? AND h.bitfield IS NULL",
                    (sha,),
                )
                == 3
            ),
            20,
            interval=0.2,
            what="a to learn that b, c and d hold big.bin",
        )

        done = a.p2pctl("download", "big.bin", "--no-wait")
        assert done.returncode == 0, done.stderr
        started = time.monotonic()

        def contributors() -> dict[str, int]:
            return {
                address: chunks
                for address, chunks in a.sql(
                    "SELECT address, chunks FROM download_sources WHERE download_id = 1"
                )
                if chunks > 0
            }

        wait_until(
            lambda: len(contributors()) == 3,
            20,
            interval=0.1,
            what="all three seeders to deliver chunks",
        )
        victim = "b"
        done_at_cut = a.scalar("SELECT bytes_done FROM downloads WHERE id = 1")
        assert done_at_cut < SIZE // 2, "the transfer is too fast to cut it in the middle"
        lan.cable(victim, up=False)
        cut_at = time.monotonic()
        time.sleep(CUT_SECONDS)  # the cable stays out this long: the fault, not a wait
        done_during_cut = a.scalar("SELECT bytes_done FROM downloads WHERE id = 1")
        b_chunks_at_restore = contributors().get(lan.addresses[victim], 0)
        lan.cable(victim, up=True)
        restored_at = time.time()
        status_at_restore = a.scalar("SELECT status FROM downloads WHERE id = 1")

        row = wait_until(
            lambda: (
                (
                    r := a.sql(
                        "SELECT status, reason, bytes_done, bytes_received, saved_as, bad_chunks "
                        "FROM downloads WHERE id = 1"
                    )[0]
                )[0]
                in ("done", "failed")
                and r
            ),
            60,
            interval=0.2,
            what="the download to end",
        )
        took = time.monotonic() - started
        status, reason, bytes_done, received, saved_as, bad_chunks = row
        assert status == "done", reason
        assert (a.home / "downloads" / saved_as).read_bytes() == data
        assert bytes_done == SIZE
        assert bad_chunks == 0
        sources = a.sql(
            "SELECT username, address, chunks, bytes FROM download_sources "
            "WHERE download_id = 1 ORDER BY address"
        )
        # The others carried the transfer while the cable was out.
        assert done_during_cut > done_at_cut
        assert sum(chunks for _, _, chunks, _ in sources) == -(-SIZE // CHUNK)
        assert len([s for s in sources if s[2] > 0]) == 3
        # Once plugged back in, the victim is heard again.
        wait_until(
            lambda: (
                (
                    a.scalar(
                        "SELECT last_seen FROM peers WHERE username = ?", (nodes[victim].username,)
                    )
                    or 0
                )
                > restored_at
            ),
            15,
            interval=0.2,
            what="a to hear the reconnected seeder again",
        )
        # No role died and was restarted by supervisord on the way.
        for label, node in nodes.items():
            # The four roles (p2p-web may have started beating after the first look).
            now_pids = {r: pid for r, (pid, _) in node.heartbeats().items() if r in ROLES}
            assert now_pids == {r: pid for r, (pid, _) in pids[label].items() if r in ROLES}, label
        print(
            f"\nmultihost: {SIZE} bytes in {took:.1f} s from {len(sources)} seeders "
            f"(limit {UPLOAD_LIMIT} B/s each); cable of {victim} out for {CUT_SECONDS:.0f} s "
            f"from {done_at_cut} to {done_during_cut} bytes done (status at restore: "
            f"{status_at_restore}, {victim} had delivered {b_chunks_at_restore} chunks); "
            f"received {received} bytes for {SIZE} ({received - SIZE} duplicate); "
            f"sources {sources}; cut at +{cut_at - started:.1f} s"
        )
    finally:
        # Stop the nodes while their namespaces still exist.
        for node in nodes.values():
            node.terminate()
        for node in nodes.values():
            node.wait_stopped()
    for node in nodes.values():
        assert node.supervisord_exit == 0, f"{node}: supervisord exited {node.supervisord_exit}"
