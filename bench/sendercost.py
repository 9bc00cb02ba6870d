"""Who pays for a loopback transfer: the sender's CPU moves with the receiver's read size.

    python bench/sendercost.py [--size-mib 1024] [--reps 2] [--dir /dev/shm]

nginx (one worker, sendfile on) serves one file; it is fetched by curl, and by a reader
shaped like the downloader's worker (recv_into a buffer of --piece bytes, SHA-256 over
it, 256 KiB pwrites into a file), with 256 KiB and 4 MiB buffers. Prints nginx's and the
reader's CPU-seconds per GiB for each, from /proc.

Why: the transfer scenario shows the seeder's server at ~0.4 CPU-s/GiB against nginx's
~0.1 with curl. Here nginx itself pays 0.46-0.55 s/GiB when its reader takes 4 MiB per
recv (and 0.16-0.17 with 256 KiB), while the reader pays 0.3 s less: on loopback the
receive-side protocol work runs in whichever process's context it lands, so the sum,
not either side, is the figure to compare (bench.py's "downloader + server" row).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpref import Nginx  # noqa: E402
from procstat import cpu_seconds, run_timed, total_cpu  # noqa: E402

GIB = 1024**3
WRITE_PIECE = 256 * 1024


def read_like_downloader(port: int, size: int, piece: int, out: Path) -> None:
    """GET the file; recv_into `piece`-byte buffers, hash each, pwrite it in 256 KiB."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        got = sock.recv(4096)
        if not got:
            raise SystemExit("nginx closed the connection before its headers ended")
        head += got
    body = head.split(b"\r\n\r\n", 1)[1]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        digest = hashlib.sha256(body)
        os.write(fd, body)
        done = len(body)
        buf = memoryview(bytearray(piece))
        while done < size:
            want = min(piece, size - done)
            n = 0
            while n < want:
                r = sock.recv_into(buf[n:want])
                if not r:
                    raise SystemExit("nginx closed the connection early")
                n += r
            digest.update(buf[:n])
            for i in range(0, n, WRITE_PIECE):
                os.pwrite(fd, buf[i : min(n, i + WRITE_PIECE)], done + i)
            done += n
    finally:
        os.close(fd)
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="p2p-sendercost-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx's worker runs as another user
        with open(folder / "big.bin", "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1024 * 1024))
        (folder / "big.bin").chmod(0o644)
        out = folder / "out.bin"
        conf = folder / "nginx"
        conf.mkdir()
        print(f"{'reader':<22} {'nginx s/GiB':>11} {'reader s/GiB':>12} {'sum':>6} {'MB/s':>6}")
        with Nginx(folder, conf) as web:
            pids = web.pids()
            for _ in range(args.reps):
                before = total_cpu(pids)
                seconds, cpu = run_timed(["curl", "-sSf", "-o", str(out), web.url("big.bin")])
                server = total_cpu(pids) - before
                report("curl", server, cpu, seconds, size)
                for piece in (WRITE_PIECE, 4 * 1024 * 1024):
                    before, own = total_cpu(pids), cpu_seconds(os.getpid())
                    started = time.perf_counter()
                    read_like_downloader(web.port, size, piece, out)
                    seconds = time.perf_counter() - started
                    cpu = cpu_seconds(os.getpid()) - own
                    server = total_cpu(pids) - before
                    report(f"recv_into {piece >> 10} KiB", server, cpu, seconds, size)


def report(who: str, server: float, client: float, seconds: float, size: int) -> None:
    per = GIB / size
    print(
        f"{who:<22} {server * per:>11.2f} {client * per:>12.2f} "
        f"{(server + client) * per:>6.2f} {size / seconds / 1e6:>6.0f}"
    )


if __name__ == "__main__":
    main()
