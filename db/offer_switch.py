"""Moving a download whose offer no usable peer makes any more to another offer: the same
content under another manifest, or the version now offered under its name by the identity
that offered the original (a certificate proven over TLS), never another's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, text, update

from .bitfield import bitfield_empty, bitfield_has, bitfield_set
from .downloads import offer_peers
from .jobs import entries as _entries
from .schema import downloads, files, holdings
from .status import UNFINISHED, Status


def _download(conn: Connection, download_id: int) -> Row[Any] | None:
    return conn.execute(select(downloads).where(downloads.c.id == download_id)).first()


def _file(conn: Connection, file_id: int) -> Row[Any] | None:
    return conn.execute(select(files).where(files.c.id == file_id)).first()


@dataclass(frozen=True)
class OfferChange:
    """What switch_offer did to a download whose offer no usable peer makes any more."""

    reason: str
    ended: bool  # a pinned download (NAME@SHA) whose version left every peer: it failed
    sha256: str  # the content it fetches now (unchanged when only the manifest moved)
    size: int


def switch_offer(conn: Connection, download_id: int) -> OfferChange | None:
    """Move a download whose offer no usable peer makes any more to one that live, not-bad
    peers make: another offer of the same SHA-256 (another manifest root or chunk size),
    else, when that SHA-256 has left every peer, the version now offered under its name.

    A bare-name download follows its name to another version only when a peer with a
    certificate in `offered_by` offers it (proven over TLS: the identity that offered the
    original); otherwise, like a pinned download (asked as NAME@SHA), it fails naming the
    versions offered instead. Returns None when there is nothing to move to (the download
    waits). The caller ends the job; the downloader starts it again on the new offer.
    """
    d = _download(conn, download_id)
    if d is None or d.status not in UNFINISHED or d.file_id is None:  # None: a torrent's
        return None
    offers = offer_peers(conn, {d.sha256})[d.sha256]
    if offers.get(d.file_id, 0) > 0:
        return None  # its peers are listed, only not answering now: wait for them
    usable = {fid: n for fid, n in offers.items() if n > 0 and _manifest_known(conn, fid)}
    if usable:
        fid = max(usable, key=lambda f: (usable[f], -f))
        new, old = _file(conn, fid), _file(conn, d.file_id)
        assert new is not None and old is not None
        old_root, new_root = old.root, new.root
        return _move(
            conn,
            d,
            new,
            lambda kept: (
                f"switched to the manifest {new_root[:12]} offered by "
                f"{_peers(usable[fid])}: no usable peer offers {old_root[:12]} any more "
                f"({kept} verified chunks kept)"
            ),
        )
    offered = _versions_offered(conn, d.name, d.sha256)
    if not offered:
        return None
    listed = ", ".join(f"{d.name}@{sha[:8]}" for sha in sorted(offered))
    gone = f"no online peer offers {d.name}@{d.sha256[:8]} any more"
    if d.pinned:
        return OfferChange(f"{gone}; offered now: {listed}", True, d.sha256, d.size)
    identities = _identities(d.offered_by)
    versions = _versions_from(conn, d.name, d.sha256, identities)
    if not versions:
        if _offered_by_identities(conn, d.name, d.sha256, identities):
            return None  # its identity offers a version whose manifest did not come yet
        return OfferChange(f"{gone}; {_not_followed(identities)}: {listed}", True, d.sha256, d.size)
    sha = max(versions, key=lambda v: (versions[v][1], v))
    fid, peers = versions[sha]
    new = _file(conn, fid)
    assert new is not None
    old_sha = d.sha256
    return _move(
        conn,
        d,
        new,
        lambda kept: (
            f"switched to {d.name}@{sha[:8]} offered by {_peers(peers)} with the certificate "
            f"that offered {old_sha[:8]}: no online peer offers that version any more "
            f"({kept} verified chunks kept)"
        ),
    )


def _not_followed(identities: set[str]) -> str:
    """Why the download does not take the versions offered now, for its reason."""
    if not identities:
        return (
            "no peer that offered it proved its certificate over TLS, so it follows no "
            "other version (download NAME@SHA to take one); offered now"
        )
    return (
        "the peers that offered it offer no other version, and it follows no other "
        "identity's (download NAME@SHA to take one); offered now by others"
    )


def _peers(n: int) -> str:
    return f"{n} peer{'s' if n != 1 else ''}"


def offers_to_hash(conn: Connection, download_id: int) -> set[int]:
    """The offers switch_offer could move this download to but for their manifests,
    which are fetched when a download needs one: the caller fetches these first."""
    d = _download(conn, download_id)
    if d is None or d.status not in UNFINISHED or d.file_id is None:
        return set()
    offers = offer_peers(conn, {d.sha256})[d.sha256]
    if offers.get(d.file_id, 0) > 0:
        return set()
    lacking = {f for f, n in offers.items() if n > 0 and not _manifest_known(conn, f)}
    if d.pinned:
        return lacking
    # Only the versions it may follow: another identity's offers are never fetched for it.
    for fid in _offered_by_identities(conn, d.name, d.sha256, _identities(d.offered_by)):
        if not _manifest_known(conn, fid):
            lacking.add(fid)
    return lacking


def _names_other_shas(conn: Connection, name: str, sha256: str) -> set[str]:
    return set(
        conn.scalars(
            select(files.c.sha256)
            .join(holdings, holdings.c.file_id == files.c.id)
            .where(holdings.c.name == name, files.c.sha256 != sha256)
        )
    )


def _manifest_known(conn: Connection, file_id: int) -> bool:
    file = _file(conn, file_id)
    return file is not None and len(_entries(conn, file_id)) == file.chunk_count


def _identities(offered_by: str | None) -> set[str]:
    return set(offered_by.split(",")) if offered_by else set()


def _versions_offered(conn: Connection, name: str, sha256: str) -> set[str]:
    """The other contents live, not-bad peers offer under `name`, whoever they are."""
    shas = _names_other_shas(conn, name, sha256)
    return {sha for sha, offers in offer_peers(conn, shas).items() if any(offers.values())}


def _offered_by_identities(
    conn: Connection, name: str, sha256: str, identities: set[str]
) -> dict[int, int]:
    """Offers (file id -> peers) of other contents under `name` made by live, not-bad
    peers whose certificate, proven over TLS, is one of `identities`."""
    if not identities:
        return {}
    rows = conn.execute(
        text(
            "SELECT f.id, count(DISTINCT p.id) FROM holdings h"
            " JOIN files f ON f.id = h.file_id JOIN peers p ON p.id = h.peer_id"
            " WHERE h.name = :name AND f.sha256 != :sha AND h.chunks_held > 0"
            " AND p.tls AND p.fingerprint IN (SELECT value FROM json_each(:fps))"
            " AND NOT EXISTS (SELECT 1 FROM bad_peers b WHERE b.file_id = f.id"
            " AND b.address = p.address AND b.tcp_port = p.tcp_port)"
            " GROUP BY f.id"
        ),
        {"name": name, "sha": sha256, "fps": json.dumps(sorted(identities))},
    )
    return {int(fid): int(n) for fid, n in rows}


def _versions_from(
    conn: Connection, name: str, sha256: str, identities: set[str]
) -> dict[str, tuple[int, int]]:
    """Other contents the download's identities offer under `name`: per SHA-256, the offer
    most of their peers make (file id, peers). Only offers whose manifest is here count."""
    out: dict[str, tuple[int, int]] = {}
    for fid, n in _offered_by_identities(conn, name, sha256, identities).items():
        file = _file(conn, fid)
        if file is None or not _manifest_known(conn, fid):
            continue
        best = out.get(file.sha256)
        if best is None or (n, -fid) > (best[1], -best[0]):
            out[file.sha256] = (fid, n)
    return out


def _move(
    conn: Connection, d: Row[Any], new: Row[Any], because: Callable[[int], str]
) -> OfferChange:
    """Point the download at another offer, keeping the verified chunks both manifests
    agree on: the same entries before and after a chunk mean the same bytes in it, so
    nothing proven under one manifest is trusted under another on faith (a rewritten file
    keeps its unchanged start)."""
    old = _file(conn, d.file_id)
    assert old is not None
    new_entries = _entries(conn, new.id)
    have = bitfield_empty(new.chunk_count)
    kept = 0
    if new.chunk_size == old.chunk_size and d.have:
        old_entries = _entries(conn, old.id)
        for i in range(min(len(old_entries), len(new_entries))):
            if not bitfield_has(d.have, i):
                continue
            same_before = i == 0 or old_entries[i - 1] == new_entries[i - 1]
            if same_before and old_entries[i] == new_entries[i]:
                bitfield_set(have, i)
                kept += 1
    reason = because(kept)
    conn.execute(
        update(downloads)
        .where(downloads.c.id == d.id)
        .values(
            file_id=new.id,
            sha256=new.sha256,
            have=bytes(have),
            size=new.size,
            bytes_done=sum(
                min(new.chunk_size, new.size - i * new.chunk_size)
                for i in range(new.chunk_count)
                if bitfield_has(have, i)
            ),
            status=Status.QUEUED,
            reason=reason,
            switched=reason,
        )
    )
    return OfferChange(reason, False, new.sha256, new.size)
