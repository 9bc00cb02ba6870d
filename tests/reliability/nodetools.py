"""Small helpers shared by the reliability tests of cases 2, 3, 4, 5, 8 and 9.

Everything here reads a node's state the way a user could: its database (read
only), its folders and /proc; `raw_exchange` talks TCP to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
from pathlib import Path
from typing import Any

from fakepeer import take_frames
from node import LOOPBACK, Node, wait_until
from node import seed as seed  # the reliability tests take it from here

from p2pshare.services import protocol

UNFINISHED = ("queued", "active", "waiting")
ENDED = ("done", "failed", "cancelled")
DOWNLOAD_COLUMNS = (
    "id",
    "name",
    "sha256",
    "size",
    "status",
    "reason",
    "bytes_done",
    "bytes_received",
    "bad_chunks",
    "saved_as",
    "temp_path",
    "switched",
    "pinned",
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def holders(node: Node, name: str, sha256: str | None = None) -> int:
    """How many peers offer `name` (with that content, when `sha256` is given)."""
    query = (
        "SELECT count(DISTINCT h.peer_id) FROM holdings h JOIN files f ON f.id = h.file_id "
        "WHERE h.name = ?"
    )
    params: tuple[object, ...] = (name,)
    if sha256 is not None:
        query += " AND f.sha256 = ?"
        params += (sha256,)
    return int(node.scalar(query, params) or 0)


def wait_known(
    node: Node, name: str, peers: int = 1, *, sha256: str | None = None, timeout: float = 60
) -> None:
    wait_until(
        lambda: holders(node, name, sha256) >= peers,
        timeout,
        what=f"{node} to know {peers} peers with {name}",
    )


def offered_sha(node: Node, peer_username: str, name: str) -> set[str]:
    """The contents `peer_username` offers under `name`, as `node` knows them."""
    rows = node.sql(
        "SELECT f.sha256 FROM holdings h JOIN files f ON f.id = h.file_id "
        "JOIN peers p ON p.id = h.peer_id WHERE p.username = ? AND h.name = ?",
        (peer_username, name),
    )
    return {r[0] for r in rows}


def downloads(node: Node) -> list[dict[str, Any]]:
    """Every row of the downloads table, oldest first."""
    rows = node.sql(f"SELECT {', '.join(DOWNLOAD_COLUMNS)} FROM downloads ORDER BY id")
    return [dict(zip(DOWNLOAD_COLUMNS, row, strict=True)) for row in rows]


def download(node: Node, download_id: int) -> dict[str, Any]:
    found = [d for d in downloads(node) if d["id"] == download_id]
    assert found, f"{node}: no download {download_id}"
    return found[0]


def queue(node: Node, pattern: str) -> int:
    """`p2pctl download PATTERN --no-wait`; returns the download id. Fails on a non-zero exit."""
    done = node.p2pctl("download", pattern, "--no-wait")
    assert done.returncode == 0, f"p2pctl download {pattern}: {done.returncode}\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr
    match = re.search(r"#(\d+)", done.stdout)
    assert match, done.stdout
    return int(match[1])


def wait_ended(node: Node, download_id: int, timeout: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        d = download(node, download_id)
        return d if d["status"] in ENDED else None

    return dict(
        wait_until(ended, timeout, what=f"{node}: download {download_id} to end", interval=0.1)
    )


def integrity(node: Node) -> str:
    """`PRAGMA integrity_check` of the node's database ("ok" when sound)."""
    conn = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=30)
    try:
        return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def tree(folder: Path) -> dict[str, Path]:
    """Every non-folder entry under `folder`, hidden ones included, by relative name."""
    out: dict[str, Path] = {}
    if not folder.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            out[path.relative_to(folder).as_posix()] = path
    return out


def status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmRSS, VmHWM), in KiB; 0 if the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    assert match, f"no {field} for pid {pid}"
    return int(match[1])


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB (0 if it is gone)."""
    return status_kib(pid, "VmRSS")


def forbidden_log_text(node: Node) -> list[str]:
    """Role logs lines with a traceback or 'database is locked' (the harness checks too)."""
    return [
        f"{node}: {role}.log: {bad}"
        for role, text in node.logs().items()
        for bad in ("Traceback", "database is locked")
        if bad in text
    ]


def raw_exchange(port: int, frames: bytes, *, timeout: float = 30.0) -> bytes:
    """Send `frames` to 127.0.0.1:`port`, close our side, and return all the server sends
    until it closes. Fails if the server keeps the connection open for `timeout` seconds.
    """
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(frames)
        sock.shutdown(socket.SHUT_WR)  # nothing more from us: the server may close
        got = bytearray()
        for _ in range(100_000):  # bounded; each recv waits at most `timeout`
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(
                    f"the server on port {port} kept the connection open after {got[:200]!r}"
                ) from None
            if not part:
                break
            got += part
        return bytes(got)


def split_frames(data: bytes) -> list[dict[str, Any]]:
    """The JSON frames `data` consists of; fails if anything else (raw bytes) is in it."""
    buf = bytearray(data)
    frames = take_frames(buf)
    assert not buf, "a truncated frame"
    return [json.loads(body) for body in frames]


def raw_frame(raw: dict[str, Any]) -> bytes:
    """One request frame with whatever JSON we like in it (lies included)."""
    return protocol.frame(raw)
