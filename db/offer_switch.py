"""Moving a download whose offer no usable peer makes any more to another offer: the same
content under another manifest, or the version now offered under its name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from p2pshare.db.downloads import offer_peers
from p2pshare.db.jobs import entries as _entries
from p2pshare.db.models import Download, File, Holding
from p2pshare.db.queueing import UNFINISHED
from p2pshare.services.protocol.bitfield import bitfield_empty, bitfield_has, bitfield_set


@dataclass(frozen=True)
class OfferChange:
    """What switch_offer did to a download whose offer no usable peer makes any more."""

    reason: str
    ended: bool  # a pinned download (NAME@SHA) whose version left every peer: it failed
    sha256: str  # the content it fetches now (unchanged when only the manifest moved)
    size: int


def switch_offer(session: Session, download_id: int) -> OfferChange | None:
    """Move a download whose offer no usable peer makes any more to one that live, not-bad
    peers make: another offer of the same SHA-256 (another manifest root or chunk size),
    else, when that SHA-256 has left every peer, the version now offered under its name.

    A pinned download (asked as NAME@SHA) never changes version: it fails, naming the
    versions offered instead. Returns None when there is nothing to move to (the download
    waits). The caller ends the job; the downloader starts it again on the new offer.
    """
    d = session.get(Download, download_id)
    if d is None or d.status not in UNFINISHED or d.file_id is None:  # None: a torrent's
        return None
    offers = offer_peers(session, {d.sha256})[d.sha256]
    if offers.get(d.file_id, 0) > 0:
        return None  # its peers are listed, only not answering now: wait for them
    usable = {fid: n for fid, n in offers.items() if n > 0 and _manifest_known(session, fid)}
    if usable:
        fid = max(usable, key=lambda f: (usable[f], -f))
        new, old = session.get(File, fid), session.get(File, d.file_id)
        assert new is not None and old is not None
        old_root, new_root = old.root, new.root
        return _move(
            session,
            d,
            new,
            lambda kept: (
                f"switched to the manifest {new_root[:12]} offered by "
                f"{_peers(usable[fid])}: no usable peer offers {old_root[:12]} any more "
                f"({kept} verified chunks kept)"
            ),
        )
    versions = _other_versions(session, d.name, d.sha256)
    if not versions:
        return None
    if d.pinned:
        listed = ", ".join(f"{d.name}@{sha[:8]}" for sha in sorted(versions))
        reason = f"no online peer offers {d.name}@{d.sha256[:8]} any more; offered now: {listed}"
        return OfferChange(reason, True, d.sha256, d.size)
    sha = max(versions, key=lambda v: (versions[v][1], v))
    fid, peers = versions[sha]
    new = session.get(File, fid)
    assert new is not None
    old_sha = d.sha256
    return _move(
        session,
        d,
        new,
        lambda kept: (
            f"switched to {d.name}@{sha[:8]} offered by {_peers(peers)}: no online "
            f"peer offers the version {old_sha[:8]} any more ({kept} verified chunks kept)"
        ),
    )


def _peers(n: int) -> str:
    return f"{n} peer{'s' if n != 1 else ''}"


def offers_to_hash(session: Session, download_id: int) -> set[int]:
    """The offers switch_offer could move this download to but for their manifests,
    which are fetched when a download needs one: the caller fetches these first."""
    d = session.get(Download, download_id)
    if d is None or d.status not in UNFINISHED or d.file_id is None:
        return set()
    offers = offer_peers(session, {d.sha256})[d.sha256]
    if offers.get(d.file_id, 0) > 0:
        return set()
    lacking = {f for f, n in offers.items() if n > 0 and not _manifest_known(session, f)}
    shas = _names_other_shas(session, d.name, d.sha256)
    for other in offer_peers(session, shas).values():
        lacking |= {f for f, n in other.items() if n > 0 and not _manifest_known(session, f)}
    return lacking


def _names_other_shas(session: Session, name: str, sha256: str) -> set[str]:
    return set(
        session.scalars(
            select(File.sha256)
            .join(Holding, Holding.file_id == File.id)
            .where(Holding.name == name, File.sha256 != sha256)
        )
    )


def _manifest_known(session: Session, file_id: int) -> bool:
    file = session.get(File, file_id)
    return file is not None and len(_entries(session, file_id)) == file.chunk_count


def _other_versions(session: Session, name: str, sha256: str) -> dict[str, tuple[int, int]]:
    """Other contents live, not-bad peers offer under `name`: per SHA-256, the offer most
    of them make (file id, peers). Only offers whose manifest is here can be fetched."""
    shas = _names_other_shas(session, name, sha256)
    out = {}
    for sha, offers in offer_peers(session, shas).items():
        usable = {f: n for f, n in offers.items() if n > 0 and _manifest_known(session, f)}
        if usable:
            fid = max(usable, key=lambda f: (usable[f], -f))
            out[sha] = (fid, usable[fid])
    return out


def _move(session: Session, d: Download, new: File, because: Callable[[int], str]) -> OfferChange:
    """Point the download at another offer, keeping the verified chunks both manifests
    agree on: the same entries before and after a chunk mean the same bytes in it, so
    nothing proven under one manifest is trusted under another on faith (a rewritten file
    keeps its unchanged start)."""
    old = session.get(File, d.file_id)
    assert old is not None
    new_entries = _entries(session, new.id)
    have = bitfield_empty(new.chunk_count)
    kept = 0
    if new.chunk_size == old.chunk_size and d.have:
        old_entries = _entries(session, old.id)
        for i in range(min(len(old_entries), len(new_entries))):
            if not bitfield_has(d.have, i):
                continue
            same_before = i == 0 or old_entries[i - 1] == new_entries[i - 1]
            if same_before and old_entries[i] == new_entries[i]:
                bitfield_set(have, i)
                kept += 1
    d.file_id, d.sha256, d.have, d.size = new.id, new.sha256, bytes(have), new.size
    d.bytes_done = sum(
        min(new.chunk_size, new.size - i * new.chunk_size)
        for i in range(new.chunk_count)
        if bitfield_has(have, i)
    )
    d.status = "queued"
    d.reason = d.switched = because(kept)
    return OfferChange(d.reason, False, new.sha256, new.size)
