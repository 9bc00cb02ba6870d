"""Bitfields on the wire: the helpers live with the database (`db.bitfield`), which stores
them too; what the protocol adds is the check of a peer's bitfield."""

from __future__ import annotations

from p2pshare.db.bitfield import (
    bitfield_count,
    bitfield_empty,
    bitfield_has,
    bitfield_indices,
    bitfield_set,
)
from p2pshare.services.protocol.limits import MalformedMessage

__all__ = ["bitfield_count", "bitfield_empty", "bitfield_has", "bitfield_indices", "bitfield_set"]


def _check_bitfield(bits: bytes, count: int) -> None:
    if len(bits) != (count + 7) // 8:
        raise MalformedMessage("bitfield length does not match the chunk count")
    spare = len(bits) * 8 - count
    if spare and bits[-1] & ((1 << spare) - 1):
        raise MalformedMessage("bitfield has bits past the last chunk")
