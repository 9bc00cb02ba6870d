"""A tiny HTTP tracker on 127.0.0.1 for the BitTorrent tests and bench/torrent_transfer.py:
aria2c takes no peer address on its command line, so a .torrent announcing to this
tracker is how it is told the node's address."""

from __future__ import annotations

import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from p2pshare.services.torrent.metainfo import bencode


class Tracker:
    """An HTTP tracker on 127.0.0.1 whose every announce answer is one peer: the node."""

    def __init__(self, peer_port: int) -> None:
        compact = socket.inet_aton("127.0.0.1") + struct.pack(">H", peer_port)
        body = bencode({"interval": 60, "peers": compact})
        self.announces = 0
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                tracker.announces += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/announce"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
