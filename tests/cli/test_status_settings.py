"""`p2pctl status` reports what the node's roles run with, not the shell's environment;
`history` names sources by username or, with --addresses, by address; `--version`."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from test_reports import as_json, ok, p2pctl, seed

from p2pshare.cli.reports import source_names
from p2pshare.db.engine import Database
from p2pshare.db.node import ROLES, record_role_settings
from p2pshare.db.reports import DownloadRow

VERSION = metadata.version("p2pshare")
SHARE = "/srv/p2p/shared"
DOWNLOADS = "/srv/p2p/downloads"


def running_with(broadcast: str, broadcast_from: str, version: str = VERSION) -> dict[str, dict]:
    """role_settings as the four roles of a node started with P2P_BIND=127.0.0.1,
    P2P_USERNAME=alice-node, P2P_UDP_PORT=40404 and a network key write them."""
    return {
        "server": {
            "bind": "127.0.0.1",
            "tcp_port": "45678",
            "share_dir": SHARE,
            "download_dir": DOWNLOADS,
            "upload_limit": "0",
            "chunk_size": "auto",
            "version": version,
        },
        "announcer": {
            "username": "alice-node",
            "bind": "127.0.0.1",
            "udp_port": "40404",
            "broadcast": broadcast,
            "broadcast_from": broadcast_from,
            "announce_interval": "2",
            "network_key": "yes",
            "version": VERSION,
        },
        "listener": {
            "udp_port": "40404",
            "peer_ttl": "6",
            "network_key": "yes",
            "version": VERSION,
        },
        "downloader": {
            "download_dir": DOWNLOADS,
            "temp_dir": "/srv/p2p/temp",
            "wait_timeout": "600",
            "version": VERSION,
        },
    }


def record(home: Path, settings: dict[str, dict[str, str]]) -> None:
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            for role, values in settings.items():
                record_role_settings(s, role, values, now=1.0)
    finally:
        database.close()


@pytest.fixture(scope="module")
def node_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("recorded")
    seed(home)
    record(home, running_with("127.255.255.255", "P2P_BROADCAST"))
    return home


def lines_of(out: str, label: str) -> list[str]:
    return [line for line in out.splitlines() if line.split()[:1] == [label]]


def test_status_reports_what_the_node_runs_with_not_the_shell(node_home: Path) -> None:
    # This shell names another target and sets no P2P_BIND, P2P_USERNAME or P2P_UDP_PORT.
    out = ok(p2pctl(node_home, "status", P2P_BROADCAST="127.0.0.1", P2P_USERNAME=None))
    assert lines_of(out, "node")[0].split() == ["node", "alice-node", f"({node_home})"]
    assert lines_of(out, "address") == ["address   127.0.0.1  tcp 45678  udp 40404"]
    assert lines_of(out, "announce") == ["announce  to 127.255.255.255 every 2 s"]
    assert lines_of(out, "folders") == [f"folders   share {SHARE}, downloads {DOWNLOADS}"]
    assert lines_of(out, "key") == ["key       network key set"]
    assert lines_of(out, "version") == [f"version   {VERSION}"]
    assert "0.0.0.0" not in out and "47474" not in out
    assert lines_of(out, "settings") == []  # no fallback: the node's own were found
    [note] = lines_of(out, "note")
    for variable in ("P2P_BIND", "P2P_BROADCAST", "P2P_USERNAME", "P2P_UDP_PORT"):
        assert variable in note


def test_status_json_has_the_recorded_settings(node_home: Path) -> None:
    info = as_json(p2pctl(node_home, "status", "--json", P2P_BROADCAST="127.0.0.1"))
    assert info["settings_from"] == "node"
    assert (info["username"], info["bind"]) == ("alice-node", "127.0.0.1")
    assert (info["tcp_port"], info["udp_port"]) == (45678, 40404)
    assert (info["broadcast"], info["broadcast_from"]) == (["127.255.255.255"], "P2P_BROADCAST")
    assert info["announce_interval"] == 2.0
    assert (info["share_dir"], info["download_dir"]) == (SHARE, DOWNLOADS)
    assert info["network_key"] is True
    assert info["versions"] == dict.fromkeys(ROLES, VERSION)
    assert info["recorded"] == running_with("127.255.255.255", "P2P_BROADCAST")
    assert info["shell_differs"] == ["P2P_BIND", "P2P_BROADCAST", "P2P_USERNAME", "P2P_UDP_PORT"]


def test_a_shell_that_agrees_gets_no_note(node_home: Path) -> None:
    out = ok(
        p2pctl(
            node_home,
            "status",
            P2P_BIND="127.0.0.1",
            P2P_BROADCAST="127.255.255.255",
            P2P_USERNAME="alice-node",
            P2P_UDP_PORT="40404",
        )
    )
    assert lines_of(out, "note") == [] and lines_of(out, "settings") == []


def test_before_any_role_recorded_status_shows_the_nodes_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seed(home)  # roles beat, none recorded its settings
    (home / "p2p.toml").write_text(
        'P2P_USERNAME = "carol"\nP2P_UDP_PORT = "40404"\nP2P_BROADCAST = "127.255.255.255"\n'
    )
    out = ok(p2pctl(home, "status", P2P_USERNAME=None))
    assert lines_of(out, "node")[0].split() == ["node", "carol", f"({home})"]
    assert "udp 40404" in lines_of(out, "address")[0]
    assert lines_of(out, "settings") == [
        "settings  the node's p2p.toml: no role of this node has recorded what it runs with"
    ]
    info = as_json(p2pctl(home, "status", "--json", P2P_USERNAME="dave"))
    assert (info["settings_from"], info["username"]) == ("record", "carol")
    assert info["shell_differs"] == ["P2P_USERNAME"]


def test_one_variable_that_differs_is_said_in_the_singular(node_home: Path) -> None:
    out = ok(
        p2pctl(
            node_home,
            "status",
            P2P_BIND="127.0.0.1",
            P2P_BROADCAST="127.255.255.255",
            P2P_USERNAME="alice-node",
        )
    )
    assert lines_of(out, "note") == [
        "note      this shell's P2P_UDP_PORT differs; above is what the node runs with"
    ]


def test_interface_targets_and_a_half_done_upgrade_are_shown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seed(home)
    # A value in a row, never a destination; loopback anyway, and unlike the shell's.
    record(home, running_with("127.1.255.255", "interfaces", version="0.0.9"))
    out = ok(p2pctl(home, "status", P2P_BROADCAST="127.255.255.255"))
    assert lines_of(out, "announce") == [
        "announce  to 127.1.255.255 (every interface broadcast address) every 2 s"
    ]
    assert lines_of(out, "version") == [
        f"version   0.0.9 (server), {VERSION} (announcer, downloader, listener)"
    ]
    assert "P2P_BROADCAST" in lines_of(out, "note")[0]
    info = as_json(p2pctl(home, "status", "--json", P2P_BROADCAST="127.255.255.255"))
    assert (info["broadcast"], info["broadcast_from"]) == (["127.1.255.255"], "interfaces")


# ---------------------------------------------------------------- history


def test_history_names_sources_by_username(node_home: Path) -> None:
    out = ok(p2pctl(node_home, "history"))
    [movie] = [line for line in out.splitlines() if "holiday/movie.mkv" in line]
    assert movie.split()[-2:] == ["alice", "0"]  # peers, bad
    assert "127.0.0.2" not in out


def test_history_addresses_flag_shows_address_and_port(node_home: Path) -> None:
    out = ok(p2pctl(node_home, "history", "--addresses"))
    [movie] = [line for line in out.splitlines() if "holiday/movie.mkv" in line]
    assert movie.split()[-2:] == ["127.0.0.2:5001", "0"]
    assert "alice" not in out


def test_history_json_has_addresses_and_usernames(node_home: Path) -> None:
    done = [r for r in as_json(p2pctl(node_home, "history", "--json")) if r["status"] == "done"]
    assert [(r["peers"], r["peer_names"]) for r in done] == [(["127.0.0.2:5001"], ["alice"])]


def test_source_names_fall_back_to_the_address_and_name_a_user_once() -> None:
    row = DownloadRow(
        1, "x", 1, "done", None, 0.0, None, None, 0, 0, 0, None, "0" * 64,
        ["127.0.0.2:5001", "127.0.0.2:5002", "127.0.0.3:5001"],
        ["alice", "alice", ""], None, None,
    )  # fmt: skip
    assert source_names(row) == ["alice", "127.0.0.3:5001"]


def test_two_machines_under_one_name_are_told_apart_by_address() -> None:
    row = DownloadRow(
        1, "x", 1, "done", None, 0.0, None, None, 0, 0, 0, None, "0" * 64,
        ["127.0.0.2:5001", "127.0.0.4:5001", "127.0.0.2:5002"],
        ["bob", "bob", "bob"], None, None,
    )  # fmt: skip
    assert source_names(row) == ["bob (127.0.0.2)", "bob (127.0.0.4)"]


# ---------------------------------------------------------------- --version


def test_version_needs_no_node(tmp_path: Path) -> None:
    home = tmp_path / "nowhere"
    result = p2pctl(home, "--version", alive=False)
    assert ok(result) == f"p2pctl {VERSION}\n"
    assert not home.exists()  # asking the version opens no database
