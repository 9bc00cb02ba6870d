"""Where the chunk server finds a file's bytes (db/serving.py), on a temp-file database."""

from __future__ import annotations

import hashlib

from sqlalchemy import insert

from p2pshare.db import index as dbindex
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database
from p2pshare.db.schema import downloads
from p2pshare.services import protocol

CS = 16384


def hashed(seed: int, size: int = 3 * CS + 5, inode: int = 0) -> dbindex.HashedFile:
    """A content (no file on disk needed: the query only reads rows)."""
    count = protocol.chunk_count(size, CS)
    entries = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(count)]
    return dbindex.HashedFile(
        size=size,
        mtime_ns=1000 + seed,
        sha256=entries[-1],
        chunk_size=CS,
        chunk_hashes=entries,
        chunk_sizes=[protocol.chunk_length(size, CS, i) for i in range(count)],
        root=protocol.manifest_root(entries),
        ctime_ns=2000 + seed,
        inode=inode or 3000 + seed,
    )


def test_byte_sources_of_many_keys_at_once_match_one_at_a_time(db: Database) -> None:
    a, b, c = hashed(1), hashed(2), hashed(3)
    with db.write() as s:
        dbindex.record_local_files(s, "share", [("a.bin", a), ("x/a-again.bin", a)], now=1.0)
        dbindex.record_local_files(s, "download", [("b.bin", b)], now=1.0)
        ids = dbindex.ensure_files(s, [a, c], now=1.0)
        # c: only a download in progress holds part of it; a: also one, beside its files.
        for name, content, bits in (("c.bin", c, b"\x40"), ("a-part.bin", a, b"\x80")):
            s.execute(
                insert(downloads).values(
                    file_id=ids[content.key],
                    name=name,
                    sha256=content.sha256,
                    size=content.size,
                    status="active",
                    requested_at=1.0,
                    bytes_done=CS,
                    have=bits,
                    temp_path=f"/tmp/{name}.part",
                )
            )
        unknown = (hashlib.sha256(b"nobody").hexdigest(), CS, "0" * 64)
        other_root = (a.sha256, CS, "f" * 64)  # the same SHA-256 offered under another root
    keys = [a.key, b.key, c.key, unknown, other_root]
    with db.read() as s:
        many = dbserving.byte_sources_many(s, keys)
        one = {key: dbserving.byte_sources(s, key) for key in keys}
    assert many == one
    # Everything at once, as a server sharing few enough files loads it, says the same.
    with db.read() as s:
        everything = dbserving.all_byte_sources(s, limit=10)
        too_many = dbserving.all_byte_sources(s, limit=2)  # three local files
    assert everything == {key: found for key, found in many.items() if found}
    assert too_many is None
    assert [(src.root, src.name) for src in many[a.key]] == [
        ("share", "a.bin"),
        ("share", "x/a-again.bin"),
        (None, "a-part.bin"),
    ]
    share_a = many[a.key][0]
    assert share_a.stamp == dbindex.Stamp(a.size, a.mtime_ns, a.ctime_ns, a.inode)
    assert share_a.have is None and share_a.size == a.size
    assert many[a.key][2].have == b"\x80" and many[a.key][2].path == "/tmp/a-part.bin.part"
    assert [(src.root, src.name) for src in many[b.key]] == [("download", "b.bin")]
    assert [(src.root, src.have) for src in many[c.key]] == [(None, b"\x40")]
    assert many[unknown] == [] and many[other_root] == []


def test_byte_sources_of_more_keys_than_one_statement_takes(db: Database) -> None:
    contents = [hashed(i, size=100 + i) for i in range(1200)]
    with db.write() as s:
        dbindex.record_local_files(
            s, "share", [(f"f{i:04d}", h) for i, h in enumerate(contents)], now=1.0
        )
    with db.read() as s:
        found = dbserving.byte_sources_many(s, [h.key for h in contents])
    assert len(found) == 1200
    assert all([src.name for src in found[h.key]] == [f"f{i:04d}"] for i, h in enumerate(contents))
