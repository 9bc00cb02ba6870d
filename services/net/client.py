"""A blocking client for another node's chunk server, used by the listener and the downloader."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

from p2pshare.services import protocol
from p2pshare.services.net.tls import Link, check_server
from p2pshare.services.protocol import FileKey
from p2pshare.services.protocol.handshake import Channel, ClientHandshake, Stage

CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 15.0
READ_BUFFER = 256 * 1024


class PeerClient:
    """One connection to a peer. Raises OSError for network trouble, ProtocolError for lies."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        key: str | None,
        link: Link | None = None,
        timeout: float = IO_TIMEOUT,
    ) -> None:
        self.address = address
        self.port = port
        self.key = key
        self.link = link  # None or a clear link: no TLS
        self.timeout = timeout
        self.sock: socket.socket | None = None
        # time.monotonic() by which the whole exchange must be over, or None: a
        # peer trickling a byte at a time must not hold a caller forever.
        self.deadline: float | None = None

    def __enter__(self) -> PeerClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), timeout=CONNECT_TIMEOUT)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=READ_BUFFER))
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _handshake(self) -> None:
        """Welcome, TLS, key proof: in the order `protocol.handshake` keeps. Raises
        CannotTalk, WrongCertificate (an ssl.SSLError, so an OSError), ProtocolError."""
        link = self.link
        shake = ClientHandshake(
            key=self.key, can_encrypt=link is not None and link.context is not None
        )
        stage = shake.on_welcome(self._read_frame())
        channel = None
        if stage is Stage.TLS:
            assert link is not None and link.context is not None and self.sock is not None
            self.rfile.close()  # held nothing past the welcome: the server waits for our hello
            tls = link.context.wrap_socket(self.sock, server_side=False)
            self.sock = tls
            self.rfile = cast(io.BufferedReader, tls.makefile("rb", buffering=READ_BUFFER))
            check_server(tls, link.peer_fingerprint)
            assert link.peer_fingerprint is not None
            channel = Channel(link.peer_fingerprint, link.own_fingerprint)
            stage = shake.tls_done()
        if stage is Stage.AUTH:
            assert self.sock is not None
            self.sock.sendall(shake.proof(channel))
            shake.on_auth_reply(self._read_frame())

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.rfile.close()
                self.sock.close()
            finally:
                self.sock = None

    # ------------------------------------------------------------ low level

    def send(self, *reqs: protocol.Request) -> None:
        assert self.sock is not None
        self.sock.sendall(b"".join(protocol.encode_request(r) for r in reqs))

    def read_exact_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the peer is too slow to answer")
                assert self.sock is not None
                self.sock.settimeout(min(self.timeout, left))
            n = self.rfile.readinto(view[got:])
            if not n:
                raise ConnectionError("the peer closed the connection")
            got += n

    def _read_exact(self, n: int) -> bytes:
        if self.deadline is None:
            # The buffered reader loops until n bytes or the end: one call, no copy.
            data = self.rfile.read(n)
            if len(data) < n:
                raise ConnectionError("the peer closed the connection")
            return data
        buf = bytearray(n)
        self.read_exact_into(memoryview(buf))
        return bytes(buf)

    def _read_frame(self) -> bytes:
        return self._read_exact(protocol.frame_length(self._read_exact(4)))

    def read_reply(self) -> dict[str, Any]:
        return protocol.decode_reply(self._read_frame())

    def _payload(self, limit: int) -> bytes:
        reply = self.read_reply()
        return self._read_exact(protocol.payload_length(reply, limit))

    # ------------------------------------------------------------ requests

    def catalog(self) -> tuple[int, list[protocol.CatalogEntry]]:
        self.send(protocol.CatalogRequest())
        return protocol.decode_catalog(self._payload(protocol.MAX_CATALOG_BYTES))

    def changes(
        self, epoch: str | None, since: int, *, page_seconds: float
    ) -> Iterator[protocol.CatalogPage]:
        """The peer's catalog changes after `since` in its log `epoch`, a page at a time
        (each within `page_seconds`), or its whole catalog (the first page says `reset`).
        Raises ProtocolError if the pages do not follow each other."""
        self.send(protocol.ChangesRequest(epoch, since))
        first: protocol.CatalogPage | None = None
        expect = since
        while True:
            self.deadline = time.monotonic() + page_seconds
            header = self.read_reply()
            page = protocol.decode_page(header, self._read_exact(protocol.page_length(header)))
            if first is None:
                first = page
                expect = 0 if page.reset else since
            if (page.start, page.epoch, page.reset) != (expect, first.epoch, first.reset):
                raise protocol.MalformedMessage("a catalog page that does not follow the last")
            yield page
            if not page.more:
                return
            expect = page.end

    def manifests(self, sizes: dict[FileKey, int]) -> protocol.Manifests:
        """Manifests of the given files, asked in batches the protocol allows."""
        keys = list(sizes)
        out = protocol.Manifests({}, {})
        step = protocol.MAX_MANIFEST_FILES
        for start in range(0, len(keys), step):
            self.send(protocol.ManifestRequest(tuple(keys[start : start + step])))
        for start in range(0, len(keys), step):
            batch = {k: sizes[k] for k in keys[start : start + step]}
            # Compressed, a reply is at most a little larger than inflated (stored blocks).
            most = protocol.manifest_reply_bytes(batch)
            limit = min(protocol.MAX_CATALOG_BYTES, most + most // 100 + 64)
            got = protocol.decode_manifests(self._payload(limit), batch)
            out.good.update(got.good)
            out.refused.update(got.refused)
        return out

    def have(self, key: FileKey, chunks: int) -> bytes | None:
        """The peer's bitfield for a file (None: all of it). Raises RemoteRefused if it has none."""
        self.send(protocol.HaveRequest(key))
        return protocol.decode_have(self._read_frame(), chunks=chunks)

    def read_chunk_header(self, req: protocol.ChunkRequest, chunk_len: int) -> protocol.ChunkHeader:
        return protocol.decode_chunk_header(self._read_frame(), expect=req, chunk_len=chunk_len)
