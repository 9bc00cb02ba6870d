"""Bitfields: which chunks a peer holds, one bit a chunk, most significant first."""

from __future__ import annotations

from p2pshare.services.protocol.limits import MalformedMessage

# ---------------------------------------------------------------- bitfields


def bitfield_empty(count: int) -> bytearray:
    return bytearray((count + 7) // 8)


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


def _check_bitfield(bits: bytes, count: int) -> None:
    if len(bits) != (count + 7) // 8:
        raise MalformedMessage("bitfield length does not match the chunk count")
    spare = len(bits) * 8 - count
    if spare and bits[-1] & ((1 << spare) - 1):
        raise MalformedMessage("bitfield has bits past the last chunk")
