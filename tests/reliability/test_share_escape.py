"""Case 9: nothing outside the share folder is reachable by name, and no name from the
network leads outside the download folder.

What is right for each kind of entry in a share folder:
- a symlink leading outside (to a file or to a folder): not offered;
- a symlink to a file inside the share: offered under the link's name;
- a hardlink to a file that also has a name outside: offered. A hardlink IS a
  regular file inside the folder, its bytes put there by whoever made the link;
  the node cannot tell it from a copy and must not try. What must stay
  unreachable is every *name* outside the folder, and content reachable only
  through such names.

Requests name files by SHA-256 and chunk size, never by path: forged keys of
files outside the share (the targets of the refused symlinks) get a refusal,
and `..` or absolute paths where a hash belongs are malformed requests (one
error reply, the connection closed, the server carries on). A shared file (or
its folder) swapped for a symlink leading out after it was indexed is not served
either, even when the outside file has the same size and mtime. A lying catalog
with `..` or absolute names is refused whole; a download folder whose
sub-folder is a symlink leading out, or whose file name is taken by such a
symlink, never gets a byte (or a folder) written outside, and the download
fails with that reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakepeer import FakeFile, FakePeer
from node import LOOPBACK, Node, wait_until
from nodetools import (
    forbidden_log_text,
    queue,
    raw_exchange,
    raw_frame,
    seed,
    split_frames,
    tree,
    wait_ended,
    wait_known,
)

from p2pshare.services import protocol
from p2pshare.services.downloader.publish import PublishError, safe_destination
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.net.client import PeerClient
from p2pshare.services.protocol import FileKey
from p2pshare.services.settings import chunk_size_for

pytestmark = pytest.mark.reliability

CHUNK = 16 * 1024
# Shared, and the names the seeder's catalog must hold: nothing else.
OFFERED = {"plain.txt", "hard.bin", "inner-link.txt"}


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside every node's home: what must stay unreachable."""
    path = Path(tempfile.mkdtemp(prefix="p2pout"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def key_of(data: bytes, chunk_size: int) -> FileKey:
    """The true key of `data` indexed with `chunk_size` chunks (SHA-256, size, manifest root)."""
    root = protocol.manifest_root(manifest_entries(data, chunk_size))
    return FileKey(hashlib.sha256(data).hexdigest(), chunk_size, root)


def keys_for(data: bytes) -> list[FileKey]:
    """Every key a forger might try: the seeder's chunk size and the default one."""
    return [key_of(data, CHUNK), key_of(data, chunk_size_for(len(data)))]


def catalog_of(port: int) -> dict[str, str]:
    with PeerClient(LOOPBACK, port, key=None) as client:
        _, entries = client.catalog()
    return {e.name: e.file.sha256 for e in entries}


def fetch_chunk(client: PeerClient, key: FileKey, index: int, size: int) -> bytes:
    req = protocol.ChunkRequest(key, index, 0, 0)
    client.send(req)
    header = client.read_chunk_header(req, protocol.chunk_length(size, key.chunk_size, index))
    buf = bytearray(header.length)
    client.read_exact_into(memoryview(buf))
    return bytes(buf)


def test_links_out_of_the_share_are_not_offered_nor_served(
    make_node: Callable[..., Node], outside: Path
) -> None:
    secret = os.urandom(2 * CHUNK + 3)
    inner = os.urandom(CHUNK + 1)
    hard = os.urandom(CHUNK * 2)
    (outside / "secret.txt").write_bytes(secret)
    (outside / "folder").mkdir()
    (outside / "folder" / "inner.txt").write_bytes(inner)
    (outside / "hard.bin").write_bytes(hard)

    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK)
    share = seeder.share
    plain = seed(seeder, "plain.txt", b"plain text\n" * 100)
    (share / "link-file.txt").symlink_to(outside / "secret.txt")
    (share / "link-dir").symlink_to(outside / "folder", target_is_directory=True)
    (share / "inner-link.txt").symlink_to(plain)
    os.link(outside / "hard.bin", share / "hard.bin")
    seeder.start()
    wait_until(
        lambda: {r[0] for r in seeder.sql("SELECT name FROM local_files")} == OFFERED,
        60,
        what="the seeder to index exactly the files inside its share",
    )
    port = seeder.tcp_port()
    assert port
    catalog = catalog_of(port)
    assert set(catalog) == OFFERED
    assert catalog["hard.bin"] == hashlib.sha256(hard).hexdigest()  # documented: shared
    log = seeder.log("server")
    assert f"skipped {share / 'link-file.txt'}: symlink leads outside" in log
    assert f"skipped {share / 'link-dir'}: symlink leads outside" in log

    # Forged keys of the files behind the refused links: refused, whatever the request.
    with PeerClient(LOOPBACK, port, key=None) as client:
        for data in (secret, inner):
            for key in keys_for(data):
                count = protocol.chunk_count(len(data), key.chunk_size)
                with pytest.raises(protocol.RemoteRefused):
                    client.have(key, count)
                client.send(protocol.ChunkRequest(key, 0, 0, 0))
                with pytest.raises(protocol.RemoteRefused):
                    client.read_chunk_header(
                        protocol.ChunkRequest(key, 0, 0, 0), min(len(data), key.chunk_size)
                    )
                assert client.manifests({key: len(data)}).good == {}
        # The hardlinked file is a file of the share: served like any other.
        hard_key = key_of(hard, CHUNK)
        assert fetch_chunk(client, hard_key, 1, len(hard)) == hard[CHUNK:]

    # Paths where a hash belongs: a malformed request, one error, the connection closed.
    sha = hashlib.sha256(secret).hexdigest()
    lies = {
        "get ../": {"op": "get", "sha": "../../outside/secret.txt", "cs": CHUNK, "i": 0},
        "get abs": {"op": "get", "sha": str(outside / "secret.txt"), "cs": CHUNK, "i": 0},
        "get name": {
            "op": "get",
            "name": "../secret.txt",
            "sha": sha,
            "cs": CHUNK,
            "i": 0,
            "off": 0,
            "len": 0,
        },
        "have abs": {"op": "have", "sha": "/etc/passwd", "cs": CHUNK},
        "manifest ../": {"op": "manifest", "files": [["../link-file.txt", CHUNK]]},
        "manifest abs": {"op": "manifest", "files": [[str(outside / "secret.txt"), CHUNK]]},
    }
    for label, raw in lies.items():
        reply = split_frames(raw_exchange(port, raw_frame(raw)))
        assert [r.get("op", r.get("ok")) for r in reply] == ["welcome", False], (label, reply)
    # "get name" is well-formed apart from its extra field: the name is ignored and
    # the key, that of a file outside, refused like the forged keys above.
    # The server carries on, and has served nothing of what lies outside.
    assert set(catalog_of(port)) == OFFERED
    served = {r[0] for r in seeder.sql("SELECT DISTINCT sha256 FROM uploads")}
    assert served <= {catalog["hard.bin"]}, served
    assert forbidden_log_text(seeder) == []


def test_a_file_swapped_for_a_link_out_is_not_served(
    make_node: Callable[..., Node], outside: Path
) -> None:
    # Whoever can write into the share makes a file the size of an outside file,
    # gives it that file's mtime (utime on a file of one's own), lets it be indexed,
    # then replaces it (or its folder) by a symlink to the outside file.
    secret = os.urandom(CHUNK)
    mtime_ns = 1_600_000_000_000_000_000
    (outside / "secret.txt").write_bytes(secret)
    os.utime(outside / "secret.txt", ns=(mtime_ns, mtime_ns))
    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK)
    # One decoy per swap, each its own content, so each request has one source.
    decoys = {"file": (b"f" * CHUNK, "secret.txt"), "folder": (b"d" * CHUNK, "docs/secret.txt")}
    for data, name in decoys.values():
        path = seed(seeder, name, data)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    seeder.start()
    wait_until(
        lambda: seeder.scalar("SELECT count(*) FROM local_files") == 2, 60, what="the decoys"
    )
    port = seeder.tcp_port()
    assert port

    leaked: dict[str, bytes] = {}
    with PeerClient(LOOPBACK, port, key=None) as client:
        for swap, (decoy, _) in decoys.items():
            key = key_of(decoy, CHUNK)
            # Serve the decoy once (the server remembers where it lives for a second)...
            assert fetch_chunk(client, key, 0, CHUNK) == decoy
            # ...then swap the name for a link leading outside, and ask again at once.
            if swap == "file":
                (seeder.share / "secret.txt").unlink()
                (seeder.share / "secret.txt").symlink_to(outside / "secret.txt")
            else:
                shutil.rmtree(seeder.share / "docs")
                (seeder.share / "docs").symlink_to(outside, target_is_directory=True)
            try:
                leaked[swap] = fetch_chunk(client, key, 0, CHUNK)
            except protocol.RemoteRefused:
                leaked[swap] = b""  # refused: what should happen
    print({swap: "SECRET" if data == secret else data[:8] for swap, data in leaked.items()})
    assert secret not in leaked.values(), "bytes of a file outside the share were served"


