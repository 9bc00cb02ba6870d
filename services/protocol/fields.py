"""Checks of decoded fields: every value a peer sends is checked here before use."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from p2pshare.services.protocol.limits import (
    CHUNK_ALIGN,
    HEX_RE,
    MAX_CHUNK,
    MAX_NAME_BYTES,
    MIN_CHUNK,
    PROTOCOL_VERSION,
    SHA_RE,
    FileKey,
    MalformedMessage,
    MessageTooLarge,
    WrongVersion,
)

# ---------------------------------------------------------------- field checks


def _obj(data: bytes, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise MessageTooLarge(f"{len(data)} bytes, limit {limit}")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting
        raise MalformedMessage("not JSON") from exc
    if not isinstance(raw, dict):
        raise MalformedMessage("not a JSON object")
    return raw


def _int(raw: dict[str, Any], key: str, low: int, high: int) -> int:
    value = raw.get(key)
    if type(value) is not int or not low <= value <= high:
        raise MalformedMessage(f"{key!r} must be an integer in [{low}, {high}]")
    return value


def _num(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedMessage(f"{key!r} must be a number")
    return float(value)


def _str(raw: dict[str, Any], key: str, max_bytes: int) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise MalformedMessage(f"{key!r} must be a string")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise MessageTooLarge(f"{key!r} longer than {max_bytes} bytes")
    if not value.isprintable():
        raise MalformedMessage(f"{key!r} contains control characters")
    return value


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise MalformedMessage(f"{key!r} must be true or false")
    return value


def _hex(raw: dict[str, Any], key: str, length: int) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or len(value) != length or not HEX_RE.fullmatch(value):
        raise MalformedMessage(f"{key!r} must be {length} lowercase hex digits")
    return value


def check_sha(value: object) -> str:
    if not isinstance(value, str) or not SHA_RE.fullmatch(value):
        raise MalformedMessage("not a SHA-256 in lowercase hex")
    return value


_DRIVE_RE = re.compile(r"[A-Za-z]:")
_BAD_PARTS = frozenset(("", ".", ".."))
MAX_PART_BYTES = 255


def check_name(name: object) -> str:
    """A relative '/'-separated file name that cannot leave the folder it lands in.

    Run on every entry of every catalog page (a million-file catalog is a million
    names), so each rule is one pass in C where it can be."""
    if not isinstance(name, str) or not name:
        raise MalformedMessage("file name must be a non-empty string")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedMessage("file name is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise MessageTooLarge("file name too long")
    if not name.isprintable() or "\\" in name:
        raise MalformedMessage("file name contains control characters or backslashes")
    if name[0] == "/" or _DRIVE_RE.match(name):
        raise MalformedMessage("file name is absolute")
    parts = name.split("/")
    if not _BAD_PARTS.isdisjoint(parts):
        raise MalformedMessage("file name has an empty, '.' or '..' part")
    if len(encoded) > MAX_PART_BYTES and any(
        len(part.encode("utf-8")) > MAX_PART_BYTES for part in parts
    ):
        raise MalformedMessage("file name has a part longer than 255 bytes")
    return name


def check_chunk_size(value: int) -> int:
    if value % CHUNK_ALIGN:
        raise MalformedMessage(f"chunk size {value} is not a multiple of {CHUNK_ALIGN}")
    return value


def _file_key(raw: dict[str, Any]) -> FileKey:
    return FileKey(
        check_sha(raw.get("sha")),
        check_chunk_size(_int(raw, "cs", MIN_CHUNK, MAX_CHUNK)),
        check_sha(raw.get("rt")),
    )


def _key_fields(key: FileKey) -> dict[str, Any]:
    return {"sha": key.sha256, "cs": key.chunk_size, "rt": key.root}


def _check_version(raw: dict[str, Any], what: str) -> None:
    version = raw.get("p2p")
    if type(version) is int and version != PROTOCOL_VERSION and 0 < version < 1000:
        raise WrongVersion(
            f"{what} speaks p2pshare protocol v{version}; this node speaks v{PROTOCOL_VERSION}"
        )
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise WrongVersion(f"{what} is not p2pshare (no protocol version)")
