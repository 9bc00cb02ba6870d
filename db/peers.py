"""Queries behind discovery: peers, their catalogs and which chunks they hold."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from p2pshare.db.engine import driver_connection
from p2pshare.db.index import ContentKey, HashedFile, orphan_file
from p2pshare.db.models import File, Peer, RetiredNode
from p2pshare.db.node import node_state


@dataclass(frozen=True)
class Heard:
    """An announcement as the listener passes it to the database."""

    node_id: str
    username: str
    address: str
    tcp_port: int
    catalog_version: int
    seq: int
    fingerprint: str | None = None
    tls: bool = False


@dataclass(frozen=True)
class AnnounceOutcome:
    peer_id: int | None  # None: refused, or our own
    new: bool  # a node id we had not heard before
    needs_catalog: bool
    ignored: bool = False  # our own announcement, heard back
    refused: str | None = None  # why it changed nothing


_T = TypeVar("_T")

# Values bound in one IN (...): well under SQLite's limit on bound parameters.
SLICE = 500
OWN = AnnounceOutcome(None, False, False, ignored=True)
# An announcer sends a few announcements a second at most; a larger jump in
# sequence numbers is a forgery trying to make the real ones look like replays.
MAX_SEQ_JUMP = 100_000
# Far longer than any replay window (a few announce intervals).
RETIRED_KEEP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Offered:
    """One entry of a peer's catalog, after validation."""

    name: str
    sha256: str
    chunk_size: int
    root: str
    size: int
    have: bytes | None  # None: every chunk
    chunks_held: int

    @property
    def key(self) -> ContentKey:
        return (self.sha256, self.chunk_size, self.root)


def record_announce(session: Session, heard: Heard, *, now: float) -> AnnounceOutcome:
    """Create or refresh the peer; our own, a replayed or an older announcement changes nothing."""
    return record_announces(session, [heard], now=now)[0]


def record_announces(
    session: Session, heards: Sequence[Heard], *, now: float
) -> list[AnnounceOutcome]:
    """record_announce for each of many announcements, in order, with one lookup of the
    peers they name (a boot storm or a steady round of 1,000 peers is a few statements)."""
    state = node_state(session)
    batch = _Batch(session, [h for h in heards if h.node_id != state.node_id])
    out = [OWN if h.node_id == state.node_id else batch.record(h, now) for h in heards]
    if batch.created:
        state.announce_wanted_at = now  # the announcer answers newcomers at once
    return out


def _slices(values: Sequence[_T], size: int = SLICE) -> Iterable[Sequence[_T]]:
    return (values[start : start + size] for start in range(0, len(values), size))


