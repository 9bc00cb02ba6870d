"""`p2pctl status` from a shell without the node's variables reports what the roles run with."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest

pytestmark = pytest.mark.integration

ROLES = ("server", "announcer", "listener", "downloader")
KEY = "status-truth-key-0123456789"


def bare_status(node, *args):
    """p2pctl status in a shell that has only P2P_HOME of the node's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env.pop("XDG_DATA_HOME", None)
    env["P2P_HOME"] = str(node.home)
    done = subprocess.run(
        [sys.executable, "-m", "p2pshare.cli.main", "status", *args],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def recorded(node):
    return {
        (role, name): value
        for role, name, value in node.sql("SELECT role, name, value FROM role_settings")
    }


def test_status_from_a_bare_shell_shows_the_nodes_bind_targets_and_name(make_node, wait_until):
    node = make_node("truth", P2P_NETWORK_KEY=KEY)
    assert node.env["P2P_BIND"] == "127.0.0.1"
    assert node.env["P2P_BROADCAST"] == "127.255.255.255"
    node.start()
    wait_until(
        lambda: {role for role, _ in recorded(node)} == set(ROLES),
        60,
        what="every role to record its settings",
    )
    port = wait_until(node.tcp_port, 60, what="the server's port")

    out = bare_status(node)
    lines = out.splitlines()
    assert lines[0].split() == ["node", node.username, f"({node.home})"]
    assert f"address   127.0.0.1  tcp {port}  udp {node.udp_port}" in lines
    assert "announce  to 127.255.255.255 every 2 s" in lines
    assert f"folders   share {node.home / 'shared'}, downloads {node.home / 'downloads'}" in lines
    assert "key       network key set" in lines
    assert f"version   {metadata.version('p2pshare')}" in lines
    assert "0.0.0.0" not in out and "every interface" not in out
    assert not [line for line in lines if line.startswith("settings ")]  # no fallback
    [note] = [line for line in lines if line.startswith("note ")]
    assert all(v in note for v in ("P2P_BIND", "P2P_BROADCAST", "P2P_USERNAME"))

    info = node.p2pctl_json("status")  # the node's own shell agrees: no note
    assert info["shell_differs"] == [] and info["settings_from"] == "node"
    assert (info["bind"], info["broadcast"]) == ("127.0.0.1", ["127.255.255.255"])

    # The real port of P2P_TCP_PORT=0, and whether a key is set, never the key itself.
    rows = recorded(node)
    assert rows["server", "tcp_port"] == str(port)
    assert rows["listener", "network_key"] == rows["announcer", "network_key"] == "yes"
    assert not [value for value in rows.values() if KEY in value]


def test_a_restarted_role_replaces_what_it_recorded(make_node, wait_until):
    node = make_node("again")
    node.start()
    wait_until(lambda: ("announcer", "username") in recorded(node), 60, what="the announcer")
    node.stop(("announcer",))
    node.env["P2P_USERNAME"] = renamed = f"{node.username}-renamed"
    node.start(("announcer",))
    wait_until(
        lambda: recorded(node).get(("announcer", "username")) == renamed,
        60,
        what="the restarted announcer to record its new name",
    )
    out = bare_status(node)
    assert out.splitlines()[0].split()[:2] == ["node", renamed]
