"""What p2pctl asks of the downloader: one file, a folder or a glob as one request, each
file it covers its own `downloads` row; and pausing, resuming and following them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from p2pshare.db.downloads import (
    KEEPING_TEMP,
    UNFINISHED,
    AlreadyHere,
    Candidate,
    UnknownName,
    file_sizes,
    new_downloads,
    offer_peers,
    queue_download,
    resolve_name,
)
from p2pshare.db.models import Download, DownloadSource, File, Holding, LocalFile, Request
from p2pshare.db.reports import matches

__all__ = ["AlreadyHere", "Queued", "SeveralVersions", "UnknownName", "queue_request"]


class SeveralVersions(Exception):
    """A folder or glob covers names offered with different contents; `names` lists them."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


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


def request_kind(pattern: str, *, every: bool) -> str:
    """`album/` is a folder; --all makes any pattern a glob of many files; else one file."""
    if pattern.endswith("/"):
        return "folder"
    return "glob" if every else "file"


def queue_request(session: Session, pattern: str, *, every: bool, now: float) -> Queued:
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
        chosen = [resolve_name(session, pattern)]
    else:
        chosen, skipped = _many(session, pattern, kind)
    request = Request(
        pattern=pattern, kind=kind, requested_at=now, files=0, already_here=len(skipped)
    )
    session.add(request)
    session.flush()
    if kind == "file":
        did, fresh = queue_download(
            session, chosen[0], now=now, request_id=request.id, pinned=pinned
        )
        ids, new = [did], int(fresh)
    else:  # smallest first: many small files are not stuck behind one large one
        ids, new = _queue_named(session, chosen, request.id, pinned=pinned, now=now)
    request.files = new
    return Queued(request.id, pattern, kind, ids, new, skipped, sum(c.size for c in chosen), chosen)


def _many(session: Session, pattern: str, kind: str) -> tuple[list[Candidate], list[str]]:
    """The files a folder or glob covers, smallest first, and the names already here."""
    name_part, _, sha_prefix = pattern.rpartition("@") if "@" in pattern else (pattern, "", "")
    offered = offered_files(session, name_part, folder=kind == "folder")
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
    here = {
        (name, sha)
        for name, sha in session.execute(
            select(LocalFile.name, File.sha256).join(File, File.id == LocalFile.file_id)
        )
    }
    skipped = sorted(c.name for c in offered if (c.name, c.sha256) in here)
    wanted = [c for c in offered if (c.name, c.sha256) not in here]
    return sorted(wanted, key=lambda c: (c.size, c.name)), skipped


def offered_files(session: Session, pattern: str, *, folder: bool) -> list[Candidate]:
    """One candidate per (name, SHA-256) the network offers under a folder (`pattern` ends
    in '/': names starting with it) or matching a substring or glob."""
    rows = session.execute(
        select(Holding.name, File.sha256).join(File, File.id == Holding.file_id).distinct()
    ).all()
    if folder:
        chosen = {(n, sha) for n, sha in rows if n.startswith(pattern)}
    else:
        chosen = {(n, sha) for n, sha in rows if matches(n, pattern)}
    offers = offer_peers(session, {sha for _, sha in chosen})
    best = {sha: max(o.items(), key=lambda kv: (kv[1], -kv[0])) for sha, o in offers.items()}
    sizes = file_sizes(session, [fid for fid, _ in best.values()])
    return [
        Candidate(best[sha][0], name, sha, sizes[best[sha][0]], best[sha][1])
        for name, sha in sorted(chosen)
    ]


def _queue_named(
    session: Session, chosen: list[Candidate], request_id: int, *, pinned: bool, now: float
) -> tuple[list[int], int]:
    """Queue the files of a folder or glob, reusing an unfinished (or paused) download of
    the same content under the same name: each name of the tree arrives, none twice.
    Returns (download ids in the order of `chosen`, how many are new). A few statements
    however many files: a thousand small ones queued row by row took a second."""
    reused: dict[tuple[str, str], Download] = {}
    for part in _slices(sorted({c.name for c in chosen})):
        for d in session.scalars(
            select(Download)
            .where(Download.name.in_(part), Download.status.in_(KEEPING_TEMP))
            .order_by(Download.id.desc())  # the oldest last, so it wins below
        ):
            reused[(d.name, d.sha256)] = d
    fresh = [c for c in chosen if (c.name, c.sha256) not in reused]
    new_ids = dict(
        zip(
            fresh,
            new_downloads(session, fresh, request_id=request_id, pinned=pinned, now=now),
            strict=True,
        )
    )
    ids = []
    for c in chosen:
        running = reused.get((c.name, c.sha256))
        if running is None:
            ids.append(new_ids[c])
        else:  # asked with NAME@SHA: the later "this version" wins
            running.pinned = running.pinned or pinned
            ids.append(running.id)
    return ids, len(fresh)