class _Batch:
    """What record_announces looks up, read once for all of its announcements and kept
    up to date as it goes. The ORM objects are held here: the session's identity map
    keeps an unchanged object only while something refers to it, and each `get` of
    one it dropped is a query."""

    def __init__(self, session: Session, heards: Sequence[Heard]) -> None:
        self.session = session
        self.created = 0
        ids = sorted({h.node_id for h in heards})
        self.peers: dict[str, Peer] = {}
        for part in _slices(ids):
            for peer in session.scalars(select(Peer).where(Peer.node_id.in_(part))):
                self.peers[peer.node_id] = peer
        unknown = [n for n in ids if n not in self.peers]
        self.retired: dict[str, RetiredNode] = {}
        for part in _slices(unknown):
            for node in session.scalars(select(RetiredNode).where(RetiredNode.node_id.in_(part))):
                self.retired[node.node_id] = node
        # Peers at the endpoints where new node ids announce (a restart there replaces them).
        new = set(unknown)
        ends = sorted({(h.address, h.tcp_port) for h in heards if h.node_id in new})
        self.at: dict[tuple[str, int], list[Peer]] = {end: [] for end in ends}
        for some in _slices(ends, SLICE // 2):
            query = select(Peer).where(tuple_(Peer.address, Peer.tcp_port).in_(some))
            for peer in session.scalars(query):
                self.at[(peer.address, peer.tcp_port)].append(peer)

    def record(self, heard: Heard, now: float) -> AnnounceOutcome:
        peer = self.peers.get(heard.node_id)
        if peer is not None:
            before = (peer.address, peer.tcp_port)
            outcome = _update(peer, heard, now)
            if (peer.address, peer.tcp_port) != before:
                self._moved(peer, before)
            return outcome
        return self._create(heard, now)

    def _moved(self, peer: Peer, before: tuple[str, int]) -> None:
        if before in self.at:
            self.at[before].remove(peer)
        if (peer.address, peer.tcp_port) in self.at:
            self.at[(peer.address, peer.tcp_port)].append(peer)

    def _create(self, heard: Heard, now: float) -> AnnounceOutcome:
        session = self.session
        retired = self.retired.get(heard.node_id)
        if retired is not None:
            if retired.replaced:
                return _refused("announcement from a node id that a restart replaced")
            if heard.seq <= retired.last_seq:
                return _refused(f"replayed announcement (seq {heard.seq}) of an expired peer")
            session.delete(retired)  # an expired peer back after an outage
            del self.retired[heard.node_id]
        # A node restarted on the same endpoint is the same machine with a new id:
        # its old self and everything that offered goes now, not after the TTL.
        here = self.at.setdefault((heard.address, heard.tcp_port), [])
        for old in here:
            self.retired[old.node_id] = session.merge(
                RetiredNode(
                    node_id=old.node_id, retired_at=now, last_seq=old.announce_seq, replaced=True
                )
            )
            session.delete(old)
            self.peers.pop(old.node_id, None)
        peer = Peer(
            node_id=heard.node_id,
            username=heard.username,
            address=heard.address,
            tcp_port=heard.tcp_port,
            catalog_version=heard.catalog_version,
            announce_seq=heard.seq,
            catalog_synced=-1,
            fingerprint=heard.fingerprint,
            tls=heard.tls,
            first_seen=now,
            last_seen=now,
        )
        session.add(peer)
        session.flush()
        here[:] = [peer]
        self.peers[heard.node_id] = peer
        self.created += 1
        return AnnounceOutcome(peer.id, True, True)


def _update(peer: Peer, heard: Heard, now: float) -> AnnounceOutcome:
    """Refresh a known peer from its announcement, or say why it is refused."""
    if heard.seq <= peer.announce_seq:
        return _refused(f"replayed announcement (seq {heard.seq})")
    if heard.seq > peer.announce_seq + MAX_SEQ_JUMP:
        return _refused(f"sequence number jumps from {peer.announce_seq} to {heard.seq}")
    if (heard.username, heard.address) != (peer.username, peer.address):
        # A node id is one run of one announcer: its name and address cannot change.
        return _refused(f"node id already belongs to {peer.username} at {peer.address}")
    if (heard.fingerprint, heard.tls) != (peer.fingerprint, peer.tls):
        # Nor its identity: a restart keeps the certificate but takes a new node id.
        return _refused(f"node id already belongs to the certificate {peer.fingerprint}")
    peer.tcp_port = heard.tcp_port
    peer.catalog_version, peer.announce_seq, peer.last_seen = (
        heard.catalog_version,
        heard.seq,
        now,
    )
    # Only a newer version than the one we hold: a node's catalog version only grows
    # (a restart is a new node id), so an equal or older one is nothing to fetch.
    return AnnounceOutcome(peer.id, False, heard.catalog_version > peer.catalog_synced)


def _refused(reason: str) -> AnnounceOutcome:
    return AnnounceOutcome(None, False, False, refused=reason)


def expire_peers(session: Session, *, now: float, ttl: float) -> list[str]:
    """Forget peers silent for `ttl` seconds, with all they offered. Returns their names."""
    session.execute(delete(RetiredNode).where(RetiredNode.retired_at < now - RETIRED_KEEP_SECONDS))
    gone = list(session.scalars(select(Peer).where(Peer.last_seen < now - ttl)))
    for peer in gone:
        session.merge(
            RetiredNode(
                node_id=peer.node_id, retired_at=now, last_seq=peer.announce_seq, replaced=False
            )
        )
        session.delete(peer)
    return [f"{p.username} ({p.address}:{p.tcp_port})" for p in gone]


@dataclass(frozen=True)
class KnownContent:
    file_id: int
    size: int
    complete: bool  # chunk hashes are here (or the file is empty)


def known_contents(session: Session, keys: Iterable[ContentKey]) -> dict[ContentKey, KnownContent]:
    """What this database already knows of each (sha256, chunk_size, root)."""
    # Plain sqlite3: every catalog fetched runs this twice, and building the statements
    # through SQLAlchemy cost ten times what SQLite spends answering them.
    conn = driver_connection(session)
    keys = set(keys)
    shas = sorted({sha for sha, _, _ in keys})
    out: dict[ContentKey, KnownContent] = {}
    for start in range(0, len(shas), SLICE):
        part = shas[start : start + SLICE]
        rows = conn.execute(
            "SELECT f.sha256, f.chunk_size, f.root, f.id, f.size, f.chunk_count,"
            " EXISTS (SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.chunk_index = 0)"
            f" FROM files f WHERE f.sha256 IN ({','.join('?' * len(part))})",
            part,
        )
        for sha, cs, root, fid, size, count, hashed in rows:
            if (sha, cs, root) in keys:
                out[(sha, cs, root)] = KnownContent(fid, size, count == 0 or bool(hashed))
    return out


def apply_catalog(
    session: Session,
    peer_id: int,
    version: int,
    offered: Sequence[Offered],
    manifests: dict[ContentKey, list[str]],
    *,
    now: float,
    node_id: str | None = None,
) -> int | None:
    """Replace a peer's holdings with its catalog. Returns entries kept, None if the peer is gone
    (or, given `node_id`, if `peer_id` now belongs to another node).

    Entries whose content is new here but came without a manifest (the caller passes
    only manifests that proved their root), or whose size contradicts what we already
    know of that content, are left out. Written in bulk: a 10,000-file catalog is a few statements.
    """
    conn = driver_connection(session)
    row = conn.execute("SELECT node_id FROM peers WHERE id = ?", (peer_id,)).fetchone()
    if row is None or (node_id is not None and row[0] != node_id):
        return None
    known = known_contents(session, (o.key for o in offered))
    created = _add_contents(session, known, _missing(known, offered, manifests), now=now)
    wanted: dict[tuple[int, str], Offered] = {}
    for entry in offered:
        key = entry.key
        content = known.get(key)
        if content is not None and content.size != entry.size:
            continue  # a lie, or a collision; never let it overwrite what we know
        file_id = created.get(key) if content is None or not content.complete else content.file_id
        if file_id is not None:
            wanted[(file_id, entry.name)] = entry
    _replace_holdings(session, peer_id, wanted)
    conn.execute("UPDATE peers SET catalog_synced = ? WHERE id = ?", (version, peer_id))
    # Plain sqlite3 (an ORM `get` per catalog cost as much as the rest): a Peer this
    # session still holds learns the new value too.
    cached = session.identity_map.get(session.identity_key(Peer, peer_id))
    if cached is not None:
        set_committed_value(cached, "catalog_synced", version)
    return len(wanted)


def record_contents(
    session: Session,
    offered: Sequence[Offered],
    manifests: dict[ContentKey, list[str]],
    *,
    now: float,
) -> int:
    """Record the contents (`files` and chunk hashes) of catalog entries new here; returns how many.

    So a large catalog can be applied in several short transactions: its contents in
    slices first, then `apply_catalog` (which records any that went meanwhile) in one.
    """
    known = known_contents(session, (o.key for o in offered))
    missing = _missing(known, offered, manifests)
    _add_contents(session, known, missing, now=now)
    return len(missing)


def _add_contents(
    session: Session,
    known: dict[ContentKey, KnownContent],
    missing: dict[ContentKey, HashedFile],
    *,
    now: float,
) -> dict[ContentKey, int]:
    """Insert the `files` rows (of contents not known) and chunk hashes of `missing`, as
    `known` found them in this transaction; returns their file ids."""
    conn = driver_connection(session)
    ids: dict[ContentKey, int] = {}
    for key, h in missing.items():
        content = known.get(key)
        if content is not None:
            ids[key] = content.file_id
            continue
        cur = conn.execute(
            "INSERT INTO files (sha256, size, chunk_size, root, chunk_count, first_seen)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (h.sha256, h.size, h.chunk_size, h.root, len(h.chunk_hashes), now),
        )
        assert cur.lastrowid is not None
        ids[key] = cur.lastrowid
    conn.executemany(
        "INSERT OR IGNORE INTO chunks (file_id, chunk_index, size, sha256) VALUES (?, ?, ?, ?)",
        (
            (ids[key], i, size, digest)
            for key, h in missing.items()
            for i, (size, digest) in enumerate(zip(h.chunk_sizes, h.chunk_hashes, strict=True))
        ),
    )
    return ids


def _missing(
    known: dict[ContentKey, KnownContent],
    offered: Sequence[Offered],
    manifests: dict[ContentKey, list[str]],
) -> dict[ContentKey, HashedFile]:
    """Contents offered that this database lacks (or lacks the chunk hashes of) and whose
    manifest came and fits the offered size."""
    missing: dict[ContentKey, HashedFile] = {}
    for entry in offered:
        key = entry.key
        content = known.get(key)
        if content is not None and content.complete:
            continue
        hashes = manifests.get(key)
        fits = hashes is not None and len(hashes) == -(-entry.size // entry.chunk_size)
        if fits and hashes is not None and (content is None or content.size == entry.size):
            missing[key] = _hashed(entry, hashes)
    return missing


def live_node_ids(session: Session) -> set[str]:
    """The node ids of every peer still known."""
    return set(session.scalars(select(Peer.node_id)))


def delete_orphan_files_after(
    session: Session, after_id: int, limit: int
) -> tuple[int, int | None]:
    """Delete the orphans among the `limit` files rows after id `after_id`, so a large table
    is swept in short transactions. Returns (rows deleted, last id looked at, or None
    once past the last row)."""
    ids = list(
        session.scalars(select(File.id).where(File.id > after_id).order_by(File.id).limit(limit))
    )
    if not ids:
        return 0, None
    result = session.execute(
        delete(File).where(File.id >= ids[0], File.id <= ids[-1], orphan_file())
    )
    return result.rowcount or 0, ids[-1]  # type: ignore[attr-defined]


def _replace_holdings(
    session: Session, peer_id: int, wanted: dict[tuple[int, str], Offered]
) -> None:
    conn = driver_connection(session)
    existing = {
        (file_id, name): (hid, held, bits)
        for hid, file_id, name, held, bits in conn.execute(
            "SELECT id, file_id, name, chunks_held, bitfield FROM holdings WHERE peer_id = ?",
            (peer_id,),
        )
    }
    gone = [row[0] for key, row in existing.items() if key not in wanted]
    for start in range(0, len(gone), SLICE):
        part = gone[start : start + SLICE]
        conn.execute(f"DELETE FROM holdings WHERE id IN ({','.join('?' * len(part))})", part)
    new, changed = [], []
    for (file_id, name), entry in wanted.items():
        row = existing.get((file_id, name))
        if row is None:
            new.append((peer_id, file_id, name, entry.chunks_held, entry.have))
        elif (row[1], row[2]) != (entry.chunks_held, entry.have):
            changed.append((entry.chunks_held, entry.have, row[0]))
    conn.executemany(
        "INSERT INTO holdings (peer_id, file_id, name, chunks_held, bitfield)"
        " VALUES (?, ?, ?, ?, ?)",
        new,
    )
    conn.executemany("UPDATE holdings SET chunks_held = ?, bitfield = ? WHERE id = ?", changed)


def _hashed(entry: Offered, hashes: list[str]) -> HashedFile:
    sizes = [min(entry.chunk_size, entry.size - i * entry.chunk_size) for i in range(len(hashes))]
    return HashedFile(entry.size, 0, entry.sha256, entry.chunk_size, hashes, sizes, entry.root)