def test_lying_catalog_names_are_refused_and_taken_names_never_written_through(
    make_node: Callable[..., Node], udp_port: int, outside: Path
) -> None:
    leech = make_node("leech")
    downloads = leech.home / "downloads"
    downloads.mkdir()
    # A name in the user's download folder taken by a dangling link leading out.
    (downloads / "taken.bin").symlink_to(outside / "planted.bin")
    leech.start()

    good = FakeFile("good.bin", os.urandom(CHUNK), CHUNK)
    lying_names = [
        "../escape.bin",
        "../../escape.bin",
        "a/../../escape.bin",
        str(outside / "abs.bin"),
        "..",
        "C:/escape.bin",
        "sub/./escape.bin",
        "x\\..\\..\\escape.bin",
    ]
    extra = [
        [name, good.key.sha256, len(good.data), CHUNK, good.key.root, None] for name in lying_names
    ]
    liar = FakePeer(files=[good], udp_port=udp_port, username="liar", extra_catalog=extra)
    taken = FakeFile("taken.bin", os.urandom(CHUNK), CHUNK)
    honest = FakePeer(files=[taken], udp_port=udp_port, username="honest")
    try:
        liar.start()
        honest.start()
        wait_known(leech, "taken.bin")
        wait_until(
            lambda: "cannot fetch the catalog" in leech.log("listener"),
            60,
            what="the lying catalog to be refused",
        )
        # The lying catalog is refused whole: not even its honest entry is taken.
        assert (
            leech.sql(
                "SELECT h.name FROM holdings h JOIN peers p ON p.id = h.peer_id "
                "WHERE p.username = 'liar'"
            )
            == []
        )
        assert "MalformedMessage: file name" in leech.log("listener")
        d = wait_ended(leech, queue(leech, "taken.bin"), timeout=60)
    finally:
        liar.close()
        honest.close()

    # A name taken by a link is never written through: the next free name is used.
    assert d["status"] == "done" and d["saved_as"] == "taken (1).bin", d
    assert (downloads / "taken (1).bin").read_bytes() == taken.data
    assert (downloads / "taken.bin").is_symlink()
    assert tree(outside) == {}, "something was written outside the download folder"
    assert not (outside.parent / "escape.bin").exists()
    assert tree(leech.home / "temp") == {}


