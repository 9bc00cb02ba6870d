"""Two nodes in two network namespaces joined by a veth pair: default broadcast discovery.

Here, and only here, P2P_BROADCAST is unset: each node announces to the broadcast
address of every interface it sees, and inside these namespaces that is only the
veth end the test made (10.x addresses that exist nowhere else). Nothing is
created in the host's own namespace.
"""

from __future__ import annotations

import random
import secrets

import pytest
from netns import ip, ip_ok, require_netns

pytestmark = pytest.mark.integration


@pytest.fixture
def netns_pair():
    """Two namespaces with a veth pair between them; deleted at teardown."""
    require_netns()
    tag = secrets.token_hex(3)
    names = (f"p2pt-{tag}-a", f"p2pt-{tag}-b")
    made: list[str] = []
    try:
        for ns in names:
            done = ip("netns", "add", ns)
            if done.returncode != 0:
                pytest.skip(f"`ip netns add` is not allowed here: {done.stderr.strip()}")
            made.append(ns)
        veth = (f"vp{tag}a", f"vp{tag}b")
        net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        addresses = (f"{net}.1", f"{net}.2")
        ip_ok(
            "-n",
            names[0],
            "link",
            "add",
            veth[0],
            "type",
            "veth",
            "peer",
            "name",
            veth[1],
            "netns",
            names[1],
        )
        for ns, dev, address in zip(names, veth, addresses, strict=True):
            ip_ok("-n", ns, "link", "set", "lo", "up")
            ip_ok("-n", ns, "addr", "add", f"{address}/24", "brd", "+", "dev", dev)
            ip_ok("-n", ns, "link", "set", dev, "up")
        yield names, addresses
    finally:
        for ns in made:
            ip("netns", "delete", ns)  # takes the veth pair with it


def test_nodes_in_two_namespaces_find_each_other_by_interface_broadcast(
    make_node, wait_until, netns_pair
):
    names, addresses = netns_pair
    nodes = []
    for label, ns in zip(("a", "b"), names, strict=True):
        node = make_node(label, P2P_BROADCAST=None, P2P_BIND="0.0.0.0", P2P_ANNOUNCE_INTERVAL=1)
        node.prefix = ["ip", "netns", "exec", ns]
        nodes.append(node)
    a, b = nodes
    (a.share / "hello.txt").write_bytes(b"hello across namespaces\n")
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_alive()
        status = a.p2pctl_json("status")
        # The announcer reports the interface broadcast address it resolved and sends to.
        assert status["broadcast_from"] == "interfaces"
        assert status["broadcast"] == [f"{addresses[0].rsplit('.', 1)[0]}.255"]
        wait_until(lambda: a.sees(b) and b.sees(a), 60, what="a and b to see each other")
        # Each knows the other by its address on the veth, and fetched its catalog over TCP.
        assert a.peers()[b.username][1] == addresses[1]
        assert b.peers()[a.username][1] == addresses[0]
        wait_until(lambda: b.holdings_of(a.username) == 1, 60, what="b to learn hello.txt")
        assert f"to {addresses[0][:-1]}255" in a.log("announcer")
    finally:
        # Stop the roles before their namespaces go.
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait_stopped()
    for node in nodes:
        assert set(node.exit_codes.values()) == {0}, node.exit_codes
