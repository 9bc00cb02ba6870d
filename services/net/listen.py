"""A listening TCP socket whose failure is one sentence, for the server and the web role."""

from __future__ import annotations

import errno
import socket

from p2pshare.services.runtime import StartupError


def open_listener(
    bind: str, port: int, *, setting: str = "P2P_TCP_PORT", backlog: int = 512
) -> socket.socket:
    """A listening TCP socket. Raises StartupError with one sentence (naming `setting`) when
    the port is taken or the address cannot be bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"TCP port {port} on {bind} is already in use ({setting})") from None
        raise StartupError(f"cannot listen on {bind}:{port} ({setting}): {exc.strerror}") from None
    sock.listen(backlog)
    return sock
