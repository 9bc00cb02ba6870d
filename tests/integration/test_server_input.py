"""Bad TCP requests to a real server: each refused with one log line, the server keeps serving."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest

from p2pshare.services import protocol

pytestmark = pytest.mark.integration

CHUNK = 256 * 1024  # what the server picks for a small file (P2P_CHUNK_SIZE unset)


class Conn:
    """A raw client connection to 127.0.0.1:port that has read the welcome."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.rfile = self.sock.makefile("rb")
        self.welcome = protocol.decode_welcome(self.frame())

    def frame(self) -> bytes:
        return self.rfile.read(protocol.frame_length(self.rfile.read(protocol.FRAME_HEADER.size)))

    def reply(self) -> dict:
        return json.loads(self.frame())

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, raw: dict) -> None:
        self.send_raw(protocol.frame(raw))

    def closed_by_server(self) -> bool:
        return self.rfile.read(1) == b""

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def test_bad_tcp_requests_are_refused_and_the_server_keeps_serving(make_node, wait_until):
    a = make_node("a")
    data = os.urandom(CHUNK + 1000)  # two chunks
    (a.share / "two-chunks.bin").write_bytes(data)
    a.start()
    sha = hashlib.sha256(data).hexdigest()
    wait_until(
        lambda: a.scalar("SELECT count(*) FROM files WHERE sha256 = ?", (sha,)) == 1,
        60,
        what="a to index its file",
    )
    root = a.scalar("SELECT root FROM files WHERE sha256 = ?", (sha,))
    port = a.tcp_port()
    server = a.procs["server"]

    def log_lines() -> int:
        text = a.log("server")
        return text.count("dropped connection from") + text.count("refused ")

    # Requests that break the protocol: an error reply, then the server hangs up.
    fatal = {
        "frame longer than the limit": protocol.FRAME_HEADER.pack(0xFFFFFFFF),
        "body not JSON": protocol.FRAME_HEADER.pack(5) + b"\xff\xfe{{{",
        "JSON but not an object": protocol.FRAME_HEADER.pack(7) + b"[1,2,3]",
        "unknown op": protocol.frame({"op": "rm -rf"}),
        "chunk request with a bad sha": protocol.frame(
            {"op": "get", "sha": "x" * 64, "cs": CHUNK, "rt": root, "i": 0, "off": 0, "len": 0}
        ),
        "negative chunk index": protocol.frame(
            {"op": "get", "sha": sha, "cs": CHUNK, "rt": root, "i": -1, "off": 0, "len": 0}
        ),
        "manifest of too many files": protocol.frame(
            {"op": "manifest", "files": [[sha, CHUNK, root]] * (protocol.MAX_MANIFEST_FILES + 1)}
        ),
    }
    for what, request in fatal.items():
        before = log_lines()
        conn = Conn(port)
        conn.send_raw(request)
        reply = conn.reply()
        assert reply["ok"] is False and reply["error"], what
        assert conn.closed_by_server(), what
        conn.close()
        wait_until(lambda b=before: log_lines() > b, 30, what=f"a log line for: {what}")
        assert server.poll() is None, f"server died on: {what}"

    # Well-formed requests the server cannot honour: an error reply, the connection stays.
    conn = Conn(port)
    refusals = {
        "unknown file": {
            "op": "get",
            "sha": "0" * 64,
            "cs": CHUNK,
            "rt": root,
            "i": 0,
            "off": 0,
            "len": 0,
        },
        "chunk past the end": {
            "op": "get",
            "sha": sha,
            "cs": CHUNK,
            "rt": root,
            "i": 2,
            "off": 0,
            "len": 0,
        },
        "bytes past the chunk": {
            "op": "get",
            "sha": sha,
            "cs": CHUNK,
            "rt": root,
            "i": 1,
            "off": 500,
            "len": 600,
        },
        "holdings of an unknown file": {"op": "have", "sha": "0" * 64, "cs": CHUNK, "rt": root},
    }
    for what, request in refusals.items():
        conn.send(request)
        reply = conn.reply()
        assert reply["ok"] is False and reply["error"], what
    # ... and the same connection then gets a true chunk.
    conn.send({"op": "get", "sha": sha, "cs": CHUNK, "rt": root, "i": 1, "off": 0, "len": 0})
    header = conn.reply()
    assert header == {"ok": True, "i": 1, "off": 0, "len": 1000}
    assert conn.rfile.read(1000) == data[CHUNK:]
    conn.close()

    # Half a frame, then gone: nothing to answer, nothing breaks.
    half = socket.create_connection(("127.0.0.1", port), timeout=5)
    half.sendall(protocol.frame({"op": "catalog"})[:6])
    half.close()

    # The server still serves a catalog, and recorded the one chunk it served.
    conn = Conn(port)
    conn.send({"op": "catalog"})
    length = protocol.payload_length(conn.reply(), protocol.MAX_CATALOG_BYTES)
    version, entries = protocol.decode_catalog(conn.rfile.read(length))
    conn.close()
    assert [(e.name, e.file.sha256, e.size) for e in entries] == [
        ("two-chunks.bin", sha, len(data))
    ]
    rows = wait_until(
        lambda: a.sql("SELECT peer_address, sha256, chunk_index, bytes FROM uploads"),
        30,
        what="the served chunk in uploads",
    )
    assert rows == [("127.0.0.1", sha, 1, 1000)]
    assert server.poll() is None
    assert "Traceback" not in a.log("server")


