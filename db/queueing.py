"""Queueing downloads: the queries behind `p2pctl download`, the web page and the torrent
role's LAN copies (naming what to fetch, queueing it once). Functions take a connection
inside a transaction and never commit; the caller owns it (`Database.write`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass

from sqlalchemy import Connection

from p2pshare.db.names import fold, in_folder, matches, same_name

from .sources import USABLE
from .sql import run
from .status import KEEPING_TEMP, Status, sql_in

# A typo's "did you mean" looks through at most this many names (difflib compares each).
SUGGEST_FROM = 20_000
# The reason of a download `p2pctl pause` paused (the node pauses one too: see db.jobs).
PAUSED_BY_USER = "paused by the user"


class UnknownName(Exception):
    """No file known on the network matches the name."""


class AmbiguousName(Exception):
    """Several different files match; `candidates` lists them."""

    def __init__(self, message: str, candidates: list[Candidate]) -> None:
        super().__init__(message)
        self.candidates = candidates


class AlreadyHere(Exception):
    """The file is already shared by this node, at `root` ('share' or 'download') / `name`."""

    def __init__(self, message: str, root: str, name: str) -> None:
        super().__init__(message)
        self.root, self.name = root, name


class SeveralVersions(Exception):
    """A folder or glob covers names offered with different contents; `names` lists them."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


@dataclass(frozen=True)
class Candidate:
    file_id: int
    name: str
    sha256: str
    size: int
    peers: int


@dataclass(frozen=True)
class Queued:
    """What one `p2pctl download` queued."""

    request_id: int
    pattern: str
    kind: str  # file, folder, glob
    downloads: list[int]  # every download the request waits for, new or already running
    new: int
    already_here: list[str]  # names skipped: this node holds that content under that name
    total_bytes: int  # of `downloads`
    candidates: list[Candidate]  # what `downloads` fetch, in the same order


def json_list(values: object) -> str:
    """One parameter standing for a list (`x IN (SELECT value FROM json_each(?))`): no
    limit on how many, one statement text whatever their number."""
    return json.dumps(values)


_KEEPING_TEMP_SQL = sql_in(KEEPING_TEMP)


# ------------------------------------------------------------ naming what to fetch


def find_candidates(conn: Connection, pattern: str) -> list[Candidate]:
    """Files on the network matching NAME, a substring or glob, or NAME@sha256-prefix.

    An exact name wins over substring matches. One candidate per SHA-256: of the
    offers of that content (chunk sizes, manifest roots), the one most peers make.
    """
    name_part, _, sha_prefix = pattern.rpartition("@") if "@" in pattern else (pattern, "", "")
    sha_prefix = sha_prefix.lower()
    rows: list[tuple[str, int, str, int, int]] = run(
        conn,
        "SELECT h.name, f.id, f.sha256, f.size, count(DISTINCT h.peer_id)"
        " FROM holdings h JOIN files f ON f.id = h.file_id GROUP BY h.name, f.id",
    ).fetchall()
    rows = [r for r in rows if r[2].startswith(sha_prefix)] if sha_prefix else rows
    exact = [r for r in rows if same_name(r[0], name_part)]
    chosen = exact or [r for r in rows if matches(r[0], name_part)]
    names: dict[str, str] = {}
    for name, _, sha, _, _ in sorted(chosen):
        names.setdefault(sha, name)
    offers = offer_peers(conn, {r[2] for r in chosen})
    out = []
    for sha, name in names.items():
        fid, peers = max(offers[sha].items(), key=lambda kv: (kv[1], -kv[0]))
        out.append(Candidate(fid, name, sha, _file_size(conn, fid), peers))
    return sorted(out, key=lambda c: (c.name, c.sha256))


def _file_size(conn: Connection, file_id: int) -> int:
    row = run(conn, "SELECT size FROM files WHERE id = ?", (file_id,)).fetchone()
    assert row is not None
    return int(row[0])


def offer_peers(conn: Connection, shas: set[str]) -> dict[str, dict[int, int]]:
    """Per SHA-256, how many usable sources (db.sources) offer each of its `files` rows."""
    out: dict[str, dict[int, int]] = {sha: {} for sha in shas}
    for sha, fid, peers in run(
        conn,
        "SELECT f.sha256, f.id, count(DISTINCT h.peer_id) FROM files f"
        " JOIN holdings h ON h.file_id = f.id JOIN peers p ON p.id = h.peer_id"
        f" WHERE f.sha256 IN (SELECT value FROM json_each(?)) AND {USABLE} GROUP BY f.id",
        (json_list(sorted(shas)),),
    ):
        out[sha][fid] = peers
    for sha, offers in out.items():
        if not offers:  # every offer's peers are bad: keep the candidate, it will wait
            for (fid,) in run(conn, "SELECT id FROM files WHERE sha256 = ?", (sha,)):
                offers[fid] = 0
    return out


