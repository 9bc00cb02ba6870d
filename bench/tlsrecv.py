"""What receiving TLS costs a Python thread, apart from everything else a download does.

    python bench/tlsrecv.py [--size-mib 256] [--reps 2]

A thread in this process sends SIZE MiB over TLS 1.3 on 127.0.0.1 (the node's own
identity and ssl settings); the receiving thread's CPU-seconds per GiB are measured three
ways, interleaved:

  clear       recv_into a 4 MiB buffer on a plain socket (what the clear path pays)
  sslsocket   SSLSocket.recv_into, as PeerClient receives under TLS
  memory-bio  recv_into 256 KiB of ciphertext, fed through ssl.MemoryBIO to SSLObject.read
              (fewer system calls: does the record-at-a-time read cost less this way?)

Both TLS ways read one record (16 KiB) a call, 65,536 calls a GiB: that, the copy out of
OpenSSL's buffer and AES-GCM are what the encrypted download pays beyond the clear one.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

from p2pshare.services.net import identity

MIB = 1024 * 1024
BUFFER = 4 * MIB


def contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ident = identity.load_or_create(folder)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(ident.path)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # a measurement, not a trust decision
    return server, client


def send(listener: socket.socket, size: int, server: ssl.SSLContext | None) -> None:
    conn, _ = listener.accept()
    out = server.wrap_socket(conn, server_side=True) if server else conn
    block = os.urandom(MIB)
    with out:
        for _ in range(size // MIB):
            out.sendall(block)


def receive(way: str, size: int, server: ssl.SSLContext, client: ssl.SSLContext) -> float:
    """The receiving thread's CPU-seconds for `size` bytes received `way`."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = threading.Thread(
        target=send, args=(listener, size, None if way == "clear" else server)
    )
    sender.start()
    raw = socket.create_connection(listener.getsockname())
    view = memoryview(bytearray(BUFFER))
    got = 0
    try:
        if way == "clear":
            started = time.thread_time()
            while got < size:
                got += raw.recv_into(view[: min(BUFFER, size - got)])
        elif way == "sslsocket":
            tls = client.wrap_socket(raw)
            started = time.thread_time()
            while got < size:
                got += tls.recv_into(view[: min(BUFFER, size - got)])
        else:
            started, got = memory_bio(raw, client, view, size)
        return time.thread_time() - started
    finally:
        raw.close()
        sender.join()
        listener.close()


def memory_bio(
    raw: socket.socket, client: ssl.SSLContext, view: memoryview, size: int
) -> tuple[float, int]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing)
    cipher = memoryview(bytearray(256 * 1024))
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                raw.sendall(outgoing.read())
            incoming.write(cipher[: raw.recv_into(cipher)])
    if outgoing.pending:
        raw.sendall(outgoing.read())
    started, got, at = time.thread_time(), 0, 0
    while got < size:
        try:
            n = tls.read(len(view) - at, view[at:])
        except ssl.SSLWantReadError:
            incoming.write(cipher[: raw.recv_into(cipher)])
            continue
        got, at = got + n, (at + n) % len(view)
    return started, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mib * MIB
    ways = ("clear", "sslsocket", "memory-bio")
    with tempfile.TemporaryDirectory() as folder:
        server, client = contexts(Path(folder))
        cpu: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(args.reps):
            for way in ways:
                cpu[way].append(receive(way, size, server, client) * 1024 / args.size_mib)
    for way in ways:
        print(f"{way:>10}: {statistics.median(cpu[way]):.2f} CPU-s/GiB, receiving thread")


if __name__ == "__main__":
    main()