def test_a_download_through_a_folder_link_out_fails_with_a_reason(
    make_node: Callable[..., Node], udp_port: int, outside: Path
) -> None:
    leech = make_node("leech")
    downloads = leech.home / "downloads"
    downloads.mkdir()
    # The user's own download folder has a sub-folder that is a link leading out.
    (downloads / "linked").symlink_to(outside, target_is_directory=True)
    leech.start()
    files = [
        FakeFile("linked/x.bin", os.urandom(CHUNK), CHUNK),
        FakeFile("linked/deeper/y.bin", os.urandom(CHUNK), CHUNK),
    ]
    peer = FakePeer(files=files, udp_port=udp_port, username="links")
    try:
        peer.start()
        for f in files:
            wait_known(leech, f.name)
        ended = {f.name: wait_ended(leech, queue(leech, f.name), timeout=60) for f in files}
    finally:
        peer.close()

    made = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*"))
    assert made == [], f"created outside the download folder: {made}"
    assert tree(leech.home / "temp") == {}
    for name, d in ended.items():
        print(f"{name}: {d['status']}: {d['reason']}")
        assert d["status"] == "failed", d
        assert "outside the download folder" in (d["reason"] or ""), d
        # The refusal is an expected outcome: a plain reason, no traceback.
        assert "internal error" not in d["reason"], d
    assert "Traceback" not in leech.log("downloader")


def test_refusing_a_name_through_a_folder_link_creates_nothing_outside(
    tmp_path: Path, outside: Path
) -> None:
    # The function the downloader publishes through, called as it calls it.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "linked").symlink_to(outside, target_is_directory=True)

    with pytest.raises(PublishError, match="outside the download folder"):
        safe_destination(downloads, "linked/deeper/y.bin")

    made = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*"))
    assert made == [], f"created outside the download folder: {made}"