def resolve_name(conn: Connection, pattern: str) -> Candidate:
    """The one file NAME means. Raises UnknownName, AmbiguousName."""
    candidates = find_candidates(conn, pattern)
    if not candidates:
        close = close_names(conn, pattern)
        guess = f"did you mean {' or '.join(close)}? " if close else ""
        raise UnknownName(f"no file on the network matches {pattern!r}; {guess}see p2pctl files")
    if len(candidates) > 1:
        # Contents this node holds already are no choice: of the versions of one name,
        # the one not here is what is meant; else the choices are those not here.
        here = _held_here(conn, {c.sha256 for c in candidates})
        fresh = [c for c in candidates if c.sha256 not in here]
        if len(fresh) == 1 and len({c.name for c in candidates}) == 1:
            return fresh[0]
        shown = fresh if 1 < len(fresh) < len(candidates) else candidates
        raise AmbiguousName(
            f"{pattern!r} matches {len(shown)} files{' not here' if shown is fresh else ''}; "
            "add @SHA to pick one",
            shown,
        )
    return candidates[0]


def close_names(conn: Connection, typed: str) -> list[str]:
    """Up to three names offered that look like a typo of `typed` (any case, NFC); none
    on a network offering more than SUGGEST_FROM names, where looking would cost more
    than the answer is worth."""
    rows = run(conn, "SELECT DISTINCT name FROM holdings LIMIT ?", (SUGGEST_FROM + 1,)).fetchall()
    if len(rows) > SUGGEST_FROM or any(ch in typed for ch in "*?["):
        return []
    by_folded = {fold(name): name for (name,) in rows}
    base = {fold(name.rsplit("/", 1)[-1]): name for (name,) in rows}
    found = difflib.get_close_matches(fold(typed), [*by_folded, *base], n=3, cutoff=0.75)
    return list(dict.fromkeys(by_folded.get(f) or base[f] for f in found))


def _held_here(conn: Connection, shas: set[str]) -> set[str]:
    """Which of these contents this node shares (under any name)."""
    return {
        row[0]
        for row in run(
            conn,
            "SELECT DISTINCT f.sha256 FROM local_files lf JOIN files f ON f.id = lf.file_id"
            " WHERE f.sha256 IN (SELECT value FROM json_each(?))",
            (json_list(sorted(shas)),),
        )
    }


# ------------------------------------------------------------ queueing


def queue_download(
    conn: Connection,
    candidate: Candidate,
    *,
    now: float,
    request_id: int | None = None,
    pinned: bool = False,
) -> tuple[int, bool]:
    """Queue a download of the candidate; returns (download id, whether it is new).

    An unfinished (or paused) download of the same content is reused rather than doubled,
    and so is one of the same name unless either is pinned to a version (NAME@SHA): asked
    again after the seeder rewrote the file, it is the download that follows the name.
    Raises AlreadyHere when this node already shares that content.
    """
    local = run(
        conn,
        "SELECT lf.root, lf.name FROM local_files lf JOIN files f ON f.id = lf.file_id"
        " WHERE f.sha256 = ? ORDER BY lf.id LIMIT 1",
        (candidate.sha256,),
    ).fetchone()
    if local is not None:
        root, name = local
        raise AlreadyHere(f"already here: {root}/{name}", root, name)
    params: tuple[str, ...]
    if pinned:
        same, params = "sha256 = ?", (candidate.sha256,)
    else:  # an unpinned download of that name moves to the version offered now
        same = "(sha256 = ? OR (name = ? AND NOT pinned))"
        params = (candidate.sha256, candidate.name)
    return _reuse_or_queue(conn, candidate, same, params, request_id, pinned=pinned, now=now)


