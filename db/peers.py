"""Queries behind discovery: peers as their announcements make them known, and forgotten
when silent (their catalogs are `db.catalogs`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

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


def live_node_ids(session: Session) -> set[str]:
    """The node ids of every peer still known."""
    return set(session.scalars(select(Peer.node_id)))