def test_pipelined_requests_for_many_files_are_answered_in_order_and_each_recorded(
    make_node, wait_until
):
    """Several clients each send a have and a get for 40 small files, a refused request
    among them, in one segment (a batch for the server): every answer comes in the order
    asked, every served chunk lands in `uploads`, and a file gone from the share is refused
    in a later batch once the index has dropped it."""
    a = make_node("a")
    files = {f"d{i % 4}/f{i:02d}.bin": os.urandom(1000 + 37 * i) for i in range(40)}
    for name, data in files.items():
        (a.share / name).parent.mkdir(exist_ok=True)
        (a.share / name).write_bytes(data)
    a.start()
    wait_until(lambda: a.scalar("SELECT count(*) FROM local_files") == 40, 60, what="the index")
    keys = {
        name: (sha, root)
        for name, sha, root in a.sql(
            "SELECT l.name, f.sha256, f.root FROM local_files l JOIN files f ON f.id = l.file_id"
        )
    }
    port = a.tcp_port()
    order = sorted(files)

    def asks(name: str) -> bytes:
        sha, root = keys[name]
        key = {"sha": sha, "cs": CHUNK, "rt": root}
        return protocol.frame({"op": "have", **key}) + protocol.frame(
            {"op": "get", **key, "i": 0, "off": 0, "len": 0}
        )

    unknown = protocol.frame({"op": "have", "sha": "0" * 64, "cs": CHUNK, "rt": "0" * 64})
    conns = [Conn(port) for _ in range(3)]
    for conn in conns:  # all three asking at once, as three leechers would
        segment = b"".join(asks(n) for n in order[:20]) + unknown
        conn.send_raw(segment + b"".join(asks(n) for n in order[20:]) + b"\x00\x00\x00\x02{]")
    for conn in conns:
        for i, name in enumerate(order):
            if i == 20:
                refused = conn.reply()
                assert refused["ok"] is False and refused["error"]
            assert conn.reply() == {"ok": True, "bits": None, "n": 1}, name
            size = len(files[name])
            assert conn.reply() == {"ok": True, "i": 0, "off": 0, "len": size}, name
            assert conn.rfile.read(size) == files[name], name
        # The malformed frame after them: an error reply, then the server hangs up.
        assert conn.reply()["ok"] is False
        assert conn.closed_by_server()
        conn.close()
    wait_until(
        lambda: a.scalar("SELECT count(*) FROM uploads") == 3 * 40,
        30,
        what="every served chunk in uploads",
    )
    assert a.scalar("SELECT count(DISTINCT name) FROM uploads") == 40
    # A file that leaves the share: once the index has dropped it, it is refused.
    conn = Conn(port)
    conn.send_raw(asks(order[0]))
    assert conn.reply()["ok"] is True
    assert conn.reply()["ok"] is True
    conn.rfile.read(len(files[order[0]]))
    (a.share / order[0]).unlink()
    wait_until(
        lambda: not a.sql("SELECT 1 FROM local_files WHERE name = ?", (order[0],)),
        60,
        what="the index to drop the removed file",
    )
    conn.send_raw(asks(order[0]))
    assert conn.reply()["ok"] is False  # have: not here any more
    assert conn.reply()["ok"] is False  # get: the same
    conn.close()
    assert a.procs["server"].poll() is None