def _reuse_or_queue(
    conn: Connection,
    candidate: Candidate,
    same: str,
    params: tuple[str, ...],
    request_id: int | None,
    *,
    pinned: bool,
    now: float,
) -> tuple[int, bool]:
    """The oldest unfinished (or paused) download that `same` (an SQL condition on
    `downloads`, with its `params`) matches, else a new one for the candidate; returns
    (download id, whether it is new). Asking with NAME@SHA pins a reused one: the later
    "this version" wins."""
    existing = run(
        conn,
        f"SELECT id, pinned FROM downloads WHERE {same}"
        f" AND status IN ({_KEEPING_TEMP_SQL}) ORDER BY id LIMIT 1",
        params,
    ).fetchone()
    if existing is not None:
        did, was_pinned = existing
        if pinned and not was_pinned:
            run(conn, "UPDATE downloads SET pinned = 1 WHERE id = ?", (did,))
        return int(did), False
    return _new_download(conn, candidate, request_id=request_id, pinned=pinned, now=now), True


def _new_download(
    conn: Connection,
    candidate: Candidate,
    *,
    request_id: int | None,
    pinned: bool,
    now: float,
) -> int:
    """A queued `downloads` row for the candidate; returns its id."""
    row = run(conn, "SELECT chunk_count FROM files WHERE id = ?", (candidate.file_id,)).fetchone()
    assert row is not None
    return _insert_download(conn, candidate, int(row[0]), request_id, pinned, now)


# The certificates, proven by a TLS catalog fetch, of the live peers offering a name (first
# parameter) with a content (second): the identities a download of it may follow to a new
# version (db.offer_switch). A clear peer's announced fingerprint is anyone's to claim.
OFFERED_BY_SQL = (
    "SELECT group_concat(DISTINCT p.fingerprint) FROM holdings h"
    " JOIN files f ON f.id = h.file_id JOIN peers p ON p.id = h.peer_id"
    " WHERE h.name = ? AND f.sha256 = ? AND h.chunks_held > 0"
    " AND p.tls AND p.fingerprint IS NOT NULL"
)


