"""The node's tables. Times are UTC unix seconds (REAL) everywhere.

Unix seconds rather than DATETIME because the roles compare them constantly
("silent for 180 s?") and plain SQL can do the same with `unixepoch()` or
`datetime(col, 'unixepoch')`; the README shows both.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class NodeState(Base):
    """This node's own facts that several roles need: one row, id 1."""

    __tablename__ = "node"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Changes whenever what this node offers changes; peers refetch the catalog then.
    catalog_version: Mapped[int] = mapped_column(default=0)
    # The TCP port the server actually bound (P2P_TCP_PORT=0 picks a free one).
    tcp_port: Mapped[int | None]
    # The announcer's id for this run; a restart makes a new one.
    node_id: Mapped[str | None] = mapped_column(String(64))
    # The name of this node's catalog log (db/catalog_log.py): new with the database, so
    # a peer that knew another log of ours fetches the catalog whole again.
    catalog_epoch: Mapped[str | None] = mapped_column(String(16))
    # Tombstones up to this sequence number were compacted away: a peer behind it
    # cannot catch up by changes.
    catalog_floor: Mapped[int] = mapped_column(default=0)
    # Set by the listener when a new peer appears, so the announcer answers at
    # once and the newcomer need not wait a whole interval to hear of us.
    announce_wanted_at: Mapped[float] = mapped_column(default=0.0)
    updated_at: Mapped[float] = mapped_column(default=0.0)


