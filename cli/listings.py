"""p2pctl files and p2pctl peers: the listings that grow with the network.

They read through `db.listing`, in one read transaction (`Ctl.reading`), whose rows come
in name order as SQLite reads its index, and print them as they come: `--limit`/`--offset`
show one page (the table then says which rows of how many), `--jsonl` streams one JSON
object a line, and `--json` prints the whole list at once, formatted by the C encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import click

from p2pshare.cli.context import Ctl, UserError, pass_ctl
from p2pshare.cli.render import emit_json_stream, emit_jsonl, emit_table
from p2pshare.db import listing
from p2pshare.services.protocol import short_fingerprint
from p2pshare.services.units import ago, human_bytes, plural

_T = Callable[[Callable[..., None]], Callable[..., None]]

# A table is formatted whole (its columns sized to its widest cell), so one of a million
# offers would hold them all in memory: without --limit a table shows this many rows and
# says how to see the rest; --json and --jsonl stream every row.
TABLE_ROWS = 1000


def listing_options(noun: str) -> _T:
    """--limit, --offset, --json and --jsonl, as `files` and `peers` both take them."""

    def wrap(f: Callable[..., None]) -> Callable[..., None]:
        f = click.option(
            "--jsonl", "as_jsonl", is_flag=True, help="Stream one JSON object a line."
        )(f)
        f = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)
        f = click.option(
            "--offset",
            type=click.IntRange(min=0),
            default=0,
            help=f"Skip the first N {noun} (with --limit: the next page).",
        )(f)
        return click.option(
            "--limit", type=click.IntRange(min=1), default=None, help=f"Show at most N {noun}."
        )(f)

    return wrap


def _format(as_json: bool, as_jsonl: bool) -> str:
    if as_json and as_jsonl:
        raise UserError("choose one of --json and --jsonl")
    return "json" if as_json else "jsonl" if as_jsonl else "table"


def _emit_rows(kind: str, rows: Iterator[object]) -> bool:
    """Print rows as JSON or JSON lines; False for a table (nothing printed)."""
    if kind == "json":
        emit_json_stream(vars(r) for r in rows)
    elif kind == "jsonl":
        emit_jsonl(vars(r) for r in rows)
    return kind != "table"


def page_note(noun: str, shown: int, offset: int, total: int, *, cut: bool = False) -> str | None:
    """Which rows of how many a paged table shows, and how to see the next ones (`cut`:
    the page is TABLE_ROWS long because no --limit was given)."""
    if shown == 0:
        return None
    last = offset + shown
    more = f"; --offset {last} for the next ones" if last < total else ""
    every = ", --jsonl for all of them" if cut and last < total else ""
    return f"{noun} {offset + 1}-{last} of {total}{more}{every}"


def _table(
    rows: list[list[object]],
    headers: list[str],
    empty: str,
    *,
    noun: str,
    limit: int | None,
    offset: int,
    total: Callable[[], int],
) -> None:
    if not rows and offset:
        click.echo(f"No {noun} from offset {offset}: there are {total()}.")
        return
    emit_table(headers, rows, empty)
    cut = limit is None and len(rows) == TABLE_ROWS
    if limit is not None or offset > 0 or cut:
        note = page_note(noun, len(rows), offset, total(), cut=cut)
        if note:
            click.echo(note)


@click.command()
@click.argument("pattern", required=False)
@listing_options("files")
@pass_ctl
def files(
    ctl: Ctl,
    pattern: str | None,
    limit: int | None,
    offset: int,
    as_json: bool,
    as_jsonl: bool,
) -> None:
    """Files shared here and on the network; PATTERN is a substring or a glob."""
    kind = _format(as_json, as_jsonl)
    ctl.note_if_stopped()
    conn = ctl.reading()
    if kind == "table":
        page, n = listing.files_page(conn, pattern, limit=limit or TABLE_ROWS, offset=offset)
        rows: Iterator[listing.FileRow] = iter(page)
    else:
        rows = listing.iter_files(conn, pattern, limit=limit, offset=offset)
    if _emit_rows(kind, rows):
        return
    _table(
        [
            [
                f.name,
                human_bytes(f.size),
                f.chunks,
                f.sha256[:12],
                "yes" if f.here else "",
                f"{f.peers} ({f.complete_peers} whole)" if f.peers else "0",
            ]
            for f in rows
        ],
        ["name", "size", "chunks", "sha256", "here", "peers"],
        f"No files match {pattern!r}."
        if pattern
        else "No files yet: put some in the share folder, or wait for peers to announce theirs.",
        noun="files",
        limit=limit,
        offset=offset,
        total=lambda: n,
    )


@click.command()
@listing_options("peers")
@pass_ctl
def peers(ctl: Ctl, limit: int | None, offset: int, as_json: bool, as_jsonl: bool) -> None:
    """Peers heard on the network."""
    kind = _format(as_json, as_jsonl)
    ctl.note_if_stopped()
    conn = ctl.reading()
    table = kind == "table" and limit is None
    rows = listing.iter_peers(conn, limit=TABLE_ROWS if table else limit, offset=offset)
    if _emit_rows(kind, rows):
        return
    _table(
        peer_table(rows),
        [
            "username",
            "address",
            "port",
            "fingerprint",
            "link",
            "files",
            "catalog",
            "last seen",
            "bad",
            "over budget",
        ],
        "No peers heard yet; other nodes appear here once their announcements arrive.",
        noun="peers",
        limit=limit,
        offset=offset,
        total=lambda: listing.count_peers(conn),
    )
    for name, addresses in listing.shared_usernames(conn).items():
        click.echo(
            f"note: {len(addresses)} machines announce the name {name} ({', '.join(addresses)}); "
            "give each its own P2P_USERNAME (history tells them apart by address meanwhile)",
            err=True,
        )


def catalog_state(behind: int | None) -> str:
    """How far this node's copy of a peer's catalog is behind what the peer announced."""
    if behind is None:
        return "not fetched yet"
    return "up to date" if behind == 0 else f"{behind} change{'s' if behind != 1 else ''} behind"


def peer_table(rows: Iterable[listing.PeerRow]) -> list[list[object]]:
    now = time.time()
    return [
        [
            p.username,
            p.address,
            p.tcp_port,
            short_fingerprint(p.fingerprint) if p.fingerprint else "-",
            p.link,
            p.files,
            catalog_state(p.catalog_behind),
            ago(p.last_seen, now=now),
            f"yes ({plural(p.bad_files, 'file')})" if p.bad_files else "no",
            p.over_budget or "no",
        ]
        for p in rows
    ]
