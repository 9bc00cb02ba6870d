"""The benchmark's own reference: a bare socket.sendfile -> recv_into copy, no hashing.

`python bench/refcopy.py serve FILE` serves the file once per connection on
127.0.0.1 and prints its port; `fetch(port, size, dest)` reads it into a file.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

BUFFER = 4 * 1024 * 1024


def serve(path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        print(listener.getsockname()[1], flush=True)
        while True:
            conn, _ = listener.accept()
            with conn, open(path, "rb") as fh:
                conn.sendfile(fh)


def fetch(port: int, size: int, dest: Path) -> float:
    """Copy the served file to dest; returns seconds taken."""
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    started = time.perf_counter()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            got = 0
            while got < size:
                n = sock.recv_into(view)
                if not n:
                    break
                os.write(fd, view[:n])
                got += n
        os.fsync(fd)
    finally:
        os.close(fd)
    if got != size:
        raise RuntimeError(f"reference copy got {got} of {size} bytes")
    return time.perf_counter() - started


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]))
    else:
        sys.exit("usage: refcopy.py serve FILE")
