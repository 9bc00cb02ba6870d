"""Queries behind discovery: peers as their announcements make them known, and forgotten
when silent (their catalogs are `db.catalogs`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, insert, select, text, update

from .lists import json_values
from .node import node_state, want_announcement
from .schema import peers, retired_nodes


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


def record_announce(conn: Connection, heard: Heard, *, now: float) -> AnnounceOutcome:
    """Create or refresh the peer; our own, a replayed or an older announcement changes nothing."""
    return record_announces(conn, [heard], now=now)[0]


def record_announces(
    conn: Connection, heards: Sequence[Heard], *, now: float
) -> list[AnnounceOutcome]:
    """record_announce for each of many announcements, in order, with one lookup of the
    peers they name (a boot storm or a steady round of 1,000 peers is a few statements)."""
    own = node_state(conn).node_id
    batch = _Batch(conn, [h for h in heards if h.node_id != own])
    out = [OWN if h.node_id == own else batch.record(h, now) for h in heards]
    batch.write()
    if batch.created:
        want_announcement(conn, now=now)  # the announcer answers newcomers at once
    return out


_LISTED = "(SELECT value FROM json_each(:listed))"
# Peers whose (address, second column) is one of the pairs listed.
_PAIR_LISTED = (
    "EXISTS (SELECT 1 FROM json_each(:listed) e"
    " WHERE json_extract(e.value, '$[0]') = peers.address"
    " AND json_extract(e.value, '$[1]') = peers.{})"
)
_PEER_COLUMNS = (
    "id, node_id, username, address, tcp_port, catalog_version, announce_seq, catalog_synced,"
    " fingerprint, tls, catalog_epoch"
)


class _Row:
    """A `peers` row as a batch reads and changes it (plain values, written back together:
    a boot storm brings a thousand new peers at once)."""

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

    Each lookup is one statement, its list one JSON parameter."""

    def __init__(self, conn: Connection, heards: Sequence[Heard]) -> None:
        self.conn = conn
        self.created = 0
        self.gone: set[int] = set()  # ids of the peers a restart replaced in this batch
        ids = sorted({h.node_id for h in heards})
        self.peers: dict[str, _Row] = {}
        query = f"SELECT {_PEER_COLUMNS} FROM peers WHERE node_id IN {_LISTED}"
        for row in self._run(query, listed=json.dumps(ids)):
            self.peers[row[1]] = _Row(row)
        unknown = [n for n in ids if n not in self.peers]
        # node id -> (last_seq, replaced)
        self.retired: dict[str, tuple[int, bool]] = {}
        query = f"SELECT node_id, last_seq, replaced FROM retired_nodes WHERE node_id IN {_LISTED}"
        for node_id, last_seq, replaced in self._run(query, listed=json.dumps(unknown)):
            self.retired[node_id] = (last_seq, bool(replaced))
        # Peers at the endpoints where new node ids announce (a restart there replaces them).
        new = set(unknown)
        ends = sorted({(h.address, h.tcp_port) for h in heards if h.node_id in new})
        self.at: dict[tuple[str, int], list[_Row]] = {end: [] for end in ends}
        query = f"SELECT {_PEER_COLUMNS} FROM peers WHERE {_PAIR_LISTED.format('tcp_port')}"
        for row in self._run(query, listed=json.dumps(ends)):
            peer = self.peers.get(row[1]) or _Row(row)
            self.at[(peer.address, peer.tcp_port)].append(peer)
        # And the peers with their address and certificate: a restart with P2P_TCP_PORT=0
        # takes another port, and its old self would offer its files from a closed one
        # until the TTL (listed as one more peer, refusing connections).
        selves = sorted(
            {(h.address, h.fingerprint) for h in heards if h.node_id in new and h.fingerprint}
        )
        self.twins: dict[tuple[str, str], list[_Row]] = {key: [] for key in selves}
        query = f"SELECT {_PEER_COLUMNS} FROM peers WHERE {_PAIR_LISTED.format('fingerprint')}"
        for row in self._run(query, listed=json.dumps(selves)):
            peer = self.peers.get(row[1]) or _Row(row)
            self.twins[(peer.address, peer.fingerprint)].append(peer)

    def _run(self, sql: str, **params: Any) -> Any:
        return self.conn.execute(text(sql), params)

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
            self._run("DELETE FROM retired_nodes WHERE node_id = :node", node=heard.node_id)
            del self.retired[heard.node_id]
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
        new_id = conn.execute(
            insert(peers).values(
                node_id=heard.node_id, username=heard.username, address=heard.address,
                tcp_port=heard.tcp_port, catalog_version=heard.catalog_version,
                announce_seq=heard.seq, catalog_synced=synced, catalog_epoch=epoch,
                fingerprint=heard.fingerprint, tls=heard.tls, first_seen=now, last_seen=now,
            )
        ).lastrowid  # fmt: skip
        assert new_id is not None
        if heir is not None:
            self._run("UPDATE holdings SET peer_id = :new WHERE peer_id = :old",
                      new=new_id, old=heir.id)  # fmt: skip
            # Its catalog's count goes with its holdings: a restart is no fresh budget.
            self._run(
                "UPDATE peers SET (catalog_entries, over_budget) = (SELECT catalog_entries,"
                " over_budget FROM peers WHERE id = :old) WHERE id = :new",
                old=heir.id,
                new=new_id,
            )
        for old in olds.values():
            if old.id in self.gone:
                continue
            self.gone.add(old.id)
            _retire(conn, [(old.node_id, old.announce_seq)], now=now, replaced=True)
            self.retired[old.node_id] = (old.announce_seq, True)
            self._run("DELETE FROM peers WHERE id = :id", id=old.id)  # holdings cascade
            self.peers.pop(old.node_id, None)
        peer = _Row(
            (new_id, heard.node_id, heard.username, heard.address, heard.tcp_port,
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
        """Write back the peers refreshed, in one statement."""
        changed = [
            {"address": p.address, "port": p.tcp_port, "version": p.catalog_version,
             "seq": p.announce_seq, "seen": p.last_seen, "id": p.id}
            for p in self.peers.values()
            if p.last_seen is not None
        ]  # fmt: skip
        if changed:
            self.conn.execute(
                text(
                    "UPDATE peers SET address = :address, tcp_port = :port,"
                    " catalog_version = :version, announce_seq = :seq, last_seen = :seen"
                    " WHERE id = :id"
                ),
                changed,
            )
        moved = [p.id for p in self.peers.values() if p.moved]
        if moved:
            self.conn.execute(
                update(peers)
                .where(peers.c.id.in_(json_values(moved)))
                .values(catalog_synced=-1, catalog_epoch=None)
            )


def _retire(
    conn: Connection, olds: Sequence[tuple[str, int]], *, now: float, replaced: bool
) -> None:
    """Remember these (node id, last sequence number) as gone: expired, or replaced by a
    restart (then that id can never speak again)."""
    conn.execute(
        text(
            "INSERT OR REPLACE INTO retired_nodes (node_id, retired_at, last_seq, replaced)"
            " VALUES (:node, :now, :seq, :replaced)"
        ),
        [{"node": n, "now": now, "seq": seq, "replaced": replaced} for n, seq in olds],
    )


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


def expire_peers(conn: Connection, *, now: float, ttl: float) -> list[str]:
    """Forget peers silent for `ttl` seconds, with all they offered. Returns their names."""
    r, p = retired_nodes.c, peers.c
    conn.execute(delete(retired_nodes).where(r.retired_at < now - RETIRED_KEEP_SECONDS))
    silent = p.last_seen < now - ttl
    gone = conn.execute(
        select(p.node_id, p.announce_seq, p.username, p.address, p.tcp_port).where(silent)
    ).all()
    if gone:
        _retire(conn, [(g.node_id, g.announce_seq) for g in gone], now=now, replaced=False)
        conn.execute(delete(peers).where(silent))  # holdings cascade
    return [f"{g.username} ({g.address}:{g.tcp_port})" for g in gone]


def live_node_ids(conn: Connection) -> set[str]:
    """The node ids of every peer still known."""
    return set(conn.scalars(select(peers.c.node_id)))
