"""A node's private files: made private at start, never indexed from a share, a keyed
config others may read refused; the share cookie; torrent symlinks refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2pshare.services import private
from p2pshare.services.server.scan import walk_tree
from p2pshare.services.settings import Settings, SettingsError, load_settings
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.web import token as webtoken


def settings_in(home: Path, **env: str) -> Settings:
    return load_settings({"P2P_HOME": str(home), **env})


def test_make_dirs_makes_an_older_home_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    home.chmod(0o755)
    (home / "p2p.db").write_bytes(b"")
    (home / "p2p.db").chmod(0o644)
    (home / "logs" / "server.log").write_text("x")
    (home / "logs" / "server.log").chmod(0o644)
    settings = settings_in(home)
    settings.make_dirs()
    for path in (home, home / "logs", home / "temp"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (home / "p2p.db", home / "logs" / "server.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(settings.share_dir.stat().st_mode) & 0o077 != 0o077  # left as made


def test_secrets_are_left_out_of_a_scan_by_link_or_by_name(tmp_path: Path) -> None:
    home = tmp_path / "share" / "home"
    settings = settings_in(home, P2P_SHARE_DIR=str(tmp_path / "share"))
    settings.make_dirs()
    (home / "web-token").write_text("a" * 32)
    (home / "logs" / "server.log").write_text("served x to y")
    share = settings.share_dir
    (share / "plain.txt").write_text("hello")
    (share / "token-link").symlink_to(home / "web-token")
    os.link(home / "logs" / "server.log", share / "log-copy")
    skipped: dict[str, str] = {}
    found = dict(private.without_secrets(walk_tree(share, exclude=()), settings, skipped))
    assert "plain.txt" in found
    assert not {"token-link", "log-copy", "home/web-token", "home/logs/server.log"} & set(found)
    assert set(skipped.values()) == {private.SECRET_REASON}


def test_a_keyed_config_others_may_read_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "p2p.toml"
    config.write_text('P2P_NETWORK_KEY = "0123456789abcdef0123456789abcdef"\n')
    for mode in (0o644, 0o640, 0o604):
        config.chmod(mode)
        with pytest.raises(SettingsError, match="other users may read it"):
            settings_in(tmp_path)
    config.chmod(0o600)
    assert settings_in(tmp_path).network_key is not None
    config.write_text('P2P_USERNAME = "anyone may read this"\n')
    config.chmod(0o644)
    assert settings_in(tmp_path).username == "anyone may read this"


def test_the_cookie_is_per_port_expires_and_is_not_the_token() -> None:
    token = "t" * 32
    value = webtoken.cookie_value(token, 47480, now=1000.0)
    assert token not in value
    assert webtoken.cookie_valid(value, token, 47480, now=1001.0)
    assert not webtoken.cookie_valid(value, token, 47481, now=1001.0)
    assert not webtoken.cookie_valid(value, "u" * 32, 47480, now=1001.0)
    assert not webtoken.cookie_valid(value, token, 47480, now=1000.0 + webtoken.COOKIE_SECONDS)
    for bad in (None, "", token, "12.34", "x.y", f"{10**12}.{'0' * 32}"):
        assert not webtoken.cookie_valid(bad, token, 47480, now=1001.0)
    assert webtoken.cookie_name(47480) != webtoken.cookie_name(47481)


def _torrent(files: list[dict[str, mi.Bencodable]]) -> bytes:
    info: dict[str, mi.Bencodable] = {
        "name": "t",
        "piece length": 16384,
        "pieces": b"\0" * 20,
        "files": list(files),
    }
    return mi.bencode({"info": info})


@pytest.mark.parametrize(
    "entry",
    [
        {"path": ["link"], "length": 0, "attr": "l", "symlink path": ["a"]},
        {"path": ["link"], "length": 0, "attr": "l"},
        {"path": ["link"], "length": 0, "symlink path": ["..", "x"]},
    ],
)
def test_a_torrent_symlink_is_refused(entry: dict[str, mi.Bencodable]) -> None:
    with pytest.raises(mi.MetainfoError, match="'link' is a symlink"):
        mi.parse_torrent(_torrent([{"path": ["a"], "length": 1}, entry]))


def test_a_v2_or_single_file_symlink_is_refused_and_pad_files_still_pass() -> None:
    tree = {"a": {"": {"length": 1, "pieces root": b"\0" * 32}}, "l": {"": {"attr": "l"}}}
    v2 = mi.bencode({"info": {"name": "t", "piece length": 16384, "file tree": tree}})
    with pytest.raises(mi.MetainfoError, match="symlink"):
        mi.parse_torrent(v2)
    single = {"name": "t", "piece length": 16384, "pieces": b"\0" * 20, "length": 0, "attr": "l"}
    with pytest.raises(mi.MetainfoError, match="symlink"):
        mi.parse_torrent(mi.bencode({"info": single}))
    padded = mi.parse_torrent(
        _torrent(
            [
                {"path": ["a"], "length": 1},
                {"path": [".pad", "16383"], "length": 16383, "attr": "p"},
                {"path": ["b"], "length": 1},
            ]
        )
    )
    assert padded.padded and [p for p, _ in padded.files] == ["t/a", "t/b"]
