"""p2pctl download and cancel: queue a request in the database and follow it."""

from __future__ import annotations

import time

import click
from tabulate import tabulate
from tqdm import tqdm

from p2pshare.cli.context import Ctl, NodeNotRunning, UserError, pass_ctl
from p2pshare.cli.render import human_bytes
from p2pshare.db import downloads as dbdl
from p2pshare.db import node as dbnode

# A small file is done in milliseconds; a slow poll would be most of what the user waits.
FOLLOW_POLL_SECONDS = 0.05


class Interrupted(UserError):
    exit_code = 130


@click.command()
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Queue the download and return at once.")
@pass_ctl
def download(ctl: Ctl, name: str, no_wait: bool) -> None:
    """Download NAME from every peer that has any part of it.

    NAME is a file name, a substring or a glob; NAME@SHA256PREFIX picks one of several.
    """
    roles = {r.role: r for r in ctl.require_running()}
    if not roles["downloader"].alive:
        raise NodeNotRunning(
            "the downloader role of this node is not running; "
            "check supervisorctl -c supervisord.conf status"
        )
    with ctl.database.write() as s:
        try:
            candidate = dbdl.resolve_name(s, name)
            download_id, new = dbdl.queue_download(s, candidate, now=time.time())
        except dbdl.AmbiguousName as exc:
            click.echo(
                tabulate(
                    [
                        [c.name, human_bytes(c.size), f"{c.name}@{c.sha256[:12]}", c.peers]
                        for c in exc.candidates
                    ],
                    headers=["name", "size", "pick it with", "peers"],
                    disable_numparse=True,
                ),
                err=True,
            )
            raise UserError(str(exc)) from None
        except (dbdl.UnknownName, dbdl.AlreadyHere) as exc:
            raise UserError(str(exc)) from None
    verb = "queued" if new else "already downloading"
    click.echo(
        f"{verb} #{download_id}: {candidate.name} ({human_bytes(candidate.size)}, "
        f"sha256 {candidate.sha256[:12]}, {candidate.peers} peers)"
    )
    if not no_wait:
        follow(ctl, download_id, candidate.size, candidate.name)


def follow(ctl: Ctl, download_id: int, size: int, name: str) -> None:
    """Show a progress bar until the download ends. Exit 0 on success, non-zero with the reason."""
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name[-32:],
        dynamic_ncols=True,
        leave=True,
    )
    try:
        while True:
            with ctl.database.read() as s:
                state = dbdl.follow_state(s, download_id)
                roles = {r.role: r for r in dbnode.role_statuses(s, now=time.time())}
            if state is None:
                raise UserError(f"download {download_id} is gone from the database")
            status, reason, saved_as = state.status, state.reason, state.saved_as
            bar.update(state.bytes_done - bar.n)
            bar.set_postfix_str(
                f"{state.peers} peers" + (f", {reason}" if reason else ""), refresh=False
            )
            if status == "done":
                bar.close()
                click.echo(f"saved as {ctl.settings.download_dir / (saved_as or name)}")
                return
            if status in ("failed", "cancelled"):
                raise UserError(f"download {status}: {reason or 'no reason recorded'}")
            if not roles["downloader"].alive:
                raise NodeNotRunning(
                    "the downloader stopped; the download resumes when it "
                    "runs again (p2pctl history shows it)"
                )
            time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        raise Interrupted(
            "stopped following; the download continues in the background "
            "(p2pctl history shows it, p2pctl cancel stops it)"
        ) from None
    finally:
        bar.close()


@click.command()
@click.argument("name")
@pass_ctl
def cancel(ctl: Ctl, name: str) -> None:
    """Cancel unfinished downloads matching NAME (or a download id)."""
    ctl.require_running()
    with ctl.database.write() as s:
        names = dbdl.cancel_downloads(s, name, now=time.time())
    if not names:
        raise UserError(f"no unfinished download matches {name!r}; see p2pctl history")
    for n in names:
        click.echo(f"cancelled {n}")
