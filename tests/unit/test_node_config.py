"""The node's record of its settings (services/node_config.py): what a start keeps, what
it changes and says, and what a later command takes from it."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from p2pshare.services import node_config
from p2pshare.services.settings import SettingsError

BASE = {"PATH": "/usr/bin", "P2P_BROADCAST": "127.255.255.255"}


def shell(home: Path, **settings: str) -> dict[str, str]:
    return {**BASE, "P2P_HOME": str(home), **settings}


def start(env: dict[str, str]) -> node_config.StartPlan:
    plan = node_config.plan_start(env)
    plan.save()
    return plan


def test_a_restart_from_a_shell_without_the_settings_keeps_them(tmp_path: Path) -> None:
    first = start(
        shell(
            tmp_path,
            P2P_USERNAME="carol",
            P2P_NETWORK_KEY="s3cret-network-key",
            P2P_UPLOAD_LIMIT="9",
        )
    )
    assert first.first and first.changes == []
    record = tmp_path / "p2p.toml"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    again = start({"PATH": "/usr/bin", "P2P_HOME": str(tmp_path)})
    assert again.changes == [] and not again.first
    s = again.settings
    assert (s.username, s.network_secret, s.upload_limit) == ("carol", "s3cret-network-key", 9)
    assert s.broadcast == ("127.255.255.255",)  # never widened to every interface
    assert s.encrypt  # a keyed node stays encrypted


def test_a_differing_shell_variable_applies_and_is_named_without_the_secret(
    tmp_path: Path,
) -> None:
    start(shell(tmp_path, P2P_USERNAME="carol", P2P_NETWORK_KEY="s3cret-network-key"))
    plan = start(shell(tmp_path, P2P_USERNAME="dave", P2P_NETWORK_KEY="other-network-key"))
    words = [c.words() for c in plan.changes]
    assert words == ["P2P_USERNAME carol -> dave", "P2P_NETWORK_KEY changed"]
    assert plan.settings.username == "dave" and plan.settings.network_secret == "other-network-key"
    assert "other-network-key" not in " ".join(words)


def test_editing_keeps_a_persons_comments_and_lines(tmp_path: Path) -> None:
    record = tmp_path / "p2p.toml"
    record.write_text('# mine\nP2P_USERNAME = "carol"  # the laptop\nP2P_UPLOAD_LIMIT = 5\n')
    start(shell(tmp_path, P2P_USERNAME="dave"))
    lines = record.read_text().splitlines()
    assert lines[0] == "# mine" and lines[2] == "P2P_UPLOAD_LIMIT = 5"
    assert lines[1] == 'P2P_USERNAME = "dave"'
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_a_relative_folder_is_recorded_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    plan = start(shell(tmp_path / "home", P2P_DOWNLOAD_DIR="dl"))
    assert plan.new_values["P2P_DOWNLOAD_DIR"] == str(tmp_path / "dl")


def test_a_bad_value_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="P2P_UDP_PORT"):
        node_config.plan_start(shell(tmp_path, P2P_UDP_PORT="seventy"))
    assert not (tmp_path / "p2p.toml").exists()


def test_later_commands_read_the_record_and_name_what_the_shell_says_otherwise(
    tmp_path: Path,
) -> None:
    start(shell(tmp_path, P2P_DOWNLOAD_DIR="/srv/dl", P2P_USERNAME="carol"))
    settings, differs = node_config.node_settings(
        shell(tmp_path, P2P_DOWNLOAD_DIR="/tmp/other", P2P_USERNAME="carol")
    )
    assert settings.download_dir == Path("/srv/dl")
    assert differs == ["P2P_DOWNLOAD_DIR"]


def test_the_programs_get_no_setting_from_the_shell(tmp_path: Path) -> None:
    env = node_config.without_settings(
        shell(
            tmp_path, P2P_NETWORK_KEY="a network key 0123456789", P2P_CONFIG="/x", P2P_PYTHON="/py"
        )
    )
    assert env == {"PATH": "/usr/bin", "P2P_HOME": str(tmp_path), "P2P_PYTHON": "/py"}


LAST_RUN = {
    "announcer": {
        "username": "carol",
        "broadcast": "127.255.255.255",
        "broadcast_from": "P2P_BROADCAST",
        "network_key": "yes",
        "encrypt": "yes",
    },
    "listener": {"udp_port": "40404", "network_key": "yes"},
    "server": {"bind": "127.0.0.1", "upload_limit": "1000", "chunk_size": "auto"},
    "web": {"bind": "127.0.0.1", "port": "47481", "share": "no"},
}


def test_a_node_without_a_record_restarts_as_it_last_ran_but_never_open(
    tmp_path: Path,
) -> None:
    """A node started before p2pctl kept a record: what its roles recorded carries over,
    and the one thing they never record, the key, must be given."""
    plain = {"PATH": "/usr/bin", "P2P_HOME": str(tmp_path)}
    with pytest.raises(SettingsError, match="last ran with a network key"):
        node_config.plan_start(plain, LAST_RUN)
    assert not (tmp_path / "p2p.toml").exists()
    plan = node_config.plan_start(
        {**plain, "P2P_NETWORK_KEY": "a network key 0123456789"}, LAST_RUN
    )
    plan.save()
    s = plan.settings
    assert (s.username, s.bind, s.udp_port, s.upload_limit) == ("carol", "127.0.0.1", 40404, 1000)
    assert (s.broadcast, s.web_port, s.network_secret) == (
        ("127.255.255.255",),
        47481,
        "a network key 0123456789",
    )
    assert plan.inherited
    # Every value is in the record, since the programs read nothing else.
    again = node_config.plan_start(plain)
    assert replace(again.settings, config_file=None) == replace(s, config_file=None)
    assert again.changes == []


def test_last_run_is_read_from_the_nodes_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2pshare.cli import supervise
    from p2pshare.db.engine import Database
    from p2pshare.db.node import record_role_settings

    database = Database.open(tmp_path / "p2p.db")
    try:
        with database.write() as s:
            for role, values in LAST_RUN.items():
                record_role_settings(s, role, values, now=1.0)
    finally:
        database.close()
    monkeypatch.setenv("P2P_HOME", str(tmp_path))
    assert supervise.last_run() == LAST_RUN
    (tmp_path / "p2p.toml").write_text("")
    assert supervise.last_run() == {}  # a record wins: it is what the node runs with
