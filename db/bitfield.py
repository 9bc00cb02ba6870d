"""Bitfields: which chunks a peer or a download holds, one bit a chunk, most significant
first (as in BitTorrent). Pure code, shared by the database layer and the protocol."""

from __future__ import annotations


def bitfield_empty(count: int) -> bytearray:
    return bytearray((count + 7) // 8)


def bitfield_full(count: int) -> bytes:
    """The bitfield of `count` chunks all held."""
    bits = bitfield_empty(count)
    for i in range(count):
        bitfield_set(bits, i)
    return bytes(bits)


def bitfield_set(bits: bytearray, index: int) -> None:
    bits[index >> 3] |= 0x80 >> (index & 7)


def bitfield_has(bits: bytes | bytearray | None, index: int) -> bool:
    """Bit `index` of a bitfield; None means every bit is set."""
    if bits is None:
        return True
    byte = index >> 3
    return byte < len(bits) and bool(bits[byte] & (0x80 >> (index & 7)))


def bitfield_count(bits: bytes | bytearray) -> int:
    return sum(bin(b).count("1") for b in bits)


def bitfield_indices(bits: bytes | bytearray | None, count: int) -> list[int]:
    return [i for i in range(count) if bitfield_has(bits, i)]
