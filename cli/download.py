"""p2pctl download, pause, resume and cancel: requests written to the database, and
following them to their end.

`download` queues (`db.queueing`) in one durable write and follows (`cli/follow.py`);
pause, resume and cancel change the queue (`db.requests`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from p2pshare.cli.context import Ctl, NodeNotRunning, UserError, pass_ctl
from p2pshare.db import queueing
from p2pshare.services.units import human_bytes, plural

if TYPE_CHECKING:
    from sqlalchemy import Connection


@click.command()
@click.argument("name")
@click.option("--all", "every", is_flag=True, help="Every file NAME matches (a glob or substring).")
@click.option("--no-wait", is_flag=True, help="Queue the download and return at once.")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="IP:PORT",
    help="A BitTorrent peer to ask (a magnet or .torrent download; repeatable).",
)
@pass_ctl
def download(ctl: Ctl, name: str, every: bool, no_wait: bool, peers: tuple[str, ...]) -> None:
    """Download NAME from every peer that has any part of it.

    NAME is a file name, a substring or a glob; NAME@SHA256PREFIX picks one of several.
    A NAME ending in / is a folder: every file under it, its tree recreated in the
    download folder. --all takes every file NAME matches. A magnet link or a .torrent
    file is fetched over BitTorrent by p2p-torrent (--peer IP:PORT names a peer).
    """
    if name.lower().startswith("magnet:") or name.lower().endswith(".torrent"):
        # Imported only for what may be a torrent: its metainfo and hints modules are a
        # tenth of the time a plain download takes to be queued. No libtorrent: pure checks.
        from p2pshare.cli import torrent_download as td

        if td.is_torrent(name) or peers:
            if every:
                raise UserError("--all takes names on the network, not a torrent")
            td.download_torrent(ctl, name, peers, no_wait)
            return
    if peers:
        raise UserError("--peer names a BitTorrent peer: give it with a magnet link or .torrent")
    require_downloader(ctl)
    try:  # every refusal leaves the transaction, so it writes nothing
        with ctl.database.write(durable=True) as conn:
            queued = queueing.queue_request(conn, name, every=every, now=time.time())
    except queueing.AmbiguousName as exc:
        show_candidates(exc.candidates)
        names = [c.name for c in exc.candidates]
        if len(set(names)) < len(names):  # --all refuses a name in several versions
            raise UserError(str(exc)) from None
        raise UserError(f"{exc}, or --all for every one of them") from None
    except queueing.AlreadyHere as exc:
        root = ctl.settings.share_dir if exc.root == "share" else ctl.settings.download_dir
        click.echo(f"already here: {root / exc.name}")
        return  # what the user wanted is true: exit 0
    except queueing.UnknownName as exc:
        if name.lower().endswith(".torrent"):
            raise UserError(f"{exc}, and there is no file {name} here") from None
        raise UserError(str(exc)) from None
    except queueing.SeveralVersions as exc:
        raise UserError(str(exc)) from None
    announce(queued)
    if not no_wait and queued.downloads:
        from p2pshare.cli.follow import follow  # tqdm: only when following

        follow(ctl, queued)


def require_downloader(ctl: Ctl) -> None:
    roles = {r.role: r for r in ctl.require_running()}
    if not roles["downloader"].alive:
        raise NodeNotRunning(
            "the downloader role of this node is not running; "
            "check p2pctl status, or restart the node with p2pctl restart"
        )


def show_candidates(candidates: list[queueing.Candidate]) -> None:
    from tabulate import tabulate  # slow to import: a download that is not ambiguous skips it

    click.echo(
        tabulate(
            [
                [c.name, human_bytes(c.size), f"{c.name}@{c.sha256[:12]}", c.peers]
                for c in candidates
            ],
            headers=["name", "size", "pick it with", "peers"],
            disable_numparse=True,
        ),
        err=True,
    )


def announce(q: queueing.Queued) -> None:
    if q.kind == "file":
        c = q.candidates[0]
        verb = "queued" if q.new else "already downloading"
        click.echo(
            f"{verb} #{q.downloads[0]}: {c.name} ({human_bytes(c.size)}, "
            f"sha256 {c.sha256[:12]}, {plural(c.peers, 'peer')})"
        )
        return
    if not q.downloads:
        verb = "is" if len(q.already_here) == 1 else "are"
        click.echo(
            f"nothing to fetch: all {plural(len(q.already_here), 'file')} {verb} already here"
        )
        return
    here = f", {len(q.already_here)} already here" if q.already_here else ""
    running = len(q.downloads) - q.new
    also = f" ({running} already downloading)" if running else ""
    click.echo(
        f"request {q.request_id}: {plural(len(q.downloads), 'file')}, {human_bytes(q.total_bytes)}"
        f"{also}{here}"
    )


def change_downloads(
    ctl: Ctl, name: str, change: Callable[[Connection], list[str]], verb: str, none: str
) -> None:
    ctl.require_running()
    with ctl.database.write(durable=True) as s:
        names = change(s)
    if not names:
        raise UserError(f"no {none} download matches {name!r}; see p2pctl history")
    for n in names:
        click.echo(f"{verb} {n}")


@click.command()
@click.argument("name")
@pass_ctl
def cancel(ctl: Ctl, name: str) -> None:
    """Cancel unfinished or paused downloads matching NAME (or a download id)."""
    from p2pshare.db import requests as dbreq

    change_downloads(
        ctl,
        name,
        lambda s: dbreq.cancel_downloads(s, name, now=time.time()),
        "cancelled",
        "unfinished",
    )


@click.command()
@click.argument("name")
@pass_ctl
def pause(ctl: Ctl, name: str) -> None:
    """Pause unfinished downloads matching NAME (or a download id); they keep what they have."""
    from p2pshare.db import requests as dbreq

    change_downloads(ctl, name, lambda s: dbreq.pause_downloads(s, name), "paused", "unfinished")


@click.command()
@click.argument("name")
@pass_ctl
def resume(ctl: Ctl, name: str) -> None:
    """Resume paused downloads matching NAME (or a download id) where they stopped."""
    from p2pshare.db import requests as dbreq

    change_downloads(ctl, name, lambda s: dbreq.resume_downloads(s, name), "resumed", "paused")