def _insert_download(
    conn: Connection,
    candidate: Candidate,
    chunk_count: int,
    request_id: int | None,
    pinned: bool,
    now: float,
) -> int:
    """Insert a queued `downloads` row (every column given: the models' defaults live in
    Python); returns its id."""
    cur = run(
        conn,
        "INSERT INTO downloads (request_id, file_id, name, sha256, size, status, pinned,"
        " reason, requested_at, started_at, finished_at, bytes_done, bytes_received,"
        " bad_chunks, have, temp_path, saved_as, switched, offered_by)"
        f" VALUES (?, ?, ?, ?, ?, '{Status.QUEUED}', ?, NULL, ?, NULL, NULL, 0, 0, 0, ?,"
        f" NULL, NULL, NULL, ({OFFERED_BY_SQL}))",
        (
            request_id,
            candidate.file_id,
            candidate.name,
            candidate.sha256,
            candidate.size,
            int(pinned),
            now,
            bytes((chunk_count + 7) // 8),
            candidate.name,
            candidate.sha256,
        ),
    )
    assert cur.lastrowid is not None
    return int(cur.lastrowid)


def _queue_many(
    conn: Connection,
    chosen: list[Candidate],
    request_id: int,
    *,
    pinned: bool,
    now: float,
) -> tuple[list[int], int]:
    """Queue the files of a folder or glob, reusing an unfinished (or paused) download of
    the same content under the same name: each name of the tree arrives, none twice.
    Returns (download ids in the order of `chosen`, how many are new). One read of the
    queue and one of the files however many: looking each file up on its own read the
    whole queue a file, and a large folder held the write lock for long."""
    running: dict[tuple[str, str], tuple[int, bool]] = {}
    for did, name, sha256, was_pinned in run(
        conn,
        f"SELECT id, name, sha256, pinned FROM downloads WHERE status IN ({_KEEPING_TEMP_SQL})"
        " ORDER BY id DESC",  # the oldest last, so it wins
    ):
        running[(name, sha256)] = (int(did), bool(was_pinned))
    counts = dict(
        run(
            conn,
            "SELECT id, chunk_count FROM files WHERE id IN (SELECT value FROM json_each(?))",
            (json_list(sorted({c.file_id for c in chosen})),),
        ).fetchall()
    )
    ids, new = [], 0
    for c in chosen:
        found = running.get((c.name, c.sha256))
        if found is not None:
            did, was_pinned = found
            if pinned and not was_pinned:  # asked with NAME@SHA: the later "this version" wins
                run(conn, "UPDATE downloads SET pinned = 1 WHERE id = ?", (did,))
            ids.append(did)
            continue
        ids.append(_insert_download(conn, c, counts[c.file_id], request_id, pinned, now))
        new += 1
    return ids, new


def request_kind(pattern: str, *, every: bool) -> str:
    """`album/` is a folder; --all makes any pattern a glob of many files; else one file."""
    if pattern.endswith("/"):
        return "folder"
    return "glob" if every else "file"


def queue_request(conn: Connection, pattern: str, *, every: bool, now: float) -> Queued:
    """Queue what PATTERN names: one file (NAME, NAME@SHA), a folder (`NAME/`) or, with
    `every`, every file the name, substring or glob matches.

    Raises UnknownName (nothing matches), AmbiguousName (one file asked, several match),
    AlreadyHere (the one file asked is here already), SeveralVersions (a folder or glob
    covers a name offered with different contents).
    """
    kind = request_kind(pattern, every=every)
    pinned = "@" in pattern
    skipped: list[str] = []
    if kind == "file":
        chosen = [resolve_name(conn, pattern)]
    else:
        chosen, skipped = _many(conn, pattern, kind)
    cur = run(
        conn,
        "INSERT INTO requests (pattern, kind, requested_at, files, already_here)"
        " VALUES (?, ?, ?, 0, ?)",
        (pattern, kind, now, len(skipped)),
    )
    request_id = cur.lastrowid
    assert request_id is not None
    if kind == "file":
        did, fresh = queue_download(conn, chosen[0], now=now, request_id=request_id, pinned=pinned)
        ids, new = [did], int(fresh)
    else:  # smallest first: many small files are not stuck behind one large one
        ids, new = _queue_many(conn, chosen, request_id, pinned=pinned, now=now)
    run(conn, "UPDATE requests SET files = ? WHERE id = ?", (new, request_id))
    return Queued(request_id, pattern, kind, ids, new, skipped, sum(c.size for c in chosen), chosen)


def _many(conn: Connection, pattern: str, kind: str) -> tuple[list[Candidate], list[str]]:
    """The files a folder or glob covers, smallest first, and the names already here."""
    name_part, _, sha_prefix = pattern.rpartition("@") if "@" in pattern else (pattern, "", "")
    offered = offered_files(conn, name_part, folder=kind == "folder")
    if sha_prefix:
        offered = [c for c in offered if c.sha256.startswith(sha_prefix.lower())]
    if not offered:
        where = f"under {pattern!r}" if kind == "folder" else f"matches {pattern!r}"
        raise UnknownName(f"no file on the network {where}; see p2pctl files")
    versions: dict[str, set[str]] = {}
    for c in offered:
        versions.setdefault(c.name, set()).add(c.sha256)
    several = sorted(n for n, shas in versions.items() if len(shas) > 1)
    if several:
        listed = ", ".join(several[:5]) + (", ..." if len(several) > 5 else "")
        raise SeveralVersions(
            f"{len(several)} of the files {pattern!r} covers are offered in several versions "
            f"({listed}); download those one by one as NAME@SHA",
            several,
        )
    here = set(
        tuple(row)
        for row in run(
            conn, "SELECT lf.name, f.sha256 FROM local_files lf JOIN files f ON f.id = lf.file_id"
        ).fetchall()
    )
    skipped = sorted(c.name for c in offered if (c.name, c.sha256) in here)
    wanted = [c for c in offered if (c.name, c.sha256) not in here]
    return sorted(wanted, key=lambda c: (c.size, c.name)), skipped


def offered_files(conn: Connection, pattern: str, *, folder: bool) -> list[Candidate]:
    """One candidate per (name, SHA-256) the network offers under a folder (`pattern` ends
    in '/': names starting with it) or matching a substring or glob."""
    rows: list[tuple[str, str]] = run(
        conn, "SELECT DISTINCT h.name, f.sha256 FROM holdings h JOIN files f ON f.id = h.file_id"
    ).fetchall()
    if folder:
        chosen = {(n, sha) for n, sha in rows if in_folder(n, pattern)}
    else:
        chosen = {(n, sha) for n, sha in rows if matches(n, pattern)}
    offers = offer_peers(conn, {sha for _, sha in chosen})
    best = {sha: max(o.items(), key=lambda kv: (kv[1], -kv[0])) for sha, o in offers.items()}
    sizes = dict(
        run(
            conn,
            "SELECT id, size FROM files WHERE id IN (SELECT value FROM json_each(?))",
            (json_list(sorted({fid for fid, _ in best.values()})),),
        ).fetchall()
    )
    return [
        Candidate(best[sha][0], name, sha, int(sizes[best[sha][0]]), best[sha][1])
        for name, sha in sorted(chosen)
    ]