class CatalogLogEntry(Base):
    """One entry this node offers (a file's content under a name), with the sequence
    number of its last change; kept by triggers on local_files and downloads
    (db/catalog_log.py). An entry no longer offered stays as a tombstone (`removed`)
    until compacted, so peers catching up by changes learn that it went."""

    __tablename__ = "catalog_log"
    __table_args__ = (
        UniqueConstraint("file_id", "name"),
        Index("ix_catalog_log_seq", "seq"),
        # The tombstones alone: counted and compacted without a scan of the whole log.
        Index("ix_catalog_log_gone", "seq", sqlite_where=text("removed = 1")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # NULL once a tombstone's content is forgotten (nothing else refers to it): a
    # tombstone never keeps a `files` row, nor its chunk hashes, alive.
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    name: Mapped[str]
    # node.catalog_version when the entry last changed: unique, only ever growing.
    seq: Mapped[int]
    # NULL: offered whole; else the bitfield of the chunks held (a download under way).
    have: Mapped[bytes | None] = mapped_column(LargeBinary)
    removed: Mapped[bool] = mapped_column(default=False)
    # A tombstone's SHA-256, copied when it went: what peers remove it by.
    gone_sha256: Mapped[str | None] = mapped_column(String(64))


class Heartbeat(Base):
    """Each running role refreshes its row every few seconds."""

    __tablename__ = "heartbeats"

    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    pid: Mapped[int]
    started_at: Mapped[float]
    beat_at: Mapped[float]
    detail: Mapped[str] = mapped_column(default="")


class File(Base):
    """A file's content as offered: its SHA-256, its chunking and its manifest's root.

    Two offers of one SHA-256 with different roots are two rows: at most one can be
    honest, and a download uses the peers of one root only.
    """

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("sha256", "chunk_size", "root"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    chunk_size: Mapped[int]
    # SHA-256 of the manifest's entries (chunks.sha256 in order, as 32-byte values);
    # '' for content known before protocol v2, which has no manifest any more.
    root: Mapped[str] = mapped_column(String(64), default="")
    chunk_count: Mapped[int]
    first_seen: Mapped[float]


class Chunk(Base):
    """One chunk of a file: bytes [chunk_index * chunk_size, + size).

    `sha256` is the chunk's manifest entry: the SHA-256 chaining state after this
    chunk (the eight 32-bit state words, big-endian, in hex), and for the last
    chunk the file's SHA-256 itself. Chunk i verifies alone, starting from entry
    i-1 (the standard initial state for chunk 0).
    """

    __tablename__ = "chunks"

    file_id: Mapped[int] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    chunk_index: Mapped[int] = mapped_column(primary_key=True)
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))


class ManifestSource(Base):
    """Which peer's manifest gave a content its chunk hashes: what counts against that
    peer's P2P_PEER_MANIFEST_ROWS until the content is this node's own (db/budgets.py)."""

    __tablename__ = "manifest_sources"
    __table_args__ = (Index("ix_manifest_sources_peer", "peer_id"),)

    file_id: Mapped[int] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    peer_id: Mapped[int] = mapped_column(ForeignKey("peers.id", ondelete="CASCADE"))
    chunk_rows: Mapped[int]
    learned_at: Mapped[float]


class LocalFile(Base):
    """A file this node shares: from the share folder or a finished download."""

    __tablename__ = "local_files"
    __table_args__ = (UniqueConstraint("root", "name"), Index("ix_local_files_file", "file_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    # 'share' (P2P_SHARE_DIR) or 'download' (P2P_DOWNLOAD_DIR)
    root: Mapped[str] = mapped_column(String(16))
    # Path relative to the root, '/'-separated; the name peers see.
    name: Mapped[str]
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"))
    size: Mapped[int]
    mtime_ns: Mapped[int]
    # ctime changes on every write even when a copy tool restores mtime; the inode
    # changes when the file is replaced. Together they say "the same bytes" cheaply.
    ctime_ns: Mapped[int] = mapped_column(default=0)
    inode: Mapped[int] = mapped_column(default=0)
    indexed_at: Mapped[float]


class Peer(Base):
    """Another node heard on the network; deleted with its holdings after P2P_PEER_TTL."""

    __tablename__ = "peers"
    __table_args__ = (Index("ix_peers_last_seen", "last_seen"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str]
    address: Mapped[str]
    tcp_port: Mapped[int]
    catalog_version: Mapped[int]
    # Highest announcement sequence number seen from this node id; anything
    # not above it is a replay.
    announce_seq: Mapped[int] = mapped_column(default=0)
    # The catalog version whose contents are in `holdings`; -1 before the first fetch.
    catalog_synced: Mapped[int] = mapped_column(default=-1)
    # The catalog log (its epoch) that catalog_synced counts in; NULL before the first
    # fetch, and for a node of protocol 2.0 that has no log (fetched whole each time).
    catalog_epoch: Mapped[str | None] = mapped_column(String(16))
    # SHA-256 of its certificate, as announced (NULL from a node without one), and
    # whether it takes TLS connections only.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    tls: Mapped[bool] = mapped_column(default=False)
    first_seen: Mapped[float]
    last_seen: Mapped[float]
    # Entries of its catalog in `holdings`, counted from above (db/budgets.py): the
    # exact count is taken only when this passes its budget.
    catalog_entries: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # Which of its budgets (README "Budgets per peer") it reached and when, e.g.
    # "P2P_PEER_MANIFEST_ROWS (131072) at 2026-12-07T23:10:00Z"; NULL: none.
    over_budget: Mapped[str | None]


class RetiredNode(Base):
    """Node ids of peers that are gone: restarted (a new id on the same address and
    port) or expired. Their old announcements, replayed, must not bring them back."""

    __tablename__ = "retired_nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    retired_at: Mapped[float]
    # The highest sequence number it had sent; an expired peer coming back (after
    # a network outage) must send a higher one.
    last_seq: Mapped[int] = mapped_column(default=0)
    # True when a restart replaced it: that id can never speak again.
    replaced: Mapped[bool] = mapped_column(default=False)


class Holding(Base):
    """Which peer holds which chunks of which file, under the name it offers it as."""

    __tablename__ = "holdings"
    __table_args__ = (
        UniqueConstraint("peer_id", "file_id", "name"),
        Index("ix_holdings_file", "file_id"),
        # `p2pctl files` groups offers by name in this order, without sorting them.
        Index("ix_holdings_name", "name", "file_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    peer_id: Mapped[int] = mapped_column(ForeignKey("peers.id", ondelete="CASCADE"))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    name: Mapped[str]
    chunks_held: Mapped[int]
    # NULL: every chunk. Otherwise bit i (byte i // 8, most significant bit first,
    # as in BitTorrent) is set when chunk i is held.
    bitfield: Mapped[bytes | None] = mapped_column(LargeBinary)


class BadPeer(Base):
    """A peer address that sent a chunk failing verification for a file; avoided for it."""

    __tablename__ = "bad_peers"
    __table_args__ = (
        UniqueConstraint("address", "tcp_port", "file_id"),
        Index("ix_bad_peers_marked_at", "marked_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str]
    tcp_port: Mapped[int]
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    bad_chunks: Mapped[int] = mapped_column(default=1)
    marked_at: Mapped[float]


class RoleSetting(Base):
    """A setting as a running role resolved it, so `p2pctl status` run from any shell
    reports what the node does rather than what that shell's environment says."""

    __tablename__ = "role_settings"

    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str]
    recorded_at: Mapped[float]


class Request(Base):
    """What the user asked `p2pctl download` for: one file, a folder or a glob. Each file
    it covers is its own row in `downloads`, pointing here."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    pattern: Mapped[str]  # as typed: 'album/', 'album/*.flac', 'talk.mp4@3f2a9c'
    kind: Mapped[str] = mapped_column(String(8))  # file, folder, glob
    requested_at: Mapped[float]
    files: Mapped[int] = mapped_column(default=0)  # downloads queued for it
    already_here: Mapped[int] = mapped_column(default=0)  # files skipped: held here already


class Download(Base):
    """A download request and its whole history; the downloader's queue is its status."""

    __tablename__ = "downloads"
    __table_args__ = (
        Index("ix_downloads_status", "status"),
        Index("ix_downloads_request", "request_id"),
        # Whether a `files` row is still referred to (orphan cleanup), and which finished
        # downloads are older than the history horizon, each one index probe.
        Index("ix_downloads_file", "file_id"),
        Index("ix_downloads_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    # NULL for a BitTorrent download (`torrent_downloads`) until it is done: its content is
    # known by its info-hash, not a SHA-256, until it arrives (a one-file torrent then
    # points at the indexed file; a folder's row stays NULL, its files are in local_files).
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    name: Mapped[str]
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    # queued, active, waiting, paused, done, failed, cancelled
    status: Mapped[str] = mapped_column(String(16))
    # Requested as NAME@SHA: this version or nothing. Otherwise the download follows
    # its name to the version offered now when its own has left every peer, but only
    # one offered by an identity in `offered_by`.
    pinned: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None]
    requested_at: Mapped[float]
    started_at: Mapped[float | None]
    finished_at: Mapped[float | None]
    # Verified bytes on disk, and every byte received including discarded ones.
    bytes_done: Mapped[int] = mapped_column(default=0)
    bytes_received: Mapped[int] = mapped_column(default=0)
    bad_chunks: Mapped[int] = mapped_column(default=0)
    # Verified, fsynced chunks, same bit order as holdings.bitfield.
    have: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    temp_path: Mapped[str | None]
    # Where the finished file was published (may differ from name: "a (1).pdf").
    saved_as: Mapped[str | None]
    # The last move to another version or manifest, and why (reason changes as it runs).
    switched: Mapped[str | None]
    # The certificate fingerprints (comma-separated) of the peers that offered its name
    # and content over TLS when it was queued (schema v11): the identities whose new version of the
    # name it may follow. NULL: none proven (no TLS), so it follows no new version.
    offered_by: Mapped[str | None]


class DownloadSource(Base):
    """What each peer contributed to a download."""

    __tablename__ = "download_sources"

    download_id: Mapped[int] = mapped_column(
        ForeignKey("downloads.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(primary_key=True)
    tcp_port: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(default="")
    chunks: Mapped[int] = mapped_column(default=0)
    bytes: Mapped[int] = mapped_column(default=0)
    bad_chunks: Mapped[int] = mapped_column(default=0)


class Upload(Base):
    """One chunk (or byte range) this node served."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float]
    peer_address: Mapped[str]
    sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str]
    chunk_index: Mapped[int]
    chunk_offset: Mapped[int]  # first byte served, within the chunk
    bytes: Mapped[int]
    seconds: Mapped[float]


class UploadDay(Base):
    """What this node served one peer of one file on one UTC day, rolled up from
    `uploads` rows older than P2P_HISTORY_DAYS (those rows are then deleted)."""

    __tablename__ = "upload_days"

    # Start of the UTC day, in unix seconds (a multiple of 86400).
    day: Mapped[int] = mapped_column(primary_key=True)
    peer_address: Mapped[str] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(primary_key=True)
    chunks: Mapped[int]  # uploads rows rolled into this one
    bytes: Mapped[int]
    seconds: Mapped[float]


class UploadTotal(Base):
    """Lifetime totals of `uploads` and `upload_days` together: one row, id 1, kept as
    uploads are recorded, so `p2pctl status` reads one row instead of summing a ledger."""

    __tablename__ = "upload_totals"

    id: Mapped[int] = mapped_column(primary_key=True)
    chunks: Mapped[int]
    bytes: Mapped[int]


class DownloadDay(Base):
    """Finished downloads of one UTC day and one ending, rolled up from `downloads` rows
    (and their `download_sources`) that ended more than P2P_HISTORY_DAYS ago."""

    __tablename__ = "download_days"

    # Start of the UTC day the downloads ended (finished_at), unix seconds.
    day: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)  # done, failed, cancelled
    downloads: Mapped[int]  # `downloads` rows rolled into this one
    bytes: Mapped[int]  # sum of bytes_done (verified bytes)
    bytes_received: Mapped[int]  # sum of bytes_received (every byte, discarded ones too)
    bad_chunks: Mapped[int]
    seconds: Mapped[float]  # sum of finished_at - started_at, of those that started


class RequestDay(Base):
    """`p2pctl download` requests of one UTC day and kind, rolled up once older than
    P2P_HISTORY_DAYS and none of their downloads is left in `downloads`."""

    __tablename__ = "request_days"

    day: Mapped[int] = mapped_column(primary_key=True)  # of requested_at
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # file, folder, glob
    requests: Mapped[int]
    files: Mapped[int]  # sum of requests.files
    already_here: Mapped[int]  # sum of requests.already_here


class TorrentPieces(Base):
    """BitTorrent hashes of one file's content (issue 24), computed once and reused until
    the content changes (a new SHA-256 is a new row; `p2pctl torrent` drops unused ones).

    `kind` 'sha1': the v1 SHA-1 of each whole piece lying inside the file when its first
    whole piece starts `phase` bytes in (a folder's pieces straddle files; the straddling
    ones are hashed when a torrent is made, from at most a piece of each neighbour)."""

    __tablename__ = "torrent_pieces"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    piece_size: Mapped[int] = mapped_column(primary_key=True)
    phase: Mapped[int] = mapped_column(primary_key=True)
    hashes: Mapped[bytes] = mapped_column(LargeBinary)  # concatenated digests, in order
    computed_at: Mapped[float]


class Torrent(Base):
    """A .torrent this node made (`p2pctl torrent`); p2p-torrent seeds each from where its
    files are, while they still hold the content listed in `files`."""

    __tablename__ = "torrents"

    id: Mapped[int] = mapped_column(primary_key=True)
    info_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex, v1 (or v2 if v2-only)
    name: Mapped[str]  # as asked: 'demo.bin' or 'album/'
    root: Mapped[str] = mapped_column(String(16))  # 'share' or 'download'
    format: Mapped[str] = mapped_column(String(8))  # 'v1', 'v2' or 'hybrid'
    files: Mapped[str]  # JSON [[name under root, sha256], ...] in the torrent's order
    metainfo: Mapped[bytes] = mapped_column(LargeBinary)  # the .torrent file's bytes
    created_at: Mapped[float]


class TorrentDownload(Base):
    """What `p2pctl download 'magnet:?...'` or `p2pctl download file.torrent` asked for
    (issue 24): the BitTorrent side of its `downloads` row, which p2p-torrent runs. The
    downloads row carries its name, size, status, progress, hash failures (bad_chunks)
    and the temp folder it is fetched into (temp_path)."""

    __tablename__ = "torrent_downloads"

    download_id: Mapped[int] = mapped_column(
        ForeignKey("downloads.id", ondelete="CASCADE"), primary_key=True
    )
    info_hash: Mapped[str] = mapped_column(String(64), index=True)  # hex: v1 SHA-1, else v2
    magnet: Mapped[str | None]  # the link as given (NULL for a .torrent)
    # The .torrent's bytes; for a magnet, NULL until peers sent its metadata.
    metainfo: Mapped[bytes | None] = mapped_column(LargeBinary)
    peers: Mapped[str] = mapped_column(default="[]")  # JSON ["host:port", ...] from --peer
    files: Mapped[int | None]  # files in the torrent, once its metadata is known
    piece_size: Mapped[int | None]
