"""Bytes on the loopback wire between benchmark nodes, from a tcpdump capture.

`Capture` runs `tcpdump -i lo` (headers only) with a filter naming the nodes' ports,
for as long as its block runs; afterwards `between(t0, t1)` sums the payload bytes
(TCP and UDP data, no headers) of the packets it saw in that wall-clock interval.
tcpdump's timestamps and `time.time()` are the same clock (CLOCK_REALTIME). The pcap
file is read here (classic format, the one `tcpdump -w` writes), so nothing else needs
installing beyond tcpdump itself (`apt-get install -y tcpdump`; capturing needs root or
CAP_NET_RAW). When it cannot capture, `Capture.why_not` says why and nothing is summed.
"""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Enough for an Ethernet (or Linux cooked) header, an IPv4 header with options and a TCP
# header with options: payload sizes come from the headers, not from captured bytes.
SNAPLEN = 160
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
ETH_IPV4 = 0x0800
PROTO_TCP, PROTO_UDP = 6, 17
# pcap link types tcpdump may write for `lo`: header length and where the ethertype is.
LINK_HEADERS = {1: (14, 12), 113: (16, 14), 276: (20, 0)}
TCP_SYN, TCP_ACK = 0x02, 0x10


@dataclass(frozen=True)
class Packet:
    at: float  # wall-clock seconds
    proto: int  # PROTO_TCP or PROTO_UDP
    sport: int
    dport: int
    payload: int  # bytes of TCP or UDP data
    syn: bool  # a TCP SYN without ACK: a connection opened


@dataclass
class WireBytes:
    """What crossed the wire in one interval."""

    tcp: int = 0
    udp: int = 0
    packets: int = 0
    datagrams: int = 0
    connections: int = 0

    @property
    def total(self) -> int:
        return self.tcp + self.udp

    def text(self) -> str:
        return (
            f"{self.total:,} B (TCP {self.tcp:,} B in {self.connections} connection(s), "
            f"UDP {self.udp:,} B in {self.datagrams} datagram(s))"
        )


class Capture:
    """tcpdump on `lo` for `tcp port T or udp port U ...` while the block runs."""

    def __init__(
        self,
        out: Path,
        tcp_ports: list[int],
        udp_ports: list[int],
        *,
        netns: str | None = None,
        interface: str = "lo",
    ) -> None:
        """netns, interface: capture on that interface of that network namespace instead."""
        self.out = out
        self.where = ["ip", "netns", "exec", netns] if netns else []
        self.interface = interface
        terms = [f"tcp port {p}" for p in tcp_ports] + [f"udp port {p}" for p in udp_ports]
        self.filter = " or ".join(terms)
        self.proc: subprocess.Popen[bytes] | None = None
        self.why_not = ""
        self.dropped: int | None = None
        self.packets: list[Packet] = []

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        tool = shutil.which("tcpdump")
        if tool is None:
            self.why_not = "tcpdump not installed (apt-get install -y tcpdump)"
            return
        err = self.out.with_suffix(".err")
        with open(err, "wb") as stderr:
            self.proc = subprocess.Popen(
                [*self.where, tool, "-i", self.interface, "-n", "-U", "--immediate-mode",
                 "-B", "16384", "-s", str(SNAPLEN), "-w", str(self.out), self.filter],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if b"listening on" in err.read_bytes():
                return
            if self.proc.poll() is not None:
                self.why_not = "tcpdump failed: " + err.read_text(errors="replace").strip()
                self.proc = None
                return
            time.sleep(0.02)
        self.stop()
        self.why_not = f"tcpdump did not start listening within {START_TIMEOUT:g} s"

    def stop(self) -> None:
        """Stop tcpdump (it flushes its file on SIGINT) and read what it captured."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        err = self.out.with_suffix(".err").read_text(errors="replace")
        for line in err.splitlines():
            if "dropped by kernel" in line:
                self.dropped = int(line.split()[0])
        try:
            self.packets = read_pcap(self.out)
        except (OSError, ValueError) as exc:
            self.why_not = f"could not read the capture: {exc}"

    def between(self, t0: float, t1: float) -> WireBytes | None:
        """Payload bytes seen in [t0, t1]; None when nothing could be captured."""
        if self.why_not:
            return None
        out = WireBytes()
        for p in self.packets:
            if not t0 <= p.at <= t1:
                continue
            out.packets += 1
            if p.proto == PROTO_TCP:
                out.tcp += p.payload
                out.connections += p.syn
            else:
                out.udp += p.payload
                out.datagrams += 1
        return out


def read_pcap(path: Path) -> list[Packet]:
    """Every IPv4 TCP or UDP packet of a classic pcap file. Raises ValueError if the file
    is not one."""
    data = path.read_bytes()
    if len(data) < 24:
        raise ValueError("no pcap header")
    magic = data[:4]
    orders = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
        b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
        b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }
    if magic not in orders:
        raise ValueError(f"not a classic pcap file (magic {magic.hex()})")
    order, tick = orders[magic]
    (link,) = struct.unpack_from(order + "I", data, 20)
    if link not in LINK_HEADERS:
        raise ValueError(f"link type {link} not understood")
    hdr_len, type_at = LINK_HEADERS[link]
    record = struct.Struct(order + "IIII")
    out = []
    pos = 24
    while pos + record.size <= len(data):
        sec, frac, incl, _orig = record.unpack_from(data, pos)
        pos += record.size
        frame = data[pos : pos + incl]
        pos += incl
        packet = _ipv4(frame, hdr_len, type_at, sec + frac * tick)
        if packet is not None:
            out.append(packet)
    return out


def _ipv4(frame: bytes, hdr_len: int, type_at: int, at: float) -> Packet | None:
    if len(frame) < hdr_len + 20 or int.from_bytes(frame[type_at : type_at + 2]) != ETH_IPV4:
        return None
    ip = frame[hdr_len:]
    ihl = (ip[0] & 0x0F) * 4
    total = int.from_bytes(ip[2:4])
    proto = ip[9]
    l4 = ip[ihl:]
    if proto == PROTO_TCP and len(l4) >= 14:
        doff = (l4[12] >> 4) * 4
        flags = l4[13]
        return Packet(
            at,
            proto,
            int.from_bytes(l4[0:2]),
            int.from_bytes(l4[2:4]),
            total - ihl - doff,
            bool(flags & TCP_SYN and not flags & TCP_ACK),
        )
    if proto == PROTO_UDP and len(l4) >= 8:
        return Packet(
            at, proto, int.from_bytes(l4[0:2]), int.from_bytes(l4[2:4]),
            int.from_bytes(l4[4:6]) - 8, False,
        )  # fmt: skip
    return None
