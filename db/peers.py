"""Queries behind discovery: peers as their announcements make them known, and forgotten
when silent (their catalogs are `db.catalogs`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from p2pshare.db.engine import driver_connection
from p2pshare.db.inlists import SLICE, in_slices, marks
from p2pshare.db.models import Peer, RetiredNode
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
    catalog_epoch: str | None = None
    # Whether the announcement is signed by the key of `fingerprint` (its certificate):
    # asked only when it would retire another node id or move one to another address,
    # since checking a signature costs far more than recording an announcement.
    proof: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)


@dataclass(frozen=True)
class AnnounceOutcome:
    peer_id: int | None  # None: refused, or our own
    new: bool  # a node id we had not heard before
    needs_catalog: bool
    ignored: bool = False  # our own announcement, heard back
    refused: str | None = None  # why it changed nothing


_T = TypeVar("_T")

OWN = AnnounceOutcome(None, False, False, ignored=True)
# An announcer sends a few announcements a second at most; a larger jump in
# sequence numbers is a forgery trying to make the real ones look like replays.
MAX_SEQ_JUMP = 100_000
# Far longer than any replay window (a few announce intervals).
RETIRED_KEEP_SECONDS = 24 * 3600


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
    batch.write()
    if batch.created:
        state.announce_wanted_at = now  # the announcer answers newcomers at once
    return out


_PEER_COLUMNS = (
    "id, node_id, username, address, tcp_port, catalog_version, announce_seq, catalog_synced,"
    " fingerprint, tls, catalog_epoch"
)


class _Row:
    """A `peers` row as a batch reads and changes it (plain values: an ORM object and a
    flush for each of a boot storm's 1,000 new peers were most of the listener's writes)."""

    __slots__ = (
        "id", "node_id", "username", "address", "tcp_port", "catalog_version",
        "announce_seq", "catalog_synced", "fingerprint", "tls", "last_seen", "catalog_epoch",
        "moved",
    )  # fmt: skip

    def __init__(self, row: Sequence[Any]) -> None:
        (self.id, self.node_id, self.username, self.address, self.tcp_port,
         self.catalog_version, self.announce_seq, self.catalog_synced, self.fingerprint,
         tls, self.catalog_epoch) = row  # fmt: skip
        self.tls = bool(tls)
        self.last_seen: float | None = None  # set: refreshed by this batch, written at its end
        self.moved = False  # to another address: its catalog is fetched whole again


class _Batch:
    """What record_announces looks up, read once for all of its announcements and kept
    up to date as it goes; peers refreshed are written back together at the end (`write`).

    Plain sqlite3 on the session's connection, whose pending ORM changes are flushed
    first; any Peer or RetiredNode the session holds is expired once the batch is written."""

    def __init__(self, session: Session, heards: Sequence[Heard]) -> None:
        self.session = session
        self.conn = driver_connection(session)
        self.created = 0
        self.touched = False  # rows changed behind the session's back
        self.gone: set[int] = set()  # ids of the peers a restart replaced in this batch
        ids = sorted({h.node_id for h in heards})
        self.peers: dict[str, _Row] = {}
        for part in in_slices(ids):
            query = f"SELECT {_PEER_COLUMNS} FROM peers WHERE node_id IN ({marks(part)})"
            for row in self.conn.execute(query, part):
                self.peers[row[1]] = _Row(row)
        unknown = [n for n in ids if n not in self.peers]
        # node id -> (last_seq, replaced)
        self.retired: dict[str, tuple[int, bool]] = {}
        for part in in_slices(unknown):
            query = (
                "SELECT node_id, last_seq, replaced FROM retired_nodes"
                f" WHERE node_id IN ({marks(part)})"
            )
            for node_id, last_seq, replaced in self.conn.execute(query, part):
                self.retired[node_id] = (last_seq, bool(replaced))
        # Peers at the endpoints where new node ids announce (a restart there replaces them).
        new = set(unknown)
        ends = sorted({(h.address, h.tcp_port) for h in heards if h.node_id in new})
        self.at: dict[tuple[str, int], list[_Row]] = {end: [] for end in ends}
        for some in in_slices(ends, SLICE // 2):
            pairs = ",".join("(?, ?)" for _ in some)
            query = (
                f"SELECT {_PEER_COLUMNS} FROM peers WHERE (address, tcp_port) IN (VALUES {pairs})"
            )
            for row in self.conn.execute(query, [v for end in some for v in end]):
                peer = self.peers.get(row[1]) or _Row(row)
                self.at[(peer.address, peer.tcp_port)].append(peer)
        # And the peers with their address and certificate: a restart with P2P_TCP_PORT=0
        # takes another port, and its old self would offer its files from a closed one
        # until the TTL (issue 36: "3 peers" and refused connections for 3 minutes).
        selves = sorted(
            {(h.address, h.fingerprint) for h in heards if h.node_id in new and h.fingerprint}
        )
        self.twins: dict[tuple[str, str], list[_Row]] = {key: [] for key in selves}
        for group in in_slices(selves, SLICE // 2):
            pairs = ",".join("(?, ?)" for _ in group)
            query = (
                f"SELECT {_PEER_COLUMNS} FROM peers"
                f" WHERE (address, fingerprint) IN (VALUES {pairs})"
            )
            for row in self.conn.execute(query, [v for key in group for v in key]):
                peer = self.peers.get(row[1]) or _Row(row)
                self.twins[(peer.address, peer.fingerprint)].append(peer)

    def record(self, heard: Heard, now: float) -> AnnounceOutcome:
        peer = self.peers.get(heard.node_id)
        if peer is not None:
            before = (peer.address, peer.tcp_port)
            outcome = _update(peer, heard, now)
            if (peer.address, peer.tcp_port) != before:
                self._moved(peer, before)
            return outcome
        return self._create(heard, now)

    def _moved(self, peer: _Row, before: tuple[str, int]) -> None:
        if before in self.at:
            self.at[before].remove(peer)
        if (peer.address, peer.tcp_port) in self.at:
            self.at[(peer.address, peer.tcp_port)].append(peer)

    def _create(self, heard: Heard, now: float) -> AnnounceOutcome:
        conn = self.conn
        retired = self.retired.get(heard.node_id)
        if retired is not None:
            last_seq, replaced = retired
            if replaced:
                return _refused("announcement from a node id that a restart replaced")
            if heard.seq <= last_seq:
                return _refused(f"replayed announcement (seq {heard.seq}) of an expired peer")
            # An expired peer back after an outage.
            conn.execute("DELETE FROM retired_nodes WHERE node_id = ?", (heard.node_id,))
            del self.retired[heard.node_id]
        self.touched = True
        # A node restarted on the same endpoint, or from the same address with the same
        # certificate, is the same machine with a new id: its old self and everything
        # that offered goes now, not after the TTL. Only when the announcement proves
        # that certificate (its signature): anyone can send a fresh node id from
        # another's address and port, or claim its fingerprint.
        here = self.at.setdefault((heard.address, heard.tcp_port), [])
        twins = self.twins.setdefault((heard.address, heard.fingerprint or ""), [])
        olds = {
            old.id: old
            for old in (*here, *(twins if heard.fingerprint else ()))
            if old.fingerprint and old.fingerprint == heard.fingerprint
        }
        if olds and not heard.proof():
            olds = {}
        # The old self's holdings stay, under the new id, when it announces the same
        # catalog log: a restart then costs the changes made meanwhile, not the catalog
        # (a million entries) again. Another log (its database replaced) is fetched whole.
        heir = next(
            (
                old
                for old in olds.values()
                if old.id not in self.gone
                and heard.catalog_epoch is not None
                and old.catalog_epoch == heard.catalog_epoch
                and old.catalog_synced >= 0
            ),
            None,
        )
        synced, epoch = (heir.catalog_synced, heir.catalog_epoch) if heir else (-1, None)
        cur = conn.execute(
            "INSERT INTO peers (node_id, username, address, tcp_port, catalog_version,"
            " announce_seq, catalog_synced, catalog_epoch, fingerprint, tls, first_seen,"
            " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (heard.node_id, heard.username, heard.address, heard.tcp_port,
             heard.catalog_version, heard.seq, synced, epoch, heard.fingerprint, heard.tls,
             now, now),
        )  # fmt: skip
        assert cur.lastrowid is not None
        if heir is not None:
            conn.execute(
                "UPDATE holdings SET peer_id = ? WHERE peer_id = ?", (cur.lastrowid, heir.id)
            )
            # Its catalog's count goes with its holdings: a restart is no fresh budget.
            conn.execute(
                "UPDATE peers SET (catalog_entries, over_budget) = (SELECT catalog_entries,"
                " over_budget FROM peers WHERE id = ?) WHERE id = ?",
                (heir.id, cur.lastrowid),
            )
        for old in olds.values():
            if old.id in self.gone:
                continue
            self.gone.add(old.id)
            conn.execute(
                "INSERT OR REPLACE INTO retired_nodes (node_id, retired_at, last_seq, replaced)"
                " VALUES (?, ?, ?, 1)",
                (old.node_id, now, old.announce_seq),
            )
            self.retired[old.node_id] = (old.announce_seq, True)
            conn.execute("DELETE FROM peers WHERE id = ?", (old.id,))  # holdings cascade
            self.peers.pop(old.node_id, None)
        peer = _Row(
            (cur.lastrowid, heard.node_id, heard.username, heard.address, heard.tcp_port,
             heard.catalog_version, heard.seq, synced, heard.fingerprint, heard.tls, epoch),
        )  # fmt: skip
        here[:] = [p for p in here if p.id not in self.gone] + [peer]
        if heard.fingerprint:
            twins[:] = [p for p in twins if p.id not in self.gone] + [peer]
        self.peers[heard.node_id] = peer
        self.created += 1
        needs = heir is None or heard.catalog_version > synced
        return AnnounceOutcome(peer.id, True, needs)

    def write(self) -> None:
        """Write back the peers refreshed, in one statement, and expire what the session
        held of the rows changed."""
        changed = [
            (p.address, p.tcp_port, p.catalog_version, p.announce_seq, p.last_seen, p.id)
            for p in self.peers.values()
            if p.last_seen is not None
        ]
        if changed:
            self.conn.executemany(
                "UPDATE peers SET address = ?, tcp_port = ?, catalog_version = ?,"
                " announce_seq = ?, last_seen = ? WHERE id = ?",
                changed,
            )
        moved = [(p.id,) for p in self.peers.values() if p.moved]
        if moved:
            self.conn.executemany(
                "UPDATE peers SET catalog_synced = -1, catalog_epoch = NULL WHERE id = ?", moved
            )
        if changed or self.touched:
            _expire_cached(self.session, (Peer, RetiredNode))


def _expire_cached(session: Session, models: tuple[type[Any], ...]) -> None:
    """Expire the session's objects of these models: rows changed through the driver
    connection are newer than what it holds."""
    for obj in [o for o in session.identity_map.values() if isinstance(o, models)]:
        session.expire(obj)


def _update(peer: _Row, heard: Heard, now: float) -> AnnounceOutcome:
    """Refresh a known peer from its announcement, or say why it is refused."""
    if heard.seq <= peer.announce_seq:
        return _refused(f"replayed announcement (seq {heard.seq})")
    if heard.seq > peer.announce_seq + MAX_SEQ_JUMP:
        return _refused(f"sequence number jumps from {peer.announce_seq} to {heard.seq}")
    if (heard.fingerprint, heard.tls) != (peer.fingerprint, peer.tls):
        # A node id is one run of one announcer: its identity cannot change (a restart
        # keeps the certificate but takes a new node id).
        return _refused(f"node id already belongs to the certificate {peer.fingerprint}")
    if heard.username != peer.username:
        return _refused(f"node id already belongs to {peer.username} at {peer.address}")
    if heard.address != peer.address and not (peer.fingerprint and heard.proof()):
        # Its address moves only with its certificate's signature: the first address a
        # node id was heard from may have been a replay of it sent from elsewhere, and the
        # node's own later announcements (a higher seq, signed) must still be heard.
        return _refused(f"node id already belongs to {peer.username} at {peer.address}")
    if heard.address != peer.address:
        # What was fetched at the other address may not be this node's catalog at all.
        peer.address, peer.catalog_synced, peer.catalog_epoch = heard.address, -1, None
        peer.moved = True
    peer.tcp_port = heard.tcp_port
    peer.catalog_version, peer.announce_seq, peer.last_seen = (
        heard.catalog_version,
        heard.seq,
        now,
    )
    # Only a newer version than the one we hold, of the same log: a log's version only
    # grows, so an equal or older one is nothing to fetch; another log (the peer's
    # database was replaced) is fetched whole.
    behind = heard.catalog_version > peer.catalog_synced
    return AnnounceOutcome(peer.id, False, behind or heard.catalog_epoch != peer.catalog_epoch)


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


def live_node_ids(session: Session) -> set[str]:
    """The node ids of every peer still known."""
    return set(session.scalars(select(Peer.node_id)))
