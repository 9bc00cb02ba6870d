"""Issue 37 items 6 and 7: what a local user, a web service on another port and a
.torrent can get at.

Real nodes under supervisord: the node's home and what it keeps there are private to
its user; a config file holding the network key that others can read stops the node
from starting, in one sentence; the node's secrets are not shared when its home lies
inside the share, through a symlink or a hard link either; the share's cookie is named
for its port and does not carry the token (a browser sends it to every port of the
host); a .torrent holding a symlink is refused in one line.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from node import Node, seed, wait_until

from p2pshare.services.torrent.metainfo import bencode

pytestmark = pytest.mark.reliability

TIMEOUT = 60.0
# What the node creates in its home once its programs run.
PRIVATE_FILES = ("p2p.db", "p2p.db-wal", "p2p.db-shm", "web-token", "identity/identity.pem")
PRIVATE_FOLDERS = (".", "logs", "temp", "identity")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def open_to_others(home: Path) -> list[str]:
    """The home's folders and files that group or others may use, with their modes."""
    paths = [home / p for p in (*PRIVATE_FOLDERS, *PRIVATE_FILES)]
    paths += sorted((home / "logs").iterdir())
    return [f"{p.relative_to(home)} {mode(p):04o}" for p in paths if mode(p) & 0o077]


def home_in_share(make_node: Callable[..., Node], tmp_path: Path) -> tuple[Node, Path]:
    """A node whose home lies inside its share, as a user might set it, running under
    supervisord, its database, key and token made."""
    share = tmp_path / "everything"
    home = share / "node-home"
    node = make_node("private", home=home, P2P_SHARE_DIR=share)
    # A home as an older version (or a umask of 022) left it: open to everyone.
    for folder in (home, home / "logs"):
        folder.chmod(0o755)
    node.start_supervised()
    wait_until(
        lambda: all((home / p).exists() for p in PRIVATE_FILES),
        TIMEOUT,
        what="the node's database, key and token",
    )
    return node, share


def test_the_home_and_what_it_holds_are_private(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node, _ = home_in_share(make_node, tmp_path)
    assert open_to_others(node.home) == []


def test_the_node_secrets_are_never_shared(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node, share = home_in_share(make_node, tmp_path)
    home = node.home
    # The node's secrets, reachable from the share: a symlink to each, a hard link to the
    # key; then a plain file, to know the scan went past them.
    links = {
        "key.pem": home / "identity" / "identity.pem",
        "token.txt": home / "web-token",
        "settings.toml": home / "p2p.toml",
    }
    (home / "p2p.toml").write_text(f'P2P_USERNAME = "{node.username}"\n')
    for name, target in links.items():
        (share / name).symlink_to(target)
    os.link(home / "identity" / "identity.pem", share / "key-copy.pem")
    seed(node, "decoy.txt", b"shared on purpose\n", folder=share)
    secret_names = {*links, "key-copy.pem"}

    def offered() -> set[str]:
        return {row[0] for row in node.sql("SELECT name FROM local_files")}

    # Each secret is either skipped (and said so) or, on a node that shares it, indexed.
    def looked_at_all() -> bool:
        said = node.log("server").count("this node's own private file")
        return "decoy.txt" in offered() and said + len(secret_names & offered()) >= 4

    wait_until(looked_at_all, TIMEOUT, what="the share to be indexed")
    assert not (secret_names & offered()), offered()
    assert not any(name.startswith("node-home/") for name in offered()), offered()


def test_a_keyed_config_that_others_may_read_stops_the_node(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("keyed")
    config = node.home / "p2p.toml"
    config.write_text(f'P2P_NETWORK_KEY = "{secrets.token_urlsafe(32)}"\n')
    config.chmod(0o644)
    try:
        started = node.p2pctl("start", timeout=120)
    finally:
        node.p2pctl("stop", timeout=120)  # should a node that shares its key have started
    lines = started.stderr.strip().splitlines()
    assert started.returncode != 0, started.stdout
    assert len(lines) == 1 and "Traceback" not in started.stderr, started.stderr
    assert "other users may read it" in lines[0] and "chmod 600" in lines[0], lines
    assert not (node.home / "supervisord.pid").exists()

    # A role started by hand says the same, once, and exits.
    node.start(("server",), wait=False)
    refused = node.procs.pop("server")  # exits by itself: not the fixture's to stop
    wait_until(lambda: refused.poll() is not None, TIMEOUT, what="the server to exit")
    assert refused.returncode == 2
    assert node.log("server").count("other users may read it") == 1

    config.chmod(0o600)
    node.start(("server",))  # the same file, private: the node runs


def test_the_share_cookie_is_named_for_its_port_and_holds_no_token(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("web", P2P_WEB_SHARE="1")
    seed(node, "hello.txt", b"hello\n")
    node.start_supervised()
    port = int(
        wait_until(
            lambda: node.scalar("SELECT value FROM role_settings WHERE role='web' AND name='port'"),
            TIMEOUT,
            what="the web port",
        )
    )
    token = wait_until(lambda: (node.home / "web-token").read_text().strip(), TIMEOUT)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        first = client.get("/share/", params={"token": token})
    assert first.status_code == 200
    cookie = first.headers["set-cookie"]
    # What a browser also sends every other port of this host: no token in it, named
    # for this port so another node's page on the same host keeps its own.
    assert token not in cookie
    name, _, rest = cookie.partition("=")
    assert name == f"p2p_share_{port}", cookie
    value = rest.split(";")[0]
    with httpx.Client(base_url=base, timeout=30, cookies={name: value}) as client:
        assert client.get("/share/").status_code == 200  # it opens this share
    with httpx.Client(base_url=base, timeout=30, cookies={name: token}) as client:
        assert client.get("/share/").status_code == 403  # a cookie is not the token


def test_a_torrent_holding_a_symlink_is_refused(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node("torrent")
    node.start_supervised()
    # A BEP 47 symlink beside a file: refused before anything is queued.
    data = b"a file beside the link\n"
    info = {
        "name": "evil",
        "piece length": 16384,
        "pieces": hashlib.sha1(data).digest(),
        "files": [
            {"path": ["a.txt"], "length": len(data)},
            {"path": ["link"], "length": 0, "attr": "l", "symlink path": ["..", "p2p.db"]},
        ],
    }
    torrent = tmp_path / "evil.torrent"
    torrent.write_bytes(bencode({"info": info}))
    done = node.p2pctl("download", str(torrent), "--no-wait")
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "symlink" in lines[0] and "Traceback" not in done.stderr, lines
    assert node.scalar("SELECT count(*) FROM downloads") == 0
