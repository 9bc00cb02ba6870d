"""p2pctl torrent: a .torrent file and magnet link for files this node holds."""

from __future__ import annotations

import time
from pathlib import Path

import click

from p2pshare.cli.context import Ctl, UserError, pass_ctl
from p2pshare.services.units import human_bytes


@click.command()
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the .torrent (default $P2P_HOME/torrents/NAME.torrent).",
)
@click.option(
    "--tracker", "trackers", multiple=True, metavar="URL", help="A tracker to announce to."
)
@click.option("--v2", "fmt", flag_value="v2", help="BitTorrent v2 only (BEP 52).")
@click.option("--hybrid", "fmt", flag_value="hybrid", help="v1 and v2 in one torrent.")
@pass_ctl
def torrent(
    ctl: Ctl, name: str, output: Path | None, trackers: tuple[str, ...], fmt: str | None
) -> None:
    """Write a .torrent and print a magnet link for NAME, a file or folder this node holds.

    NAME is read as p2pctl download reads it (a name, substring or glob, NAME@SHA, or a
    folder ending in /), among the files of the share and download folders. p2p-torrent
    then seeds it from where it is. v1 by default, which every client fetches.
    """
    from p2pshare.db import downloads as dbdl
    from p2pshare.services.torrent.make import TorrentRefused, make_torrent

    for url in trackers:
        if not url.startswith(("http://", "https://", "udp://")):
            raise UserError(f"tracker {url!r} is not an http://, https:// or udp:// URL")
    try:
        made = make_torrent(
            ctl.settings, ctl.database, name, fmt=fmt or "v1", trackers=trackers, out=output
        )
    except dbdl.AmbiguousName as exc:
        for c in exc.candidates:
            click.echo(f"  {c.name}@{c.sha256[:8]}  {human_bytes(c.size)}")
        raise UserError(str(exc)) from None
    except (TorrentRefused, dbdl.UnknownName) as exc:
        raise UserError(str(exc)) from None
    files = "1 file" if made.files == 1 else f"{made.files} files"
    click.echo(
        f"{made.path}  ({made.format}, {files}, {human_bytes(made.size)}, "
        f"pieces of {human_bytes(made.piece_size)}, hashed {human_bytes(made.hashed_bytes)} now)"
    )
    click.echo(made.magnet)
    seeding_note(ctl)


def seeding_note(ctl: Ctl) -> None:
    """One line on stderr when p2p-torrent will not seed it now."""
    from p2pshare.db import node as dbnode

    with ctl.database.read() as s:
        beats = {r.role: r for r in dbnode.role_statuses(s, now=time.time(), roles=("torrent",))}
        recorded = dbnode.role_settings(s).get("torrent", {})
    beat = beats.get("torrent")
    if beat is None or not beat.alive:
        click.echo("note: p2p-torrent is not running, so nothing seeds it yet", err=True)
    elif recorded.get("serving") != "yes":
        click.echo(f"note: p2p-torrent does not seed: {beat.detail}", err=True)
