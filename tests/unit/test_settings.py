"""Settings: defaults, environment over config file, refusal of bad values, chunk sizes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from p2pshare.services.protocol.netkey import derive_network_key
from p2pshare.services.settings import (
    DEFAULT_ANNOUNCE_INTERVAL,
    DEFAULT_UDP_PORT,
    SettingsError,
    chunk_size_for,
    load_settings,
)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
LOOPBACK_BROADCAST = "127.255.255.255"


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """A loopback-only environment for a node in `home`; never the real environment."""
    env = {"P2P_HOME": str(home), "P2P_BROADCAST": LOOPBACK_BROADCAST, "P2P_USERNAME": "tester"}
    env.update(extra)
    return env


# ---------------------------------------------------------------- defaults


def test_home_defaults_to_xdg_data_home(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    settings = load_settings(env={"XDG_DATA_HOME": str(xdg), "P2P_BROADCAST": LOOPBACK_BROADCAST})

    assert settings.home == xdg / "p2pshare"
    assert settings.share_dir == xdg / "p2pshare" / "shared"
    assert settings.download_dir == xdg / "p2pshare" / "downloads"
    assert settings.db_path == xdg / "p2pshare" / "p2p.db"
    assert settings.temp_dir == xdg / "p2pshare" / "temp"


def test_defaults_of_every_other_setting(tmp_path: Path) -> None:
    env = {"P2P_HOME": str(tmp_path)}  # no P2P_BROADCAST: means "every interface"
    settings = load_settings(env=env)

    assert settings.home == tmp_path
    assert settings.share_dir == tmp_path / "shared"
    assert settings.download_dir == tmp_path / "downloads"
    assert settings.bind == "0.0.0.0"
    assert settings.tcp_port == 0
    assert settings.udp_port == DEFAULT_UDP_PORT
    assert settings.broadcast is None
    assert settings.announce_interval == DEFAULT_ANNOUNCE_INTERVAL == 60
    assert settings.peer_ttl == 3 * 60
    assert settings.chunk_size is None
    assert settings.upload_limit == 0
    assert settings.network_key is None and not settings.keyed
    assert settings.config_file is None
    user, _, host = settings.username.partition("@")
    assert user and host == socket.gethostname()


def test_peer_ttl_is_three_intervals(tmp_path: Path) -> None:
    settings = load_settings(env=base_env(tmp_path, P2P_ANNOUNCE_INTERVAL="10"))
    assert settings.announce_interval == 10
    assert settings.peer_ttl == 30


def test_explicit_peer_ttl_wins_over_the_derived_one(tmp_path: Path) -> None:
    settings = load_settings(env=base_env(tmp_path, P2P_ANNOUNCE_INTERVAL="10", P2P_PEER_TTL="7"))
    assert settings.peer_ttl == 7


def test_broadcast_list_parses_to_a_tuple(tmp_path: Path) -> None:
    settings = load_settings(env=base_env(tmp_path, P2P_BROADCAST="127.255.255.255, 127.0.0.1"))
    assert settings.broadcast == ("127.255.255.255", "127.0.0.1")


def test_relative_share_dir_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env=base_env(tmp_path / "home", P2P_SHARE_DIR="pub"))
    assert settings.share_dir == tmp_path / "pub"


# ---------------------------------------------------------------- config file


def test_environment_beats_config_file_in_home(tmp_path: Path) -> None:
    config = tmp_path / "p2p.toml"
    config.write_text(
        'P2P_TCP_PORT = 5000\nP2P_USERNAME = "from-file"\nP2P_ANNOUNCE_INTERVAL = 5\n'
        'P2P_NETWORK_KEY = "file-secret-0123456789"\n'
    )
    config.chmod(0o600)  # it holds the key: others may not read it
    env = {"P2P_HOME": str(tmp_path), "P2P_BROADCAST": LOOPBACK_BROADCAST, "P2P_TCP_PORT": "6000"}
    settings = load_settings(env=env)

    assert settings.config_file == config
    assert settings.tcp_port == 6000  # environment
    assert settings.username == "from-file"  # file
    assert settings.announce_interval == 5
    assert settings.peer_ttl == 15
    assert settings.network_secret == "file-secret-0123456789"


def test_empty_environment_value_falls_back_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "p2p.toml").write_text("P2P_UDP_PORT = 40001\n")
    settings = load_settings(env=base_env(tmp_path, P2P_UDP_PORT=""))
    assert settings.udp_port == 40001


def test_p2p_config_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    share = tmp_path / "pub"
    config.write_text(
        f'P2P_SHARE_DIR = "{share}"\nP2P_BROADCAST = ["127.255.255.255", "127.0.0.1"]\n'
        f'P2P_HOME = "{tmp_path / "home-from-file"}"\n'
    )
    env = {"P2P_CONFIG": str(config), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    settings = load_settings(env=env)

    assert settings.config_file == config
    assert settings.share_dir == share
    assert settings.broadcast == ("127.255.255.255", "127.0.0.1")
    assert settings.home == tmp_path / "home-from-file"


def test_p2p_config_that_is_missing_is_refused(tmp_path: Path) -> None:
    env = base_env(tmp_path, P2P_CONFIG=str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="P2P_CONFIG"):
        load_settings(env=env)


def test_unknown_key_in_config_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p2p.toml").write_text("P2P_TCP_PORT = 5000\nP2P_TPC_PORT = 5001\n")
    with pytest.raises(SettingsError, match="P2P_TPC_PORT"):
        load_settings(env=base_env(tmp_path))


def test_config_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p2p.toml").write_text("P2P_TCP_PORT = = 5\n")
    with pytest.raises(SettingsError, match="p2p.toml"):
        load_settings(env=base_env(tmp_path))


def test_bad_value_in_config_file_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "p2p.toml").write_text("P2P_TCP_PORT = 70000\n")
    with pytest.raises(SettingsError, match="P2P_TCP_PORT"):
        load_settings(env=base_env(tmp_path))


# ---------------------------------------------------------------- bad values

BAD_VALUES = [
    ("P2P_TCP_PORT", "70000"),
    ("P2P_TCP_PORT", "-1"),
    ("P2P_TCP_PORT", "eighty"),
    ("P2P_UDP_PORT", "0"),
    ("P2P_UDP_PORT", "65536"),
    ("P2P_CHUNK_SIZE", "0"),
    ("P2P_CHUNK_SIZE", "16383"),
    ("P2P_CHUNK_SIZE", str(64 * MIB + 1)),
    ("P2P_CHUNK_SIZE", "1.5"),
    ("P2P_CHUNK_SIZE", "16400"),  # in range, but not a multiple of 64
    ("P2P_CHUNK_SIZE", str(MIB + 32)),
    ("P2P_ANNOUNCE_INTERVAL", "-1"),
    ("P2P_ANNOUNCE_INTERVAL", "0"),
    ("P2P_ANNOUNCE_INTERVAL", "nan"),
    ("P2P_ANNOUNCE_INTERVAL", "inf"),
    ("P2P_ANNOUNCE_INTERVAL", "soon"),
    ("P2P_PEER_TTL", "0"),
    ("P2P_UPLOAD_LIMIT", "-5"),
    ("P2P_BROADCAST", "no-such-host.invalid"),
    ("P2P_BROADCAST", "127.255.255.255,no-such-host.invalid"),
    ("P2P_BROADCAST", " , "),
    ("P2P_BIND", "localhost"),
    ("P2P_BIND", "::1"),
    ("P2P_BIND", "300.1.1.1"),
    ("P2P_USERNAME", "line\nbreak"),
    ("P2P_USERNAME", "x" * 65),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_is_refused_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env=base_env(tmp_path, **{name: value}))
    message = str(info.value)
    assert name in message
    assert "\n" not in message


def test_share_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SettingsError, match="P2P_SHARE_DIR"):
        load_settings(env=base_env(tmp_path, P2P_SHARE_DIR=str(a_file)))


def test_good_edge_values_are_accepted(tmp_path: Path) -> None:
    settings = load_settings(
        env=base_env(
            tmp_path,
            P2P_TCP_PORT="65535",
            P2P_UDP_PORT="1",
            P2P_CHUNK_SIZE="16384",
            P2P_BIND=" 127.0.0.1 ",
            P2P_UPLOAD_LIMIT="0",
        )
    )
    assert (settings.tcp_port, settings.udp_port) == (65535, 1)
    assert settings.chunk_size == 16384
    assert settings.bind == "127.0.0.1"


# ---------------------------------------------------------------- chunk sizes


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, 256 * KIB),
        (1, 256 * KIB),
        (64 * MIB, 256 * KIB),
        (64 * MIB + 1, 512 * KIB),
        (GIB, 4 * MIB),
        (4 * GIB, 16 * MIB),
        (100 * GIB, 16 * MIB),
        (10_000 * GIB, 16 * MIB),
    ],
)
def test_chunk_size_for(size: int, expected: int) -> None:
    assert chunk_size_for(size) == expected


@pytest.mark.parametrize("size", [1, 10 * MIB, 500 * MIB, GIB, 7 * GIB + 3, 31 * GIB])
def test_chunk_size_keeps_at_most_256_chunks_below_the_cap(size: int) -> None:
    chunk = chunk_size_for(size)
    assert 256 * KIB <= chunk <= 16 * MIB
    assert chunk % 64 == 0  # a manifest entry is a SHA-256 state: whole 64-byte blocks
    assert chunk == 16 * MIB or -(-size // chunk) <= 256


@pytest.mark.parametrize("value", [16384 + 64, 100_032, 64 * MIB])
def test_chunk_size_multiple_of_64_is_accepted(tmp_path: Path, value: int) -> None:
    assert load_settings(env=base_env(tmp_path, P2P_CHUNK_SIZE=str(value))).chunk_size == value


def test_chunk_size_override_wins() -> None:
    assert chunk_size_for(100 * GIB, 16384) == 16384
    assert chunk_size_for(0, 65536) == 65536
    assert chunk_size_for(GIB, None) == 4 * MIB


# ---------------------------------------------------------------- history horizon


def test_history_days_defaults_to_thirty(tmp_path: Path) -> None:
    assert load_settings(env=base_env(tmp_path)).history_days == 30


def test_history_days_from_the_environment(tmp_path: Path) -> None:
    assert load_settings(env=base_env(tmp_path, P2P_HISTORY_DAYS="7")).history_days == 7


@pytest.mark.parametrize("raw", ["0", "-3", "1.5", "month", "36501"])
def test_bad_history_days_is_one_sentence_naming_it(tmp_path: Path, raw: str) -> None:
    with pytest.raises(SettingsError, match="P2P_HISTORY_DAYS") as info:
        load_settings(env=base_env(tmp_path, P2P_HISTORY_DAYS=raw))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- listener priority


def test_listener_nice_defaults_to_ten(tmp_path: Path) -> None:
    assert load_settings(env=base_env(tmp_path)).listener_nice == 10


def test_listener_nice_from_the_environment(tmp_path: Path) -> None:
    assert load_settings(env=base_env(tmp_path, P2P_LISTENER_NICE="0")).listener_nice == 0
    assert load_settings(env=base_env(tmp_path, P2P_LISTENER_NICE="19")).listener_nice == 19


@pytest.mark.parametrize("raw", ["-1", "20", "1.5", "low"])
def test_bad_listener_nice_is_one_sentence_naming_it(tmp_path: Path, raw: str) -> None:
    with pytest.raises(SettingsError, match="P2P_LISTENER_NICE") as info:
        load_settings(env=base_env(tmp_path, P2P_LISTENER_NICE=raw))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "key", ["secret", "short key 12345", "aaaaaaaaaaaaaaaaaaaaaaaa", "abababab01010101"]
)
def test_a_weak_network_key_is_refused_in_one_sentence(tmp_path: Path, key: str) -> None:
    with pytest.raises(SettingsError, match="P2P_NETWORK_KEY must be at least 16 characters"):
        load_settings({"P2P_HOME": str(tmp_path), "P2P_NETWORK_KEY": key})


def test_the_wire_key_is_derived_from_the_key_as_set(tmp_path: Path) -> None:
    settings = load_settings(
        {"P2P_HOME": str(tmp_path), "P2P_NETWORK_KEY": "a long enough key 123"}
    )
    assert settings.keyed and settings.network_secret == "a long enough key 123"
    assert settings.network_key == derive_network_key("a long enough key 123")