def _slices(items: list[str]) -> list[list[str]]:
    return [items[i : i + 500] for i in range(0, len(items), 500)]


# ------------------------------------------------------------ pause, resume, cancel


def _matching(session: Session, pattern: str, statuses: tuple[str, ...]) -> list[Download]:
    """Downloads in `statuses` that PATTERN names: a download id, or an exact name, means
    that download alone (whatever its state, so `pause 7` never falls back to matching '7'
    in names); `album/` the downloads under that folder; anything else is a substring or
    glob of names."""
    query = select(Download).where(Download.status.in_(statuses)).order_by(Download.id)
    if _is_row_id(pattern) and session.get(Download, int(pattern)) is not None:
        return list(session.scalars(query.where(Download.id == int(pattern))))
    if session.scalar(select(Download.id).where(Download.name == pattern).limit(1)):
        return list(session.scalars(query.where(Download.name == pattern)))
    rows = list(session.scalars(query))
    if pattern.endswith("/"):
        return [d for d in rows if d.name.startswith(pattern)]
    return [d for d in rows if matches(d.name, pattern)]


def _is_row_id(pattern: str) -> bool:
    """ASCII digits within SQLite's integer range ('²' is a digit to str.isdigit)."""
    return pattern.isascii() and pattern.isdecimal() and int(pattern) < 2**63


def pause_downloads(session: Session, pattern: str) -> list[str]:
    """Pause unfinished downloads matching PATTERN; they keep their verified chunks and
    temp file (and offer those chunks) until resumed. Returns their names."""
    chosen = _matching(session, pattern, UNFINISHED)
    for d in chosen:
        d.status, d.reason = "paused", "paused by the user"
    return [d.name for d in chosen]


def resume_downloads(session: Session, pattern: str) -> list[str]:
    """Queue paused downloads matching PATTERN again, in their old place (the queue is by
    id). Returns their names."""
    chosen = _matching(session, pattern, ("paused",))
    for d in chosen:
        d.status, d.reason = "queued", None
    return [d.name for d in chosen]


def cancel_downloads(session: Session, pattern: str, *, now: float) -> list[str]:
    """Cancel unfinished or paused downloads matching PATTERN; returns their names. The
    downloader removes the temp file (a running job at once, a paused one's in its sweep)."""
    chosen = _matching(session, pattern, KEEPING_TEMP)
    for d in chosen:
        d.status, d.reason, d.finished_at = "cancelled", "cancelled by the user", now
        d.temp_path = None
    return [d.name for d in chosen]


# ------------------------------------------------------------ following


@dataclass(frozen=True)
class FollowState:
    id: int
    name: str
    size: int
    status: str
    reason: str | None
    bytes_done: int
    saved_as: str | None
    peers: int  # peers that have sent at least one verified chunk


def follow_states(session: Session, download_ids: list[int]) -> list[FollowState]:
    """What `p2pctl download` shows while it follows a request, in the order given."""
    counted = session.execute(
        select(DownloadSource.download_id, func.count())
        .where(DownloadSource.download_id.in_(download_ids), DownloadSource.chunks > 0)
        .group_by(DownloadSource.download_id)
    )
    peers = {download_id: n for download_id, n in counted}
    rows = {d.id: d for d in session.scalars(select(Download).where(Download.id.in_(download_ids)))}
    return [
        FollowState(
            d.id, d.name, d.size, d.status, d.reason, d.bytes_done, d.saved_as, peers.get(d.id, 0)
        )
        for d in (rows[i] for i in download_ids if i in rows)
    ]
