"""A node's settings live with the node (issue 36): `p2pctl start` records them in the
home's p2p.toml, a restart from a shell that names only P2P_HOME keeps every one of them
(the network key and the announcement targets included), a shell that differs is told,
and a program that cannot start makes `p2pctl start` fail with its sentence."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from node import LOOPBACK, LOOPBACK_BROADCAST, Node, pid_running, wait_until


def supervisord_pid(home: Path) -> int | None:
    try:
        return int((home / "supervisord.pid").read_text())
    except (OSError, ValueError):
        return None


def plain_shell(node: Node, **settings: str) -> dict[str, str]:
    """A shell that knows only where the node lives (and `settings`)."""
    env = {k: v for k, v in node.env.items() if not k.startswith("P2P_")}
    return {**env, "P2P_HOME": str(node.home), **settings}


def p2pctl(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pshare.cli.main", *args],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_node_keeps_how_it_was_started_and_says_what_cannot_start(
    make_node: Callable[..., Node],
) -> None:
    key = secrets.token_hex(16)
    node = make_node("kept", P2P_NETWORK_KEY=key, P2P_UPLOAD_LIMIT="123456")
    downloads = node.home / "elsewhere"
    node.env["P2P_DOWNLOAD_DIR"] = str(downloads)
    record = node.home / "p2p.toml"
    try:
        started = p2pctl(node.env, "start", timeout=120)
        assert started.returncode == 0, started.stderr + started.stdout
        assert f"recorded the node's settings in {record}" in started.stdout
        assert stat.S_IMODE(record.stat().st_mode) == 0o600  # it holds the key
        assert key in record.read_text()

        shell = plain_shell(node)
        restarted = p2pctl(shell, "restart", timeout=180)
        assert restarted.returncode == 0, restarted.stderr + restarted.stdout
        assert "applied" not in restarted.stdout  # nothing in this shell differs
        status = json.loads(p2pctl(shell, "status", "--json").stdout)
        assert status["settings_from"] == "node"
        assert (status["username"], status["bind"], status["udp_port"]) == (
            node.username,
            LOOPBACK,
            node.udp_port,
        )
        assert status["broadcast"] == [LOOPBACK_BROADCAST]  # not every interface's
        assert status["network_key"] is True and status["encrypt"] is True
        assert status["download_dir"] == str(downloads)
        assert status["shell_differs"] == []
        upload_limit = node.scalar(
            "SELECT value FROM role_settings WHERE role = 'server' AND name = 'upload_limit'"
        )
        assert upload_limit == "123456"

        # A shell that says otherwise is told, in one line, and does not change the node.
        other = p2pctl(plain_shell(node, P2P_DOWNLOAD_DIR="/nowhere/else"), "history")
        assert other.returncode == 0, other.stderr
        assert other.stderr.startswith("note: this shell's P2P_DOWNLOAD_DIR differs")

        # The web program's port is taken: start fails with the web program's sentence.
        with socket.socket() as holder:
            holder.bind((LOOPBACK, 0))
            holder.listen()
            taken = holder.getsockname()[1]
            failed = p2pctl(plain_shell(node, P2P_WEB_PORT=str(taken)), "restart", timeout=180)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert f"applied from this shell: P2P_WEB_PORT 0 -> {taken}" in failed.stdout
        assert failed.stderr.splitlines() == [
            f"error: p2p-web cannot start: TCP port {taken} on {LOOPBACK} is already in use "
            "(P2P_WEB_BIND, P2P_WEB_PORT); the node is stopped"
        ]
        left = supervisord_pid(node.home)
        assert left is None or not pid_running(left)
        report = p2pctl(shell, "status", "--json")
        web = json.loads(report.stdout)["roles"]["web"]
        assert web["alive"] is False and "already in use" in web["error"]
        link = p2pctl(shell, "share-link")
        assert link.returncode == 1 and "Traceback" not in link.stderr
        assert link.stderr.startswith("error: the web program cannot start: TCP port")
    finally:
        left = supervisord_pid(node.home)
        if left is not None and pid_running(left):  # only the supervisord this test started
            os.kill(left, signal.SIGTERM)
            wait_until(lambda: not pid_running(left), 30, what="supervisord stopped")
