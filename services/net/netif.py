"""The broadcast and own addresses of every up, non-loopback IPv4 interface (Linux ioctls)."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCGIFBRDADDR = 0x8919
SIOCGIFADDR = 0x8915
IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8


def _interfaces(request: int, *, broadcast_only: bool) -> list[str]:
    """The IPv4 address `request` (SIOCGIFBRDADDR, SIOCGIFADDR) of every up, non-loopback
    interface, each once, in interface order."""
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            ifreq = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack("H", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq)[16:18])[0]
                if not flags & IFF_UP or flags & IFF_LOOPBACK:
                    continue
                if broadcast_only and not flags & IFF_BROADCAST:
                    continue
                raw = fcntl.ioctl(sock, request, ifreq)[20:24]
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(raw)
            if address != "0.0.0.0" and address not in out:
                out.append(address)
    return out


def interface_broadcasts() -> list[str]:
    """Broadcast addresses of the interfaces that can carry announcements; may be empty."""
    return _interfaces(SIOCGIFBRDADDR, broadcast_only=True)


def interface_addresses() -> list[str]:
    """IPv4 addresses of the up, non-loopback interfaces (for a link a phone can open)."""
    return _interfaces(SIOCGIFADDR, broadcast_only=False)
