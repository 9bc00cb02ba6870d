"""Issue 37, item 6: a local user with write access to the share cannot make the node index
or serve a file outside it by swapping a folder for a symlink while the scanner is in it.

The scanner lists a folder, then looks at each entry it listed (and hashes the files) one
by one. Were the entries looked up again by path, a folder swapped for a symlink to
another folder after its listing would lead the looks (and the hashing) there: a file of
the listed name outside the share would be offered under the folder's name. Folders are
walked by descriptor (each opened through its parent's, never through a link) and a file
is hashed only if it is the very file the listing met (its device and inode), so what lies
outside is never indexed nor served.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from node import LOOPBACK, Node, seed, wait_until
from nodetools import forbidden_log_text

from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.net.client import PeerClient
from p2pshare.services.protocol import FileKey
from p2pshare.services.settings import chunk_size_for

pytestmark = pytest.mark.reliability

# Files the scanner hashes in the folder before it reaches the one that matters: time
# enough (a first index of this many takes a second or more) to swap the folder meanwhile.
BEFORE = 20_000
SECRET_NAME = "zz-secret.txt"  # listed last in its folder


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside every node's home: what must stay unreachable."""
    path = Path(tempfile.mkdtemp(prefix="p2pout"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def key_of(data: bytes) -> FileKey:
    """The key a node indexing `data` with the default chunk size offers it under."""
    chunk_size = chunk_size_for(len(data))
    root = protocol.manifest_root(manifest_entries(data, chunk_size))
    return FileKey(hashlib.sha256(data).hexdigest(), chunk_size, root)


def fetch_first_chunk(port: int, key: FileKey, size: int) -> bytes | None:
    """Chunk 0 of `key` from the node, or None when it refuses (the way it should)."""
    with PeerClient(LOOPBACK, port, key=None) as client:
        req = protocol.ChunkRequest(key, 0, 0, 0)
        client.send(req)
        try:
            header = client.read_chunk_header(req, min(size, key.chunk_size))
        except protocol.RemoteRefused:
            return None
        buf = bytearray(header.length)
        client.read_exact_into(memoryview(buf))
        return bytes(buf)


def test_a_folder_swapped_for_a_link_out_while_scanned_leads_nowhere(
    make_node: Callable[..., Node], outside: Path
) -> None:
    secret = b"the passwords of someone else\n" * 40
    secret_sha = hashlib.sha256(secret).hexdigest()
    (outside / SECRET_NAME).write_bytes(secret)

    node = make_node("seed")
    share = node.share
    for i in range(BEFORE):
        seed(node, f"docs/f{i:05d}.bin", i.to_bytes(4, "big") * 8)
    seed(node, f"docs/{SECRET_NAME}", b"a harmless decoy of the same name\n")
    node.start_supervised()

    # The first index is under way (its first batch recorded) and still in docs/.
    wait_until(
        lambda: node.scalar("SELECT count(*) FROM local_files") > 0,
        120,
        what="the first index to record its first batch",
        interval=0.005,
    )
    os.rename(share / "docs", share / ".docs-moved")  # hidden: never scanned
    (share / "docs").symlink_to(outside, target_is_directory=True)
    recorded = node.scalar("SELECT count(*) FROM local_files")
    assert recorded < BEFORE, (
        f"the first index had recorded {recorded} files before the swap: too fast for "
        "this test to swap the folder while it is scanned"
    )

    port = node.tcp_port()
    assert port
    leaked: list[bytes] = []

    def scan_over() -> bool:
        # Asked all along: a file offered for a moment must not be served in that moment.
        got = fetch_first_chunk(port, key_of(secret), len(secret))
        if got is not None:
            leaked.append(got)
        return "index: " in node.log("server") and not node.scalar(
            "SELECT count(*) FROM local_files WHERE name LIKE 'docs/%'"
        )

    # The whole scan ends, and the look at docs (a link now) forgets what it held.
    wait_until(scan_over, 180, what="the scan to end and docs/ to be forgotten", interval=0.02)

    offered_secret = node.sql(
        "SELECT name, seq, removed FROM catalog_log WHERE gone_sha256 = ?"
        " OR file_id IN (SELECT id FROM files WHERE sha256 = ?)",
        (secret_sha, secret_sha),
    )
    assert offered_secret == [], f"a file outside the share was offered: {offered_secret}"
    assert node.scalar("SELECT count(*) FROM files WHERE sha256 = ?", (secret_sha,)) == 0
    assert leaked == [], "bytes of a file outside the share were served"
    # Asked once more, now that the scan is over: refused.
    assert fetch_first_chunk(port, key_of(secret), len(secret)) is None
    wait_until(
        lambda: f"skipped {share / 'docs'}: symlink leads outside" in node.log("server"),
        30,
        what="the server to say docs/ leads outside",
    )
    assert forbidden_log_text(node) == []
