"""The node's tables: every table and index, as SQLAlchemy Core `Table`s on one `MetaData`.

Times are UTC unix seconds (REAL) everywhere: the roles compare them constantly ("silent
for 180 s?") and plain SQL can do the same with `unixepoch()` or
`datetime(col, 'unixepoch')`. A new database is created from `METADATA` at
SCHEMA_VERSION; an older one is brought there by `db.migrations`.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)

from .version import SCHEMA_VERSION as SCHEMA_VERSION
from .version import SchemaError as SchemaError

METADATA = MetaData()


def _int(name: str, *args: object, **kw: object) -> Column[int]:
    return Column(name, Integer, *args, nullable=kw.pop("nullable", False), **kw)  # type: ignore[arg-type]


def _str(name: str, length: int | None = None, **kw: object) -> Column[str]:
    return Column(name, String(length), nullable=kw.pop("nullable", False), **kw)  # type: ignore[arg-type]


def _real(name: str, **kw: object) -> Column[float]:
    return Column(name, Double, nullable=kw.pop("nullable", False), **kw)  # type: ignore[arg-type]


def _blob(name: str, **kw: object) -> Column[bytes]:
    return Column(name, LargeBinary, nullable=kw.pop("nullable", False), **kw)  # type: ignore[arg-type]


def _bool(name: str, **kw: object) -> Column[bool]:
    return Column(name, Boolean, nullable=False, **kw)  # type: ignore[arg-type]


# This node's own facts that several roles need: one row, id 1.
node = Table(
    "node",
    METADATA,
    _int("id", primary_key=True),
    # Changes whenever what this node offers changes; peers refetch the catalog then.
    _int("catalog_version", default=0),
    # The TCP port the server actually bound (P2P_TCP_PORT=0 picks a free one).
    _int("tcp_port", nullable=True),
    # The announcer's id for this run; a restart makes a new one.
    _str("node_id", 64, nullable=True),
    # The name of this node's catalog log (db/catalog_log.py): new with the database, so
    # a peer that knew another log of ours fetches the catalog whole again.
    _str("catalog_epoch", 16, nullable=True),
    # Tombstones up to this sequence number were compacted away: a peer behind it
    # cannot catch up by changes.
    _int("catalog_floor", default=0),
    # Set by the listener when a new peer appears, so the announcer answers at once and
    # the newcomer need not wait a whole interval to hear of us.
    _real("announce_wanted_at", default=0.0),
    _real("updated_at", default=0.0),
)

# One entry this node offers (a file's content under a name), with the sequence number of
# its last change; kept by triggers on local_files and downloads (db/catalog_log.py). An
# entry no longer offered stays as a tombstone (`removed`) until compacted, so peers
# catching up by changes learn that it went.
catalog_log = Table(
    "catalog_log",
    METADATA,
    _int("id", primary_key=True),
    # NULL once a tombstone's content is forgotten (nothing else refers to it): a
    # tombstone never keeps a `files` row, nor its chunk hashes, alive.
    _int("file_id", ForeignKey("files.id", ondelete="SET NULL"), nullable=True),
    _str("name"),
    # node.catalog_version when the entry last changed: unique, only ever growing.
    _int("seq"),
    # NULL: offered whole; else the bitfield of the chunks held (a download under way).
    _blob("have", nullable=True),
    _bool("removed", default=False),
    # A tombstone's SHA-256, copied when it went: what peers remove it by.
    _str("gone_sha256", 64, nullable=True),
    UniqueConstraint("file_id", "name"),
    Index("ix_catalog_log_seq", "seq"),
    # The tombstones alone: counted and compacted without a scan of the whole log.
    Index("ix_catalog_log_gone", "seq", sqlite_where=text("removed = 1")),
)

# Each running role refreshes its row every few seconds.
heartbeats = Table(
    "heartbeats",
    METADATA,
    _str("role", 16, primary_key=True),
    _int("pid"),
    _real("started_at"),
    _real("beat_at"),
    _str("detail", default=""),
)

# A file's content as offered: its SHA-256, its chunking and its manifest's root. Two
# offers of one SHA-256 with different roots are two rows: at most one can be honest,
# and a download uses the peers of one root only.
files = Table(
    "files",
    METADATA,
    _int("id", primary_key=True),
    _str("sha256", 64),
    _int("size"),
    _int("chunk_size"),
    # SHA-256 of the manifest's entries (chunks.sha256 in order, as 32-byte values);
    # '' for content known before protocol v2, which has no manifest any more.
    _str("root", 64, default=""),
    _int("chunk_count"),
    _real("first_seen"),
    UniqueConstraint("sha256", "chunk_size", "root"),
)

# One chunk of a file: bytes [chunk_index * chunk_size, + size). `sha256` is the chunk's
# manifest entry: the SHA-256 chaining state after this chunk (the eight 32-bit state
# words, big-endian, in hex), and for the last chunk the file's SHA-256 itself. Chunk i
# verifies alone, starting from entry i-1 (the standard initial state for chunk 0).
chunks = Table(
    "chunks",
    METADATA,
    _int("file_id", ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
    _int("chunk_index", primary_key=True),
    _int("size"),
    _str("sha256", 64),
)

# Which peer's manifest gave a content its chunk hashes: what counts against that peer's
# P2P_PEER_MANIFEST_ROWS until the content is this node's own (db/budgets.py).
manifest_sources = Table(
    "manifest_sources",
    METADATA,
    _int("file_id", ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
    _int("peer_id", ForeignKey("peers.id", ondelete="CASCADE")),
    _int("chunk_rows"),
    _real("learned_at"),
    Index("ix_manifest_sources_peer", "peer_id"),
)

# A file this node shares: from the share folder or a finished download.
local_files = Table(
    "local_files",
    METADATA,
    _int("id", primary_key=True),
    # 'share' (P2P_SHARE_DIR) or 'download' (P2P_DOWNLOAD_DIR)
    _str("root", 16),
    # Path relative to the root, '/'-separated; the name peers see.
    _str("name"),
    _int("file_id", ForeignKey("files.id")),
    _int("size"),
    _int("mtime_ns"),
    # ctime changes on every write even when a copy tool restores mtime; the inode
    # changes when the file is replaced. Together they say "the same bytes" cheaply.
    _int("ctime_ns", default=0),
    _int("inode", default=0),
    _real("indexed_at"),
    UniqueConstraint("root", "name"),
    Index("ix_local_files_file", "file_id"),
)

# Another node heard on the network; deleted with its holdings after P2P_PEER_TTL.
peers = Table(
    "peers",
    METADATA,
    _int("id", primary_key=True),
    _str("node_id", 64, unique=True),
    _str("username"),
    _str("address"),
    _int("tcp_port"),
    _int("catalog_version"),
    # Highest announcement sequence number seen from this node id; anything not above
    # it is a replay.
    _int("announce_seq", default=0),
    # The catalog version whose contents are in `holdings`; -1 before the first fetch.
    _int("catalog_synced", default=-1),
    # The catalog log (its epoch) that catalog_synced counts in; NULL before the first
    # fetch, and for a node of protocol 2.0 that has no log (fetched whole each time).
    _str("catalog_epoch", 16, nullable=True),
    # SHA-256 of its certificate, as announced (NULL from a node without one), and
    # whether it takes TLS connections only.
    _str("fingerprint", 64, nullable=True),
    _bool("tls", default=False),
    _real("first_seen"),
    _real("last_seen"),
    # Entries of its catalog in `holdings`, counted from above (db/budgets.py): the
    # exact count is taken only when this passes its budget.
    _int("catalog_entries", default=0, server_default=text("0")),
    # Which of its budgets (README "Budgets per peer") it reached and when, e.g.
    # "P2P_PEER_MANIFEST_ROWS (131072) at 2026-12-07T23:10:00Z"; NULL: none.
    _str("over_budget", nullable=True),
    Index("ix_peers_last_seen", "last_seen"),
)

# Node ids of peers that are gone: restarted (a new id on the same address and port) or
# expired. Their old announcements, replayed, must not bring them back.
retired_nodes = Table(
    "retired_nodes",
    METADATA,
    _str("node_id", 64, primary_key=True),
    _real("retired_at"),
    # The highest sequence number it had sent; an expired peer coming back (after a
    # network outage) must send a higher one.
    _int("last_seq", default=0),
    # True when a restart replaced it: that id can never speak again.
    _bool("replaced", default=False),
)

# Which peer holds which chunks of which file, under the name it offers it as.
holdings = Table(
    "holdings",
    METADATA,
    _int("id", primary_key=True),
    _int("peer_id", ForeignKey("peers.id", ondelete="CASCADE")),
    _int("file_id", ForeignKey("files.id", ondelete="CASCADE")),
    _str("name"),
    _int("chunks_held"),
    # NULL: every chunk. Otherwise bit i (byte i // 8, most significant bit first, as in
    # BitTorrent) is set when chunk i is held.
    _blob("bitfield", nullable=True),
    UniqueConstraint("peer_id", "file_id", "name"),
    Index("ix_holdings_file", "file_id"),
    # `p2pctl files` groups offers by name in this order, without sorting them.
    Index("ix_holdings_name", "name", "file_id"),
)

# A peer address that sent a chunk failing verification for a file; avoided for it.
bad_peers = Table(
    "bad_peers",
    METADATA,
    _int("id", primary_key=True),
    _str("address"),
    _int("tcp_port"),
    _int("file_id", ForeignKey("files.id", ondelete="CASCADE")),
    _int("bad_chunks", default=1),
    _real("marked_at"),
    UniqueConstraint("address", "tcp_port", "file_id"),
    Index("ix_bad_peers_marked_at", "marked_at"),
)

# A setting as a running role resolved it, so `p2pctl status` run from any shell reports
# what the node does rather than what that shell's environment says.
role_settings = Table(
    "role_settings",
    METADATA,
    _str("role", 16, primary_key=True),
    _str("name", 32, primary_key=True),
    _str("value"),
    _real("recorded_at"),
)

# What the user asked `p2pctl download` for: one file, a folder or a glob. Each file it
# covers is its own row in `downloads`, pointing here.
requests = Table(
    "requests",
    METADATA,
    _int("id", primary_key=True),
    _str("pattern"),  # as typed: 'album/', 'album/*.flac', 'talk.mp4@3f2a9c'
    _str("kind", 8),  # file, folder, glob, torrent
    _real("requested_at"),
    _int("files", default=0),  # downloads queued for it
    _int("already_here", default=0),  # files skipped: held here already
)

# A download request and its whole history; the downloader's queue is its status.
downloads = Table(
    "downloads",
    METADATA,
    _int("id", primary_key=True),
    _int("request_id", ForeignKey("requests.id"), nullable=True),
    # NULL for a BitTorrent download (`torrent_downloads`) until it is done: its content
    # is known by its info-hash, not a SHA-256, until it arrives (a one-file torrent then
    # points at the indexed file; a folder's row stays NULL, its files are in local_files).
    _int("file_id", ForeignKey("files.id"), nullable=True),
    _str("name"),
    _str("sha256", 64),
    _int("size"),
    # a db.status.Status
    _str("status", 16),
    # Requested as NAME@SHA: this version or nothing. Otherwise the download follows its
    # name to the version offered now when its own has left every peer, but only one
    # offered by an identity in `offered_by`.
    _bool("pinned", default=False),
    _str("reason", nullable=True),
    _real("requested_at"),
    _real("started_at", nullable=True),
    _real("finished_at", nullable=True),
    # Verified bytes on disk, and every byte received including discarded ones.
    _int("bytes_done", default=0),
    _int("bytes_received", default=0),
    _int("bad_chunks", default=0),
    # Verified, fsynced chunks, same bit order as holdings.bitfield.
    _blob("have", default=b""),
    _str("temp_path", nullable=True),
    # Where the finished file was published (may differ from name: "a (1).pdf").
    _str("saved_as", nullable=True),
    # The last move to another version or manifest, and why (reason changes as it runs).
    _str("switched", nullable=True),
    # The certificate fingerprints (comma-separated) of the peers that offered its name
    # and content over TLS when it was queued: the identities whose new version of the
    # name it may follow. NULL: none proven (no TLS), so it follows no new version.
    _str("offered_by", nullable=True),
    Index("ix_downloads_status", "status"),
    Index("ix_downloads_request", "request_id"),
    # Whether a `files` row is still referred to (orphan cleanup), and which finished
    # downloads are older than the history horizon, each one index probe.
    Index("ix_downloads_file", "file_id"),
    Index("ix_downloads_finished_at", "finished_at"),
)

# What each peer contributed to a download.
download_sources = Table(
    "download_sources",
    METADATA,
    _int("download_id", ForeignKey("downloads.id", ondelete="CASCADE"), primary_key=True),
    _str("address", primary_key=True),
    _int("tcp_port", primary_key=True),
    _str("username", default=""),
    _int("chunks", default=0),
    _int("bytes", default=0),
    _int("bad_chunks", default=0),
)

# One chunk (or byte range) this node served.
uploads = Table(
    "uploads",
    METADATA,
    _int("id", primary_key=True),
    _real("at"),
    _str("peer_address"),
    _str("sha256", 64),
    _str("name"),
    _int("chunk_index"),
    _int("chunk_offset"),  # first byte served, within the chunk
    _int("bytes"),
    _real("seconds"),
    Index("ix_uploads_at", "at"),
)

# What this node served one peer of one file on one UTC day, rolled up from `uploads`
# rows older than P2P_HISTORY_DAYS (those rows are then deleted).
upload_days = Table(
    "upload_days",
    METADATA,
    # Start of the UTC day, in unix seconds (a multiple of 86400).
    _int("day", primary_key=True),
    _str("peer_address", primary_key=True),
    _str("sha256", 64, primary_key=True),
    _str("name", primary_key=True),
    _int("chunks"),  # uploads rows rolled into this one
    _int("bytes"),
    _real("seconds"),
)

# Lifetime totals of `uploads` and `upload_days` together: one row, id 1, kept as uploads
# are recorded, so `p2pctl status` reads one row instead of summing a ledger.
upload_totals = Table(
    "upload_totals",
    METADATA,
    _int("id", primary_key=True),
    _int("chunks"),
    _int("bytes"),
)

# Finished downloads of one UTC day and one ending, rolled up from `downloads` rows (and
# their `download_sources`) that ended more than P2P_HISTORY_DAYS ago.
download_days = Table(
    "download_days",
    METADATA,
    # Start of the UTC day the downloads ended (finished_at), unix seconds.
    _int("day", primary_key=True),
    _str("status", 16, primary_key=True),  # done, failed, cancelled
    _int("downloads"),  # `downloads` rows rolled into this one
    _int("bytes"),  # sum of bytes_done (verified bytes)
    _int("bytes_received"),  # sum of bytes_received (every byte, discarded ones too)
    _int("bad_chunks"),
    _real("seconds"),  # sum of finished_at - started_at, of those that started
)

# `p2pctl download` requests of one UTC day and kind, rolled up once older than
# P2P_HISTORY_DAYS and none of their downloads is left in `downloads`.
request_days = Table(
    "request_days",
    METADATA,
    _int("day", primary_key=True),  # of requested_at
    _str("kind", 8, primary_key=True),  # file, folder, glob, torrent
    _int("requests"),
    _int("files"),  # sum of requests.files
    _int("already_here"),  # sum of requests.already_here
)

# BitTorrent hashes of one file's content, computed once and reused until the content
# changes (a new SHA-256 is a new row; `p2pctl torrent` drops unused ones). `kind`
# 'sha1': the v1 SHA-1 of each whole piece lying inside the file when its first whole
# piece starts `phase` bytes in (a folder's pieces straddle files; the straddling ones
# are hashed when a torrent is made, from at most a piece of each neighbour).
torrent_pieces = Table(
    "torrent_pieces",
    METADATA,
    _str("sha256", 64, primary_key=True),
    _str("kind", 8, primary_key=True),
    _int("piece_size", primary_key=True),
    _int("phase", primary_key=True),
    _blob("hashes"),  # concatenated digests, in order
    _real("computed_at"),
)

# A .torrent this node made (`p2pctl torrent`); p2p-torrent seeds each from where its
# files are, while they still hold the content listed in `files`.
torrents = Table(
    "torrents",
    METADATA,
    _int("id", primary_key=True),
    _str("info_hash", 64, unique=True),  # hex, v1 (or v2 if v2-only)
    _str("name"),  # as asked: 'demo.bin' or 'album/'
    _str("root", 16),  # 'share' or 'download'
    _str("format", 8),  # 'v1', 'v2' or 'hybrid'
    _str("files"),  # JSON [[name under root, sha256], ...] in the torrent's order
    _blob("metainfo"),  # the .torrent file's bytes
    _real("created_at"),
)

# What `p2pctl download 'magnet:?...'` or `p2pctl download file.torrent` asked for: the
# BitTorrent side of its `downloads` row, which p2p-torrent runs. The downloads row
# carries its name, size, status, progress, hash failures (bad_chunks) and the temp
# folder it is fetched into (temp_path).
torrent_downloads = Table(
    "torrent_downloads",
    METADATA,
    _int("download_id", ForeignKey("downloads.id", ondelete="CASCADE"), primary_key=True),
    _str("info_hash", 64, index=True),  # hex: v1 SHA-1, else v2
    _str("magnet", nullable=True),  # the link as given (NULL for a .torrent)
    # The .torrent's bytes; for a magnet, NULL until peers sent its metadata.
    _blob("metainfo", nullable=True),
    _str("peers", default="[]"),  # JSON ["host:port", ...] from --peer
    _int("files", nullable=True),  # files in the torrent, once its metadata is known
    _int("piece_size", nullable=True),
)
